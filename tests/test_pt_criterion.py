"""Pretraining to a criterion (issue 22): the trainer's target on an evaluation metric, the PT columns of every
fine-tuning, other FT tasks of one image pretraining (data.ft_task), the arithmetic presets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ptft import ConfigError, app
from ptft.pipeline.config import finetune_identity, pretrain_identity, validate
from ptft.pipeline.main import run_finetune, run_pretrain
from ptft.train.store import RunDir
from ptft.train.trainer import TrainConfig, Trainer

ARITH = ["data=modarith", "model=transformer", "data.p=13", "data.pt_frac=0.5", "model.d_model=16",
         "model.n_heads=2", "model.d_mlp=32", "wandb.mode=disabled", "runtime.device=cpu", "data.n_ft=40",
         "pretrain.train.eval_every=20", "train.max_steps=20", "train.eval_every=10"]
TARGET = ["pretrain.train.target_metric=train_acc", "pretrain.train.target=0.5"]


def arith(store: Path, *extra: str) -> list[str]:
    return [*ARITH, f"store.root={store}", *extra]


def evals(run: RunDir, key: str) -> list[tuple[int, float]]:
    rows = [json.loads(ln) for ln in (run.path / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [(r["step"], r[key]) for r in rows if key in r]


class Members:
    """B least-squares problems, full batch; evaluation: each member's mse."""

    n_members, full_batch = 3, True

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.X = torch.randn(3, 32, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.6, 0.3]).view(3, 1, 1)
        self.y = torch.einsum("bnd,bd->bn", self.X, torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.w = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)

    def parameters(self):
        return [self.w]

    def batches(self, epoch):
        yield None

    def loss(self, batch):
        return ((torch.einsum("bnd,bd->bn", self.X, self.w) - self.y) ** 2).mean(1)

    def evaluate(self):
        with torch.no_grad():
            return {"test_mse": self.loss(None)}

    def state_dict(self):
        return {"w": self.w.detach().clone()}

    def load_state_dict(self, s):
        with torch.no_grad():
            self.w.copy_(s["w"])


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------
def test_each_member_stops_at_its_first_evaluation_that_meets_the_target():
    task, seen = Members(), []
    cfg = TrainConfig(lr=0.05, threshold=0, max_steps=5000, eval_every=10, target_metric="test_mse", target=1e-3)
    tr = Trainer(task, cfg)
    orig = tr._evaluate

    def spy():
        seen.append((tr.step, task.evaluate()["test_mse"].clone()))
        orig()
    tr._evaluate = spy
    out = tr.run()
    assert out["status"] == ["reached"] * 3 and len(set(out["steps"])) == 3  # an mse: met at or below
    for b, steps in enumerate(out["steps"]):
        first = next(s for s, v in seen if v[b] <= 1e-3)
        assert steps == first and steps % 10 == 0  # at an evaluation, the first that meets it: not before
        assert task.evaluate()["test_mse"][b] <= 1e-3


def test_a_target_out_of_reach_spends_the_budget():
    out = Trainer(Members(), TrainConfig(lr=0.05, threshold=0, max_steps=30, eval_every=10,
                                         target_metric="test_mse", target=1e-12)).run()
    assert out["status"] == ["max_steps"] * 3 and out["steps"] == [30] * 3


# ------------------------------------------------------------------------------------------------
# the pipeline: PT status, steps, quality; FT's pt_* columns
# ------------------------------------------------------------------------------------------------
def test_pretraining_stops_when_met_and_its_finetunings_carry_its_columns(tmp_path):
    store = tmp_path / "store"
    run, pt = run_pretrain(app.compose("pretrain", arith(store, "pretrain.train.max_steps=2000", *TARGET)))
    curve = evals(run, "eval/train_acc")
    stop = next(s for s, v in curve if v >= 0.5)
    assert pt["status"] == "ok" and pt["steps"] == stop < 2000 and pt["criterion"] == "train_acc>=0.5"
    assert all(v < 0.5 for s, v in curve if s < stop) and curve[0][0] == 0  # checked from the start, not before
    assert pt["quality"] == pt["train_acc"] == dict(curve)[stop]
    (_, ft), = run_finetune(app.compose("finetune", arith(store, "pretrain.train.max_steps=2000", *TARGET)))
    assert (ft["pt_status"], ft["pt_steps"], ft["pt_quality"], ft["pt_criterion"]) == \
        ("ok", stop, pt["quality"], "train_acc>=0.5")
    assert ft["pretrain"] == run.run_hash


