"""Image classification as a trainer Task: the fast path of the deep-network pipelines.

* Images stay resident on the device as uint8 (N, 3, 32, 32); normalisation (ToTensor + Normalize(0.5,
  0.5), bit-identical to torchvision's) and the optional augmentation (random crop with 4-pixel zero
  padding + horizontal flip) run on the device, per batch.
* Batches are index slices of one device `randperm` per epoch, drawn from a generator seeded with
  hash(seed, epoch); the augmentation draws of an epoch come from the same generator, before the
  first batch. So the batches of an epoch are a function of (seed, epoch) only, and a mid-epoch
  resume (the trainer skips the batches already taken) gives the same run bit for bit on CPU.
* No DataLoader, no host sync per step (the loss stays on the device; the trainer syncs once per epoch).
* Runtime flags (how, never what, to compute; they work on any device): bf16 autocast (``amp``) and
  channels_last memory format (``channels_last``), each None = on for CUDA, off for CPU, True/False forces
  it; optional torch.compile (``compile``). CPU defaults to float32, contiguous, eager: the correct-but-slow
  fallback; forcing the flags on CPU runs the GPU path's code on the CPU.
* Evaluation: batched, no grad, eval mode (BatchNorm running statistics), train mode restored after.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ptft.train.trainer import derived_seed
from ptft.vision.data import normalize

PAD = 4  # augmentation: random crop from the 4-pixel zero-padded image (as the usual CIFAR recipe)


def augment_batch(x: torch.Tensor, flip: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-image crop at offset `shift` (B, 2) in 0..2*PAD of the zero-padded uint8 images, then flip."""
    b, _, h, w = x.shape
    xp = F.pad(x, (PAD, PAD, PAD, PAD))
    rows = shift[:, 0, None] + torch.arange(h, device=x.device)           # (B, H)
    cols = shift[:, 1, None] + torch.arange(w, device=x.device)           # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def auto_flag(value: Any, device: torch.device) -> bool:
    """A runtime flag's effective value: None / "auto" -> on for CUDA, off otherwise; a bool is kept."""
    if value is None or value == "auto":
        return torch.device(device).type == "cuda"
    return bool(value)


class VisionTask:
    """One model (n_members = 1) trained by minibatch SGD on resident uint8 images."""

    n_members = 1
    full_batch = False

    def __init__(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                 y_test: torch.Tensor, *, batch_size: int, seed: int, device: torch.device | str = "cpu",
                 amp: Optional[bool] = None, channels_last: Optional[bool] = None, augment: bool = False,
                 compile: bool = False, eval_batch: int = 1024):
        self.device = torch.device(device)
        self.amp = auto_flag(amp, self.device)
        self.channels_last = auto_flag(channels_last, self.device)
        self.compile = bool(compile)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if self.compile else self.model
        self.model.train()
        self.x, self.y = x_train.to(self.device), y_train.to(self.device)
        self.x_test, self.y_test = x_test.to(self.device), y_test.to(self.device)
        self.batch_size, self.seed, self.augment, self.eval_batch = int(batch_size), int(seed), augment, eval_batch

    # ---- data ----------------------------------------------------------------------------------
    def batches(self, epoch: int) -> Iterator[tuple]:
        n = self.y.shape[0]
        g = torch.Generator(device=self.device)
        g.manual_seed(derived_seed(self.seed, epoch, 0xBA7C))
        perm = torch.randperm(n, generator=g, device=self.device)
        flip = shift = None
        if self.augment:
            flip = torch.rand(n, generator=g, device=self.device) < 0.5
            shift = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g, device=self.device)
        for i in range(0, n, self.batch_size):
            idx = perm[i:i + self.batch_size]
            yield (idx, None if flip is None else flip[i:i + self.batch_size],
                   None if shift is None else shift[i:i + self.batch_size])

    def prepare(self, x_u8: torch.Tensor) -> torch.Tensor:
        """Stored test inputs -> model inputs (the diagnostics feed the test images through this)."""
        return self._inputs(x_u8)

    def _inputs(self, x_u8: torch.Tensor) -> torch.Tensor:
        x = normalize(x_u8)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self) -> Any:
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- trainer protocol ------------------------------------------------------------------------
    def parameters(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def loss(self, batch: tuple) -> torch.Tensor:
        idx, flip, shift = batch
        x = self.x[idx]
        if flip is not None:
            x = augment_batch(x, flip, shift)
        with self._autocast():
            logits = self.forward(self._inputs(x))
        return F.cross_entropy(logits.float(), self.y[idx]).reshape(1)

    @torch.no_grad()
    def evaluate_on(self, x_u8: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        was = self.model.training
        self.model.eval()
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for i in range(0, y.shape[0], self.eval_batch):
            with self._autocast():
                logits = self.forward(self._inputs(x_u8[i:i + self.eval_batch])).float()
            yy = y[i:i + self.eval_batch]
            loss += F.cross_entropy(logits, yy, reduction="sum").double()
            correct += (logits.argmax(1) == yy).sum()
        self.model.train(was)
        n = max(int(y.shape[0]), 1)
        return {"test_acc": (correct.double() / n).reshape(1).cpu(), "test_loss": (loss / n).reshape(1).cpu()}

    def evaluate(self) -> dict[str, torch.Tensor]:
        return self.evaluate_on(self.x_test, self.y_test)

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
