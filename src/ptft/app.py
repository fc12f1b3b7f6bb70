"""Hydra front end shared by every pipeline: config location, schemas, resolvers, error handling.

Each pipeline registers its structured (dataclass) schema in Hydra's ConfigStore and its primary
YAML in conf/ lists that schema first in its defaults, so an unknown key or a wrong type fails
before any compute. `entry()` turns a pipeline function into a Hydra main whose ConfigError ends
with one clear message and exit code 2, and `compose()` builds the same config in-process (tests,
notebooks, figure scripts).
"""
from __future__ import annotations

import functools
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from ptft import ConfigError


def conf_dir() -> Path:
    """conf/ of the source tree (editable install) or $PTFT_CONF_DIR."""
    env = os.environ.get("PTFT_CONF_DIR")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "conf", here.parent / "conf"):
        if cand.is_dir():
            return cand
    raise ConfigError("cannot find the conf/ directory; set PTFT_CONF_DIR to the repository's conf/")


_UID = uuid.uuid4().hex[:6]
if not OmegaConf.has_resolver("ptft_uid"):
    # a token unique to this invocation; cached in the config, so it survives pickling to SLURM jobs
    OmegaConf.register_new_resolver("ptft_uid", lambda: _UID, use_cache=True)


def register(name: str, node: Any, group: Optional[str] = None) -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=node, group=group)


def overrides_name() -> str:
    """The job's command-line overrides, e.g. 'dln.lam_pt=-0.99,dln.omega=0' (wandb run name)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        ov = [o for o in HydraConfig.get().overrides.task if not o.startswith(("hydra", "wandb", "store"))]
        return ",".join(ov) or "defaults"
    except Exception:
        return "defaults"


def launch_cwd() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.cwd)
    except Exception:
        return Path.cwd()


def store_root(cfg: DictConfig) -> Path:
    root = Path(os.path.expanduser(str(cfg.store.root)))
    return root if root.is_absolute() else launch_cwd() / root


def record_run_dir(path: Path) -> None:
    """Inside a Hydra job: append the run directory to <job output dir>/run_dir.txt (read by
    ptft-aggregate to link a sweep job to its run, also when the job is killed later)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        out = Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return
    from ptft.train.store import atomic_write_text

    ptr = out / "run_dir.txt"
    lines = ptr.read_text().splitlines() if ptr.exists() else []
    if str(Path(path).resolve()) not in lines:
        atomic_write_text(ptr, "".join(ln + "\n" for ln in [*lines, str(Path(path).resolve())]))


def fail(msg: str) -> None:
    print(f"ptft: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def entry(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Decorate `fn(cfg)` into a Hydra main over conf/<config_name>.yaml."""

    def deco(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        import hydra

        @functools.wraps(fn)
        def task(cfg: DictConfig) -> Any:
            from ptft.train.trainer import Preempted

            try:
                return fn(cfg)
            except ConfigError as e:
                fail(str(e))
            except Preempted as e:
                print(f"ptft: {e}; rerun the same command to resume", file=sys.stderr, flush=True)
                sys.exit(128 + e.signum)

        return hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)(task)

    return deco


def compose(config_name: str, overrides: Optional[Sequence[str]] = None) -> DictConfig:
    """The config a command line would give, built in-process (no Hydra run directory)."""
    from hydra import compose as _compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        return _compose(config_name=config_name, overrides=list(overrides or []))