def test_a_pretraining_that_misses_its_criterion_says_so_and_so_do_its_finetunings(tmp_path, capsys):
    store = tmp_path / "store"
    args = arith(store, "pretrain.train.max_steps=40", "pretrain.train.target_metric=test_acc",
                 "pretrain.train.target=0.99")
    _, pt = run_pretrain(app.compose("pretrain", args))
    assert pt["status"] == "max_steps" and pt["steps"] == 40 and pt["quality"] == pt["test_acc"] < 0.99
    (_, ft), = run_finetune(app.compose("finetune", args))
    assert ft["status"] == "ok" and (ft["pt_status"], ft["pt_steps"], ft["pt_quality"]) == ("max_steps", 40, pt["quality"])
    assert "did not meet its criterion test_acc>=0.99" in capsys.readouterr().out
    (_, stl), = run_finetune(app.compose("finetune", [*args, "ft.mode=stl"]))
    assert stl["pt_status"] is stl["pt_steps"] is stl["pt_quality"] is None


def test_a_budget_recipe_has_no_criterion_and_stays_ok(tmp_path):
    _, pt = run_pretrain(app.compose("pretrain", arith(tmp_path, "pretrain.train.max_steps=20")))
    assert pt["status"] == "ok" and pt["criterion"] is None and pt["quality"] is None


@pytest.mark.parametrize("extra,key", [
    (["pretrain.train.target=0.9"], "pretrain.train.target_metric"),
    (["pretrain.train.target_metric=test_acc"], "pretrain.train.target"),
    (["pretrain.train.target_metric=eval/test_acc", "pretrain.train.target=0.9"], "pretrain.train.target_metric"),
    (["pretrain.train.target_metric=test_accuracy", "pretrain.train.target=0.9"], "pretrain.train.target_metric"),
    (["train.target_metric=test_acc"], "train.target"),
    ([*TARGET, "pretrain.train.eval_every=0"], "pretrain.train.eval_every"),
    ([*TARGET, "pretrain.train.threshold=0.01"], "pretrain.train.threshold"),
    (["pretrain.train.target_metric=test_acc", "pretrain.train.target=nan"], "pretrain.train.target"),
])
def test_bad_criterion_keys_fail_in_one_line_before_compute(tmp_path, extra, key):
    for name in ("pretrain", "finetune"):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
            (run_pretrain if name == "pretrain" else run_finetune)(app.compose(name, arith(tmp_path / "s", *extra)))
        assert "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------------
# run identities
# ------------------------------------------------------------------------------------------------
NEW_KEYS = {"pretrain.train": ("target_metric", "target"), "train": ("target_metric", "target"),
            "data": ("ft_task",)}


def _without_new_keys(cfg):
    """The config as it was before the keys existed (a plain DictConfig without them)."""
    d = OmegaConf.to_container(cfg, resolve=True)
    for node, keys in NEW_KEYS.items():
        sub = d
        for part in node.split("."):
            sub = sub[part]
        for k in keys:
            sub.pop(k, None)
    return OmegaConf.create(d)


@pytest.mark.parametrize("args", [[], ["data=svhn", "model=resnet18_cifar"], ["experiment=arith/modarith_cpu"],
                                  ["experiment=vision/ll_cifar100_rescale"], ["experiment=arith/modarith_relative_scale"]])
def test_default_run_identities_do_not_change(args):
    from ptft.pipeline.track import track_of

    cfg = app.compose("finetune", args)
    track = track_of(cfg)
    assert pretrain_identity(track, cfg) == pretrain_identity(track, _without_new_keys(cfg))
    assert finetune_identity(track, cfg, "h") == finetune_identity(track, _without_new_keys(cfg), "h")


def test_a_target_and_its_evaluation_grid_are_part_of_the_pretraining_identity():
    from ptft.pipeline.track import track_of

    def h(*extra):
        cfg = app.compose("pretrain", ["experiment=arith/modarith_cpu", *extra])
        return RunDir("", "pretrain", pretrain_identity(track_of(cfg), cfg)).run_hash

    base, with_target = h(), h(*TARGET)
    assert base == h("pretrain.train.eval_every=7")  # a budget run: when it evaluates changes nothing
    assert with_target != base and with_target != h(*TARGET, "pretrain.train.eval_every=7")


# ------------------------------------------------------------------------------------------------
# images: LL's train-loss criterion, other FT tasks of one pretraining
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def svhn_root(tmp_path_factory) -> Path:
    from ptft.vision import synthetic

    root = tmp_path_factory.mktemp("svhn")
    synthetic.generate(root, "svhn", n_train_per_class=8, n_test_per_class=4, seed=0)
    return root


