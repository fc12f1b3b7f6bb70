"""The one logging facade: metrics.jsonl always, wandb (online | offline | disabled), progress bars."""
from ptft.log.logger import Logger, WandbConfig, progress

__all__ = ["Logger", "WandbConfig", "progress"]
