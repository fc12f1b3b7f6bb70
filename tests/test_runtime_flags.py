"""The GPU path's runtime flags run on the CPU: runtime.amp (bf16 autocast), runtime.channels_last and
runtime.compile change how a run is computed, never what it is (same run identity), and each is recorded
in result.json.

The pipeline runs are a short pretraining (10 synthetic classes, 200 images, width 8, 8 epochs) and a
fine-tuning (2 classes, n_ft = 20) from it. On this set a float32 run ends pretraining with an epoch-mean
train loss of 0.13 (ln 10 = 2.30 at the start) and fine-tunes to the 0.01 threshold in about 12 epochs at
test accuracy 1.0; measured with amp 0.35 / 0.95, channels_last 0.12 / 0.93, amp + channels_last (width 4)
0.60 / 1.0. The runs are chaotic (lr 0.05, momentum 0.9: contiguous and channels_last float32 differ by 7e-4
in the loss after 3 steps), so the checks are learning margins, not agreement with the float32 run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ptft import ConfigError, app
from ptft.pipeline.config import finetune_identity, pretrain_identity, validate
from ptft.pipeline.main import run_finetune, run_pretrain, runtime_facts
from ptft.train.store import RunDir
from ptft.vision import synthetic
from ptft.vision.models import build_model
from ptft.vision.task import VisionTask

PT_LOSS_MAX = 1.0   # pretraining's last epoch-mean train loss: below 1.0 (ln 10 = 2.30 at chance)
FT_ACC_MIN = 0.8    # fine-tuning test accuracy on 2 classes (chance 0.5)
FLAGS = {"amp": "runtime.amp=true", "channels_last": "runtime.channels_last=true", "compile": "runtime.compile=true"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    synthetic.generate(root, "cifar100", n_train_per_class=20, n_test_per_class=20, seed=0)
    return root


def args(root: Path, store: Path, *flags: str) -> list[str]:
    return [f"data.root={root}", f"store.root={store}", "model=resnet18_cifar", "model.width=8",
            "wandb.mode=disabled", "runtime.device=cpu", "runtime.diagnostics=false",
            "data.pt_classes=10", "data.ft_classes=2", "data.n_ft=20",
            "pretrain.train.max_epochs=8", "pretrain.train.lr=0.05", "pretrain.train.batch_size=40",
            "train.lr=0.01", "train.max_epochs=30", *flags]


def hashes(cfg) -> tuple[str, str]:
    """(pretraining hash, fine-tuning hash) of a config, computed without training."""
    track = validate(cfg)
    pt = RunDir("", "pretrain", pretrain_identity(track, cfg)).run_hash
    return pt, RunDir("", "finetune", finetune_identity(track, cfg, pt)).run_hash


# ------------------------------------------------------------------------------------------------
# no training
# ------------------------------------------------------------------------------------------------
def test_flags_are_not_part_of_the_run_identity(data_root, tmp_path):
    base = hashes(app.compose("finetune", args(data_root, tmp_path)))
    for flags in (*([f] for f in FLAGS.values()), list(FLAGS.values()),
                  ["runtime.amp=false", "runtime.channels_last=auto"]):
        assert hashes(app.compose("finetune", args(data_root, tmp_path, *flags))) == base, flags


@pytest.mark.parametrize("override, key", [("runtime.amp=maybe", "runtime.amp"),
                                           ("runtime.channels_last=1", "runtime.channels_last"),
                                           ("runtime.channels_last=yes", "runtime.channels_last")])
def test_a_bad_flag_is_one_config_error_naming_its_key(data_root, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        validate(app.compose("finetune", args(data_root, tmp_path, override)))


def _task(**kw) -> VisionTask:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(8) % 3
    return VisionTask(build_model("resnet18_cifar", 3, 4), x, y, x, y, batch_size=4, seed=0, **kw)


def _conv_dtypes_and_layouts(task: VisionTask) -> tuple[set, set]:
    """(output dtypes, input channels_last-ness) of every conv in one training loss evaluation."""
    dtypes, layouts = set(), set()

    def hook(mod, inp, out):
        dtypes.add(out.dtype)
        layouts.add(inp[0].is_contiguous(memory_format=torch.channels_last) and not inp[0].is_contiguous())

    hs = [m.register_forward_hook(hook) for m in task.model.modules() if isinstance(m, torch.nn.Conv2d)]
    loss = task.loss(next(iter(task.batches(0))))
    for h in hs:
        h.remove()
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    return dtypes, layouts


def test_cpu_defaults_are_float32_contiguous_eager():
    task = _task()
    assert runtime_facts(task, task.device) == {"device": "cpu", "amp": False, "channels_last": False,
                                                "compile": False}
    assert _conv_dtypes_and_layouts(task) == ({torch.float32}, {False})


def test_forced_flags_really_change_the_computation_on_cpu():
    """Recorded flags are the ones in effect: bf16 convolutions under autocast, channels_last tensors."""
    amp = _task(amp=True)
    assert _conv_dtypes_and_layouts(amp) == ({torch.bfloat16}, {False})
    cl = _task(channels_last=True)
    assert _conv_dtypes_and_layouts(cl) == ({torch.float32}, {True})
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in cl.model.parameters() if p.dim() == 4)
    both = _task(amp="auto", channels_last=None)  # auto / null: off on the CPU
    assert (both.amp, both.channels_last) == (False, False)
    m = both.evaluate()
    assert 0 <= float(m["test_acc"]) <= 1 and math.isfinite(float(m["test_loss"]))


# ------------------------------------------------------------------------------------------------
# short pretraining + fine-tuning with the flags
# ------------------------------------------------------------------------------------------------
def _check_pipeline(root: Path, store: Path, names: tuple[str, ...]) -> None:
    flags = [FLAGS[n] for n in names]
    want = {"device": "cpu", **{k: k in names for k in FLAGS}}
    pt_run, _ = run_pretrain(app.compose("pretrain", args(root, store, *flags)))
    [(ft_run, _)] = run_finetune(app.compose("finetune", args(root, store, *flags)))
    assert (pt_run.run_hash, ft_run.run_hash) == hashes(app.compose("finetune", args(root, store)))  # same identity
    pt = json.loads((pt_run.path / "result.json").read_text())
    ft = json.loads((ft_run.path / "result.json").read_text())
    print(names, "PT train loss", pt["train_loss"], "acc", pt["test_acc"], "| FT", ft["status"], ft["epochs"],
          ft["test_acc"])
    for res in (pt, ft):
        assert {k: res[k] for k in want} == want  # the runtime facts, as run
    assert pt["train_loss"] < PT_LOSS_MAX, pt["train_loss"]
    assert ft["status"] == "ok" and ft["train_loss"] < 0.01  # fine-tuning reached its stopping threshold
    assert ft["test_acc"] >= FT_ACC_MIN, ft["test_acc"]


def test_amp_and_channels_last_together_learn_on_cpu(data_root, tmp_path):
    _check_pipeline(data_root, tmp_path, ("amp", "channels_last"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["amp", "channels_last"])
def test_each_flag_alone_learns_on_cpu(data_root, tmp_path, name):
    _check_pipeline(data_root, tmp_path, (name,))


@pytest.mark.slow  # torch.compile on the CPU: one compile per model, mode and shape (minutes on one thread)
@pytest.mark.parametrize("names", [("compile",), ("amp", "channels_last", "compile")])
def test_compile_learns_on_cpu(data_root, tmp_path, names):
    _check_pipeline(data_root, tmp_path, names)
