"""ptft: how pretraining shapes inductive bias in fine-tuning (DLN theory, simulations, ResNets)."""

__version__ = "0.1.0"


class ConfigError(ValueError):
    """A user-facing configuration error: the message names the key and what to do."""


import argparse as _argparse


class ArgumentParser(_argparse.ArgumentParser):
    """argparse with the suite's error format: one line, exit code 2 (subcommands inherit it)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")
