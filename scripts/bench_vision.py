#!/usr/bin/env python
"""Training throughput (images/s): ptft's fast path vs a plain torchvision DataLoader pipeline, one run.

    python scripts/bench_vision.py                         # CPU, width 16, synthetic data in a temp dir
    python scripts/bench_vision.py --device cuda --width 64 --steps 200 [--compile]

fast:     VisionTask + the suite's Trainer: uint8 images resident on the device, normalisation on the
          device, device randperm batches, no DataLoader; bf16 autocast + channels_last on CUDA.
baseline: torchvision CIFAR100 dataset + ToTensor + Normalize(0.5, 0.5) + DataLoader(batch 128,
          shuffle), float32, torch.optim.SGD (LL's pipeline).
On CUDA it also prints the fast path's achieved TFLOP/s (FLOPs of one train step counted by
torch.utils.flop_counter) and the MFU against the device's dense bf16 peak (H200: ~989 TFLOP/s on the data
sheet; --peak 790 gives it against the ~790 TFLOP/s a bf16 matmul reaches on the H200 we are lent).

Needs only torch, torchvision and numpy (no hydra/omegaconf/wandb): it imports the ptft pieces that
do not need them, from src/ even when ptft is not installed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ptft.train.trainer import TrainConfig, Trainer  # noqa: E402
from ptft.vision.data import load_split  # noqa: E402
from ptft.vision.models import build_model  # noqa: E402
from ptft.vision.synthetic import generate  # noqa: E402
from ptft.vision.task import VisionTask  # noqa: E402

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense bf16


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_fast(model, x, y, args, device) -> tuple[float, VisionTask]:
    task = VisionTask(model, x, y, x[:256], y[:256], batch_size=args.batch, seed=0, device=device,
                      amp=None, channels_last=None, compile=args.compile)  # None: on for CUDA, off for CPU
    cfg = TrainConfig(lr=1e-3, momentum=0.9, threshold=0.0, max_steps=args.warmup, max_epochs=None,
                      batch_size=args.batch, log_every=10**9, ckpt_every_s=0)
    trainer = Trainer(task, cfg)
    trainer.run()  # warm-up (and compile)
    sync(device)
    trainer.cfg.max_steps = args.warmup + args.steps
    trainer.active[:] = True
    t0 = time.perf_counter()
    trainer.run()
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - t0), task


class TorchvisionStyle(torch.utils.data.Dataset):
    """torchvision CIFAR100's __getitem__ (a PIL image through the transform) over the loaded arrays (the
    files themselves load only through ptft's restricted unpickler, never torchvision's plain pickle)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform) -> None:
        self.data, self.targets, self.transform = x.permute(0, 2, 3, 1).numpy(), y.tolist(), transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def bench_dataloader(model, root: str, args, device) -> float:
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    ds = TorchvisionStyle(*load_split("cifar100", root, True), tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                     pin_memory=device.type == "cuda", drop_last=True)
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def steps(n: int) -> None:
        done = 0
        while done < n:
            for xb, yb in dl:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                if done == n:
                    return

    steps(args.warmup)
    sync(device)
    t0 = time.perf_counter()
    steps(args.steps)
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - t0)


def step_flops(task: VisionTask) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    batch = next(iter(task.batches(0)))
    fwd, task.forward = task.forward, task.model  # count the eager model: a compiled one hides its ops
    try:
        with FlopCounterMode(display=False) as fc:
            task.loss(batch).sum().backward()
    finally:
        task.forward = fwd
    task.model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="resnet18", choices=["resnet18", "resnet18_cifar"])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the baseline")
    ap.add_argument("--compile", action="store_true", help="torch.compile the fast path's model")
    ap.add_argument("--root", default=None, help="a ptft-data synthetic CIFAR-100 root (default: write one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peak", type=float, default=None, help="bf16 peak TFLOP/s for the MFU (default: data sheet)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        if args.root is None:
            per_class = max(20, -(-(args.steps + args.warmup) * args.batch // 100) + 1)
            generate(root, "cifar100", n_train_per_class=min(per_class, 500), n_test_per_class=1, seed=0)
        x, y = load_split("cifar100", root, True)
        torch.manual_seed(0)
        fast, task = bench_fast(build_model(args.model, 100, args.width), x, y, args, device)
        torch.manual_seed(0)
        base = bench_dataloader(build_model(args.model, 100, args.width), root, args, device)
    print(f"device={device} model={args.model} width={args.width} batch={args.batch} steps={args.steps} "
          f"threads={args.threads} workers={args.workers} compile={args.compile}")
    print(f"fast path (resident uint8, device randperm{', bf16, channels_last' if device.type == 'cuda' else ''}): "
          f"{fast:9.1f} images/s")
    print(f"DataLoader + ToTensor + Normalize (fp32):       {base:9.1f} images/s")
    print(f"speed-up: {fast / base:.2f}x")
    if device.type == "cuda":
        flops = step_flops(task)
        achieved = flops * fast / args.batch / 1e12
        name = torch.cuda.get_device_name(device)
        peak = args.peak or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        mfu = f", MFU {100 * achieved / peak:.1f}% of a {peak:.0f} TFLOP/s bf16 peak ({name})" if peak else ""
        print(f"fast path: {flops / 1e9:.1f} GFLOP per step, {achieved:.1f} TFLOP/s achieved{mfu}")


if __name__ == "__main__":
    main()
