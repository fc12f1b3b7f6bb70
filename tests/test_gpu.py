"""Checks that need a CUDA device (marker `gpu`; skipped with a one-line reason without one).

scripts/gpu_check.sh runs them on a GPU machine. Two of them need only torch (the CPU-vs-CUDA agreement and
the host-sync count: VisionTask + Trainer); the pipeline and DLN ones compose Hydra configs and are skipped,
saying so, where hydra-core / omegaconf are not installed (gpu_check.sh installs them from .whl/ if carried).
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch

from ptft.train.trainer import TrainConfig, Trainer
from ptft.vision.models import build_model
from ptft.vision.task import VisionTask

pytestmark = pytest.mark.gpu

SYNC_MSG = "called a synchronizing CUDA operation"


def _images(n: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, classes, (n,), generator=g))


def _train(task: VisionTask, epochs: int, lr: float, momentum: float = 0.0) -> dict:
    cfg = TrainConfig(lr=lr, momentum=momentum, threshold=0.0, max_epochs=epochs, batch_size=task.batch_size,
                      log_every=10**9, ckpt_every_s=0)
    return Trainer(task, cfg).run()


# ------------------------------------------------------------------------------------------------
# plain torch
# ------------------------------------------------------------------------------------------------
def test_cpu_and_cuda_agree_on_a_short_float32_run():
    """float32 (amp off, TF32 off), channels_last on CUDA (its default), 2 epochs x 5 steps of SGD lr 0.01 on
    random images: the epoch-mean train loss and the test loss agree to rel 1e-3, and the distance between
    the two end states (parameters and BatchNorm statistics) is below 1% of the distance training moved them.
    The same kind of difference on the CPU alone (contiguous vs channels_last: another summation order) was
    measured at rel 4e-5 (loss) and 0.06% (states) on these settings; the tolerances are ~20x that."""
    x, y = _images(200, 10)
    torch.manual_seed(0)
    net = build_model("resnet18_cifar", 10, 8)
    s0 = {k: v.clone() for k, v in net.state_dict().items()}
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        out, tasks = {}, {}
        for dev in ("cpu", "cuda"):
            t = VisionTask(copy.deepcopy(net), x, y, x[:100], y[:100], batch_size=40, seed=3, device=dev, amp=False)
            out[dev], tasks[dev] = _train(t, epochs=2, lr=0.01), t
        mc, mg = tasks["cpu"].evaluate(), tasks["cuda"].evaluate()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert not tasks["cpu"].channels_last and tasks["cuda"].channels_last and not tasks["cuda"].amp
    assert out["cuda"]["steps"] == out["cpu"]["steps"] == [10]
    assert out["cuda"]["train_loss"][0] == pytest.approx(out["cpu"]["train_loss"][0], rel=1e-3)
    assert float(mg["test_loss"]) == pytest.approx(float(mc["test_loss"]), rel=1e-3)
    sc, sg = tasks["cpu"].state_dict(), tasks["cuda"].state_dict()
    keys = [k for k, v in sc.items() if v.is_floating_point()]
    diff = sum(float(((sg[k] - sc[k]).double() ** 2).sum()) for k in keys) ** 0.5
    moved = sum(float(((sc[k] - s0[k]).double() ** 2).sum()) for k in keys) ** 0.5
    print(f"CPU vs CUDA: train loss {out['cpu']['train_loss'][0]:.6f} vs {out['cuda']['train_loss'][0]:.6f}, "
          f"state distance {diff:.3g} = {diff / moved:.2%} of the distance moved ({moved:.3g})")
    assert diff < 0.01 * moved


def _syncs_in_one_epoch(task: VisionTask, trainer: Trainer) -> int:
    """Host synchronisations (CUDA sync debug mode) during one more training epoch."""
    trainer.cfg.max_epochs = trainer.epoch + 1
    trainer.active[:] = True
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.run()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum(SYNC_MSG in str(w.message) for w in caught)


def test_no_host_sync_per_training_step():
    """A VisionTask epoch through the Trainer (CUDA defaults: bf16 autocast, channels_last) synchronises
    with the host a fixed number of times per epoch (the epoch-mean loss), not once per step: the count is
    the same for an epoch of 4 steps and one of 12."""
    x, y = _images(240, 10)
    torch.manual_seed(0)
    task = VisionTask(build_model("resnet18_cifar", 10, 8), x, y, x[:50], y[:50], batch_size=60, seed=0,
                      device="cuda")
    assert task.amp and task.channels_last
    trainer = Trainer(task, TrainConfig(lr=0.01, momentum=0.9, threshold=0.0, max_epochs=1, batch_size=60,
                                        log_every=10**9, ckpt_every_s=0))
    counts = {}
    for bs in (60, 20, 60, 20):  # the first of each: warm-up (cuDNN / allocator first use)
        task.batch_size = bs
        counts[bs] = _syncs_in_one_epoch(task, trainer)
    print(f"host syncs per epoch: {counts[60]} (4 steps), {counts[20]} (12 steps)")
    assert counts[20] == counts[60], counts
    assert counts[60] <= 4, counts  # the epoch's loss and a few per-epoch setups, not per step


# ------------------------------------------------------------------------------------------------
# through the Hydra pipelines (need hydra-core + omegaconf)
# ------------------------------------------------------------------------------------------------
def _pipeline_args(root: Path, store: Path, device: str, *flags: str) -> list[str]:
    return [f"data.root={root}", f"store.root={store}", "model=resnet18_cifar", "model.width=8",
            "wandb.mode=disabled", f"runtime.device={device}", "runtime.diagnostics=false",
            "data.pt_classes=10", "data.ft_classes=2", "data.n_ft=20",
            "pretrain.train.max_epochs=8", "pretrain.train.lr=0.05", "pretrain.train.batch_size=40",
            "train.lr=0.01", "train.max_epochs=30", *flags]


def test_vision_pipeline_end_to_end_on_cuda_with_amp_channels_last_compile(tmp_path):
    """ptft-pretrain + ptft-finetune on CUDA with the defaults there (bf16 autocast, channels_last) and
    runtime.compile=true: learns as on the CPU (tests/test_runtime_flags.py's margins), same run identity as
    the CPU config, and the runtime facts in result.json."""
    pytest.importorskip("hydra", reason="needs hydra-core + omegaconf (gpu_check.sh installs them from .whl/)")
    from ptft import app
    from ptft.pipeline.config import finetune_identity, pretrain_identity, validate
    from ptft.pipeline.main import run_finetune, run_pretrain
    from ptft.train.store import RunDir
    from ptft.vision import synthetic

    root = tmp_path / "data"
    synthetic.generate(root, "cifar100", n_train_per_class=20, n_test_per_class=20, seed=0)
    store = tmp_path / "store"
    a = _pipeline_args(root, store, "cuda", "runtime.compile=true")
    pt_run, _ = run_pretrain(app.compose("pretrain", a))
    [(ft_run, _)] = run_finetune(app.compose("finetune", a))
    cpu = app.compose("finetune", _pipeline_args(root, store, "cpu"))
    track = validate(cpu)
    pt_hash = RunDir("", "pretrain", pretrain_identity(track, cpu)).run_hash
    assert (pt_run.run_hash, ft_run.run_hash) == (pt_hash, RunDir("", "finetune", finetune_identity(track, cpu, pt_hash)).run_hash)
    pt = json.loads((pt_run.path / "result.json").read_text())
    ft = json.loads((ft_run.path / "result.json").read_text())
    print("PT train loss", pt["train_loss"], "acc", pt["test_acc"], "| FT", ft["status"], ft["epochs"], ft["test_acc"])
    for res in (pt, ft):
        assert res["device"].startswith("cuda") and res["amp"] and res["channels_last"] and res["compile"]
    assert pt["train_loss"] < 1.0
    assert ft["status"] == "ok" and ft["test_acc"] >= 0.8


@pytest.mark.parametrize("pt", ["exact", "train"])
def test_dln_batched_job_on_cuda_matches_cpu(tmp_path, pt):
    """ptft-dln's batched job (3 seeds, float64) with device=cuda: the same steps per member and the same
    errors to rel 1e-10 as on the CPU (device is not part of the identity, so each has its own store)."""
    pytest.importorskip("hydra", reason="needs hydra-core + omegaconf (gpu_check.sh installs them from .whl/)")
    from ptft import app
    from ptft.dln.main import run_job

    ov = ["dln.dim=120", "dln.alpha=0.4", "wandb.mode=disabled", "dln.seeds=[0,1,2]", f"dln.pt={pt}"]
    if pt == "train":
        ov.append("dln.alpha_pt=1.5")  # as tests/test_dln_pipeline.py
    _, cpu = run_job(app.compose("dln", [f"store.root={tmp_path}/cpu", "device=cpu", *ov]))
    _, gpu = run_job(app.compose("dln", [f"store.root={tmp_path}/cuda", "device=cuda", *ov]))
    assert gpu["status"] == cpu["status"] == "ok"
    for mc, mg in zip(cpu["members"], gpu["members"]):
        assert mg["seed"] == mc["seed"] and mg["steps"] == mc["steps"]
        for k in ("train_mse", "test_mse", "param_mse", "beta_l1"):
            assert mg[k] == pytest.approx(mc[k], rel=1e-10, abs=1e-14), (mc["seed"], k)