def vision(root: Path, store: Path, *extra: str) -> list[str]:
    return ["data=svhn", "model=resnet18_cifar", "model.width=4", f"data.root={root}", f"store.root={store}",
            "wandb.mode=disabled", "runtime.device=cpu", "data.pt_classes=4", "pretrain.train.max_epochs=2",
            "pretrain.train.lr=0.05", "train.max_epochs=2", "data.n_ft=8", "runtime.diagnostics=false", *extra]


def test_images_ll_criterion_status_and_other_ft_tasks_of_one_pretraining(svhn_root, tmp_path):
    from ptft.vision.data import split_classes
    from ptft.vision.track import data_config

    store = tmp_path / "store"
    _, missed = run_pretrain(app.compose("pretrain", vision(svhn_root, store)))  # 2 epochs: loss not < 0.01
    assert missed["status"] == "max_epochs" and missed["criterion"] == "train_loss<0.01"
    assert missed["quality"] == missed["train_loss"] >= 0.01
    _, met = run_pretrain(app.compose("pretrain", vision(svhn_root, store, "pretrain.train.threshold=100")))
    assert met["status"] == "ok" and met["epochs"] == 1 and met["quality"] < 100
    done = [run_finetune(app.compose("finetune", vision(svhn_root, store, f"data.ft_task={t}")))[0] for t in range(3)]
    splits = [split_classes(data_config(app.compose("finetune", vision(svhn_root, store, f"data.ft_task={t}")).data))
              for t in range(3)]
    assert len({tuple(pt) for pt, _ in splits}) == 1  # one pretraining ...
    fts = [set(ft) for _, ft in splits]
    assert all(len(a) == 2 and not a & b for i, a in enumerate(fts) for b in fts[i + 1:])  # ... 3 disjoint FT pairs
    assert not set(splits[0][0]) & set().union(*fts)
    assert splits[0] == split_classes(data_config(app.compose("finetune", vision(svhn_root, store)).data))
    assert {r["pretrain"] for _, r in done} == {done[0][1]["pretrain"]} and len({run.run_hash for run, _ in done}) == 3
    for _, r in done:
        assert (r["pt_status"], r["pt_criterion"], r["pt_quality"]) == ("max_epochs", "train_loss<0.01", missed["quality"])


@pytest.mark.parametrize("extra,key", [
    (["data.ft_task=1", "data.pt_classes=null"], "data.pt_classes"),
    (["data.ft_task=3"], "data.ft_task"),
    (["data.ft_task=-1"], "data.ft_task"),
    (["data.ft_task=1", "data.ft_class_list=[0,1]"], "data.ft_class_list"),
])
def test_bad_ft_task_fails_in_one_line_before_compute(svhn_root, tmp_path, extra, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        run_finetune(app.compose("finetune", vision(svhn_root, tmp_path / "store", *extra)))
    assert "\n" not in str(e.value) and not (tmp_path / "store").exists()


# ------------------------------------------------------------------------------------------------
# presets
# ------------------------------------------------------------------------------------------------
def test_grokking_preset_composes_with_the_published_recipe():
    cfg = app.compose("pretrain", ["experiment=arith/grokking_nanda", "seed=2"])
    validate(cfg, "pretrain")
    d, m, t = cfg.data, cfg.model, cfg.pretrain.train
    assert (d.p, list(d.pt_ops), d.pt_frac, d.split_seed) == (113, ["add"], 0.3, 2)
    assert (m.d_model, m.n_heads, m.d_mlp) == (128, 4, 512)
    assert (t.optimizer, t.lr, list(t.betas), t.weight_decay, t.warmup_steps, t.batch_size) == \
        ("adamw", 1e-3, [0.9, 0.98], 1.0, 10, None)
    assert (t.target_metric, t.target, t.threshold) == ("test_acc", 0.99, 0.0)


def test_criterion_preset_is_the_cpu_recipe_trained_to_the_criterion():
    cfg = app.compose("pretrain", ["experiment=arith/modarith_criterion"])
    cpu = app.compose("pretrain", ["experiment=arith/modarith_cpu"])
    validate(cfg, "pretrain")
    t = cfg.pretrain.train
    assert (t.target_metric, t.target) == ("test_acc", 0.99) and t.max_steps > cpu.pretrain.train.max_steps
    for node in ("data", "model", "init"):
        assert cfg[node] == cpu[node]
    assert {k: v for k, v in cfg.pretrain.train.items() if k not in ("target_metric", "target", "eval_every",
                                                                     "max_steps")} == \
        {k: v for k, v in cpu.pretrain.train.items() if k not in ("target_metric", "target", "eval_every", "max_steps")}
