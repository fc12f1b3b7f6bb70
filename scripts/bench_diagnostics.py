#!/usr/bin/env python
"""Cost of the per-stage fine-tuning diagnostics (issue #13) against a short fine-tuning, in one run.

    OMP_NUM_THREADS=1 python scripts/bench_diagnostics.py                  # CPU, the defaults below
    python scripts/bench_diagnostics.py --device cuda --width 64 --steps 500

Cases (each: train from a fresh model with a plain SGD / AdamW loop, then time diagnostics() once cold and
--repeats times warm; the ratio uses the cold time, the one a run pays):
- resnet_n200:  resnet18_cifar (--width) on 200 random 32x32 images, batch 128, --steps SGD steps
                (lr 1e-3, momentum 0.9: LL's FT optimiser); diagnostics on 200 test images (LL's FT test set).
- resnet_n10:   the same with n_ft = 10 (batch 10: one step per epoch), --steps-small steps.
- transformer:  a 1-layer attention + MLP model with stages embed, pos, attn, mlp, unembed
                (d_model 64, 4 heads, d_mlp 256) on (a + b) mod 47, 40% of the pairs full batch,
                --steps-tf AdamW steps; diagnostics on all 47^2 pairs.
Random data: only the timing matters (the printed diagnostics are a sanity check, not a result; the
ResNets' BatchNorm running statistics are first settled on random batches, as pretraining would have). Needs torch + torchvision (imports ptft from src/).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from ptft.pipeline.diagnostics import RESNET18_OUTPUTS, RESNET18_STAGES, diagnostics  # noqa: E402
from ptft.vision.models import build_model  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Pos(nn.Module):
    def __init__(self, t: int, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(t, d) / d ** 0.5)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.w


class Attn(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(d, heads, bias=False, batch_first=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mha(h, h, h, need_weights=False)[0]


class Mlp(nn.Module):
    def __init__(self, d: int, d_mlp: int) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(d, d_mlp), nn.Linear(d_mlp, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.out(torch.relu(self.inp(h)))


class Unembed(nn.Module):
    def __init__(self, d: int, p: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, p, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lin(h[:, -1])


def transformer(p: int, d: int = 64, heads: int = 4, d_mlp: int = 256) -> nn.Module:
    return nn.Sequential(OrderedDict(embed=nn.Embedding(p + 1, d), pos=Pos(3, d), attn=Attn(d, heads),
                                     mlp=Mlp(d, d_mlp), unembed=Unembed(d, p)))


@torch.no_grad()
def settle_bn(model: nn.Module, device: torch.device, batches: int = 5) -> None:
    """Stand-in for pretraining's BatchNorm running statistics (a fresh model has mean 0, var 1, which
    eval-mode forwards at the start would use; FT then moves them, and CKA would mostly see that)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the settling batches
    model.train()
    for _ in range(batches):
        model(torch.randn(128, 3, 32, 32, device=device))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1


def train(model, batches, steps: int, opt, device) -> float:
    model.train()
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        x, y = batches(i)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t0


def time_diag(start, model, stages, x_eval, outputs, repeats: int, device) -> tuple[float, float, dict]:
    times = []
    for _ in range(1 + repeats):
        sync(device)
        t0 = time.perf_counter()
        d = diagnostics(start, model, stages, x_eval, outputs=outputs)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times[1:]) if repeats else times[0], d


def report(name: str, steps: int, t_train: float, t_cold: float, t_warm: float, d: dict) -> None:
    print(f"{name:12s} train {steps:5d} steps {t_train:8.2f} s ({1e3 * t_train / steps:7.1f} ms/step) | "
          f"diagnostics cold {t_cold:6.3f} s, warm {t_warm:6.3f} s | cold / train = {100 * t_cold / t_train:5.2f}%")
    short = {k.removeprefix("diag/"): round(v, 3) for k, v in d.items()
             if k.split("/")[1] in ("movement", "cka", "pr_end")}
    print(f"{'':12s} {short}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--steps-small", type=int, default=200)
    ap.add_argument("--steps-tf", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}, width {args.width}")

    x_test = torch.randn(200, 3, 32, 32, device=dev)
    for name, n, batch, steps in (("resnet_n200", 200, 128, args.steps), ("resnet_n10", 10, 10, args.steps_small)):
        torch.manual_seed(0)
        model = build_model("resnet18_cifar", 2, width=args.width).to(dev)
        x, y = torch.randn(n, 3, 32, 32, device=dev), torch.randint(0, 2, (n,), device=dev)
        settle_bn(model, dev)
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        per_epoch = max(1, n // batch)

        def batches(i, x=x, y=y, batch=batch, per_epoch=per_epoch):
            j = i % per_epoch
            return x[j * batch:(j + 1) * batch], y[j * batch:(j + 1) * batch]

        t_train = train(model, batches, steps, opt, dev)
        t_cold, t_warm, d = time_diag(start, model, RESNET18_STAGES, x_test, RESNET18_OUTPUTS, args.repeats, dev)
        report(name, steps, t_train, t_cold, t_warm, d)

    p = 47
    torch.manual_seed(0)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    tok = torch.stack([a.flatten(), torch.full((p * p,), p), b.flatten()], 1).to(dev)
    lab = ((tok[:, 0] + tok[:, 2]) % p).to(dev)
    tr = torch.randperm(p * p, device=dev)[: int(0.4 * p * p)]
    model = transformer(p).to(dev)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1.0, betas=(0.9, 0.98))
    t_train = train(model, lambda i: (tok[tr], lab[tr]), args.steps_tf, opt, dev)
    stages = ["embed", "pos", "attn", "mlp", "unembed"]
    t_cold, t_warm, d = time_diag(start, model, stages, tok, None, args.repeats, dev)
    report("transformer", args.steps_tf, t_train, t_cold, t_warm, d)


if __name__ == "__main__":
    main()
