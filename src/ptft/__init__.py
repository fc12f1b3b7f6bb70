"""ptft: how pretraining shapes inductive bias in fine-tuning (DLN theory, simulations, ResNets)."""

__version__ = "0.1.0"


class ConfigError(ValueError):
    """A user-facing configuration error: the message names the key and what to do."""
