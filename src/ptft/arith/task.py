"""Modular arithmetic as a trainer Task: full-batch training on token triples, resident on the device."""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn


class ArithTask:
    """One Transformer (n_members = 1), full batch: one step per epoch, no randomness in training."""

    n_members = 1
    full_batch = True

    def __init__(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                 y_test: torch.Tensor, *, device: torch.device | str = "cpu", eval_batch: int = 65536):
        self.device = torch.device(device)
        self.model = model.to(self.device).train()
        self.x, self.y = x_train.to(self.device), y_train.to(self.device)
        self.x_test, self.y_test = x_test.to(self.device), y_test.to(self.device)
        self.eval_batch = int(eval_batch)

    def parameters(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def batches(self, epoch: int) -> Iterator[Any]:
        yield None

    def loss(self, batch: Any) -> torch.Tensor:
        return F.cross_entropy(self.model(self.x).float(), self.y).reshape(1)

    @torch.no_grad()
    def _eval(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        was = self.model.training
        self.model.eval()
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for i in range(0, y.shape[0], self.eval_batch):
            logits = self.model(x[i:i + self.eval_batch]).float()
            yy = y[i:i + self.eval_batch]
            loss += F.cross_entropy(logits, yy, reduction="sum").double()
            correct += (logits.argmax(1) == yy).sum()
        self.model.train(was)
        n = max(int(y.shape[0]), 1)
        return (correct.double() / n).reshape(1).cpu(), (loss / n).reshape(1).cpu()

    def evaluate(self) -> dict[str, torch.Tensor]:
        test_acc, test_loss = self._eval(self.x_test, self.y_test)
        train_acc, train_loss = self._eval(self.x, self.y)
        return {"test_acc": test_acc, "test_loss": test_loss, "train_acc": train_acc, "train_loss_eval": train_loss}

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
