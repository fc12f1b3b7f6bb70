"""The modular-arithmetic track: tasks, the Transformer, the knobs on its stages, and the pipeline end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ptft import ConfigError, app
from ptft.arith import data as D
from ptft.arith.model import ArithTransformer, TransformerConfig, build_model
from ptft.pipeline.knobs import FTConfig, InitConfig, apply_init_scaling, prepare_finetune_model
from ptft.pipeline.main import run_finetune, run_pretrain

SMALL = ["data.p=13", "data.pt_frac=0.5", "model.d_model=16", "model.n_heads=2", "model.d_mlp=32",
         "wandb.mode=disabled", "runtime.device=cpu", "pretrain.train.max_steps=60", "train.max_steps=40",
         "pretrain.train.eval_every=20", "train.eval_every=20", "data.n_ft=40"]


def small(store: Path, *extra: str) -> list[str]:
    return ["data=modarith", "model=transformer", f"store.root={store}", *SMALL, *extra]


# ------------------------------------------------------------------------------------------------
# tasks
# ------------------------------------------------------------------------------------------------
DIRECT = {  # one pair at a time, in plain integers; div by search for the c with c * b = a (mod p)
    "add": lambda a, b, p, perm: (a + b) % p, "sub": lambda a, b, p, perm: (a - b) % p,
    "mul": lambda a, b, p, perm: (a * b) % p, "x2y2": lambda a, b, p, perm: (a * a + b * b) % p,
    "lin": lambda a, b, p, perm: (2 * a + b) % p, "perm_add": lambda a, b, p, perm: int(perm[(a + b) % p]),
    "div": lambda a, b, p, perm: next(c for c in range(p) if (c * b) % p == a),
}


@pytest.mark.parametrize("p", [7, 13])
@pytest.mark.parametrize("op", D.OPS)
def test_labels_match_the_formula_on_every_pair(op, p):
    a, b = D.pairs(op, p)
    assert len(a) == D.n_pairs(op, p) == (p * (p - 1) if op == "div" else p * p)
    perm = D.permutation(p, 3)
    assert sorted(perm.tolist()) == list(range(p))  # a permutation of the residues
    got = D.labels(op, a, b, p, perm_seed=3)
    assert got.tolist() == [DIRECT[op](int(x), int(y), p, perm) for x, y in zip(a, b)]


def _set(split) -> set:
    return {tuple(r) for r in split.x.tolist()}


def test_splits_are_disjoint_complete_and_functions_of_the_seeds():
    cfg = D.ModArithConfig(p=13, pt_ops=["add", "mul"], pt_frac=0.3, ft_op="sub", n_ft=30, split_seed=1, sample_seed=2)
    t = D.load_task(cfg)
    assert not _set(t.pt_train) & _set(t.pt_test)
    assert len(t.pt_train) == round(0.3 * 2 * 169) and len(t.pt_train) + len(t.pt_test) == 2 * 169
    assert not _set(t.ft_train) & _set(t.ft_test) and len(_set(t.ft_train) | _set(t.ft_test)) == 169
    assert len(t.ft_train) == 30 and set(t.ft_train.x[:, 1].tolist()) == {13 + D.OPS.index("sub")}
    ops = set(t.pt_train.x[:, 1].tolist()) | set(t.pt_test.x[:, 1].tolist())
    assert ops == {13 + D.OPS.index("add"), 13 + D.OPS.index("mul")}  # the op token tells the mixture apart
    again = D.load_task(cfg)
    assert all(torch.equal(getattr(t, s).x, getattr(again, s).x) for s in ("pt_train", "pt_test", "ft_train"))
    other = D.load_task(D.ModArithConfig(**{**cfg.__dict__, "split_seed": 5, "sample_seed": 6}))
    assert _set(other.pt_train) != _set(t.pt_train) and _set(other.ft_train) != _set(t.ft_train)
    bigger = D.load_task(D.ModArithConfig(**{**cfg.__dict__, "n_ft": 60}))
    assert _set(t.ft_train) <= _set(bigger.ft_train)  # n_ft draws are nested for fixed seeds
    assert _set(D.load_task(D.ModArithConfig(**{**cfg.__dict__, "sample_seed": 9})).pt_train) == _set(t.pt_train)


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
def _reference(m: ArithTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Every position of the standard one-layer decoder (causal attention, ReLU MLP, no LayerNorm)."""
    x = m.embed.weight[tokens] + m.pos.weight                           # (B, T, d)
    B, T, d = x.shape
    H, dh = m.attn.n_heads, m.attn.d_head
    q = (x @ m.attn.W_Q.T).reshape(B, T, H, dh).transpose(1, 2)        # (B, H, T, dh)
    k = (x @ m.attn.W_K.T).reshape(B, T, H, dh).transpose(1, 2)
    v = (x @ m.attn.W_V.T).reshape(B, T, H, dh).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / math.sqrt(dh)
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    z = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, H * dh)
    r = x + z @ m.attn.W_O.T
    r = r + torch.relu(r @ m.mlp.W_in.T + m.mlp.b_in) @ m.mlp.W_out.T + m.mlp.b_out
    return (r @ m.unembed.weight.T)[:, -1]


def test_last_position_equals_the_full_sequence_reference():
    torch.manual_seed(0)
    m = build_model(TransformerConfig(d_model=24, n_heads=3, d_mlp=40), d_vocab=11 + 7, n_out=11).double()
    with torch.no_grad():
        for p in m.mlp.parameters():
            if p.dim() == 1:
                p.normal_()  # biases start at 0: make them count
    tokens = torch.randint(0, 18, (64, 3))
    assert torch.allclose(m(tokens), _reference(m, tokens), rtol=0, atol=1e-10)


def test_default_init_stds():
    torch.manual_seed(1)
    m = build_model(TransformerConfig(d_model=128, n_heads=4, d_mlp=512), d_vocab=113 + 7, n_out=113)
    for name, p in m.named_parameters():
        if p.dim() == 1:
            assert (p == 0).all(), name
        else:
            want = 1 / math.sqrt(120 if name == "unembed.weight" else 128)
            assert abs(p.std().item() / want - 1) < 0.05, name


# ------------------------------------------------------------------------------------------------
# knobs on named stages
# ------------------------------------------------------------------------------------------------
def _norms(m) -> dict[str, float]:
    return {n: float(p.detach().double().norm()) for n, p in m.named_parameters()}


def _model(seed: int = 0) -> ArithTransformer:
    torch.manual_seed(seed)
    return build_model(TransformerConfig(d_model=16, n_heads=2, d_mlp=32), 20, 13)


def _stage(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("cfg, expect", [
    (InitConfig(kappa=0.25, scale=2.0, targets=["weight", "bias", "bn"]),  # default split: embed, pos, attn
     lambda n: 2.0 * (0.25 if _stage(n) in ("embed", "pos", "attn") else 1.0)),
    (InitConfig(kappa=0.5, split="attn"), lambda n: 0.5 if _stage(n) in ("embed", "pos") else 1.0),
    (InitConfig(kappa=0.1, profile="geometric"),
     lambda n: 0.1 ** (1 - ArithTransformer.STAGES.index(_stage(n)) / 4)),
    (InitConfig(layer_scales={"attn.W_Q": 3.0, "mlp": 0.5}),
     lambda n: 3.0 if n == "attn.W_Q" else (0.5 if _stage(n) == "mlp" else 1.0)),
])
def test_init_knobs_scale_exactly_the_named_stages(cfg, expect):
    ref, m = _model(), _model()
    apply_init_scaling(m, cfg)
    a, b = _norms(ref), _norms(m)
    for n in a:
        if a[n] > 0:  # biases start at 0
            assert math.isclose(b[n], expect(n) * a[n], rel_tol=1e-6), n


def test_new_readout_is_the_default_init_times_gamma_and_rescale_hits_every_parameter():
    ref, m = _model(), _model()
    torch.manual_seed(7)
    fresh = ref.reset_head(13)
    torch.manual_seed(7)
    prepare_finetune_model(m, FTConfig(rescale=0.5, readout_scale=0.1), 13)
    assert torch.allclose(m.unembed.weight, 0.1 * fresh.weight)
    for n, v in _norms(m).items():
        if n != "unembed.weight" and v > 0:
            assert math.isclose(v, 0.5 * _norms(ref)[n], rel_tol=1e-6), n


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------
def test_pretrain_then_finetune_and_stl_record_the_metrics(tmp_path):
    store = tmp_path / "store"
    pt_run, pt = run_pretrain(app.compose("pretrain", small(store)))
    assert pt["status"] == "ok" and pt["steps"] == 60 and 0 <= pt["test_acc"] <= 1
    rows = [json.loads(ln) for ln in (pt_run.path / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in rows if "eval/test_acc" in r]
    assert evals == [20, 40, 60]  # the grokking curve, every train.eval_every steps
    ft = run_finetune(app.compose("finetune", small(store, "runs.seeds=[0,1]")))
    stl = run_finetune(app.compose("finetune", small(store, "ft.mode=stl")))
    for _, r in ft + stl:
        for k in ("status", "steps", "train_loss", "train_acc", "test_loss", "test_acc", "steps_to_95",
                  "param_norm_start", "param_norm_end", "diag/movement/embed", "diag/cka/mlp", "diag/pr_end/attn"):
            assert k in r, k
        assert r["n_ft"] == 40 and r["n_test"] == 169 - 40 and r["steps"] == 40
        assert r["param_norm_end"] != r["param_norm_start"]
    assert {r["pretrain"] for _, r in ft} == {pt_run.run_hash} and stl[0][1]["pretrain"] is None
    a = ft[0][1]
    first = next((r["step"] for r in map(json.loads, (ft[0][0].path / "metrics.jsonl").read_text().splitlines())
                  if r.get("eval/test_acc", 0) >= 0.95), None)
    assert a["steps_to_95"] == first


def test_finished_run_is_skipped(tmp_path, capsys):
    args = small(tmp_path / "store")
    run, res = run_pretrain(app.compose("pretrain", args))
    mtime = (run.path / "result.json").stat().st_mtime_ns
    again_run, again = run_pretrain(app.compose("pretrain", args))
    strip = lambda r: {k: v for k, v in r.items() if k != "provenance"}  # noqa: E731
    assert strip(again) == strip(res) and (run.path / "result.json").stat().st_mtime_ns == mtime
    assert "pretrained model found" in capsys.readouterr().out


@pytest.mark.parametrize("override,key", [
    ("data.p=15", "data.p"), ("data.p=2", "data.p"), ("data.pt_ops=[add,pow]", "data.pt_ops"),
    ("data.ft_op=xor", "data.ft_op"), ("data.n_ft=169", "data.n_ft"), ("runs.n_ft=[10,500]", "runs.n_ft"),
    ("data.pt_frac=0", "data.pt_frac"), ("data.pt_frac=1.5", "data.pt_frac"), ("init.kappa=0", "init.kappa"),
    ("init.scale=-1", "init.scale"), ("ft.readout_scale=0", "ft.readout_scale"), ("init.split=layer3", "init.split"),
    ("+init.layer_scales={conv1:2}", "conv1"), ("+ft.layer_rescale={fc:2}", "fc"), ("model.n_heads=3", "n_heads"),
    ("data.pt_ops=[]", "data.pt_ops"), ("data.pt_ops=[add,add]", "data.pt_ops"), ("train.batch_size=8", "batch_size"),
    ("data.name=cifar100", "data=cifar100"), ("train.optimizer=adam", "train.optimizer"),
    ("train.weight_decay=-1", "train.weight_decay"),
])
def test_bad_values_fail_before_compute_and_write_nothing(tmp_path, override, key):
    cfg = app.compose("finetune", [*small(tmp_path / "store"), override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        run_finetune(cfg)
    assert not (tmp_path / "store").exists()


def test_group_keys_exist_only_in_their_group_and_tracks_do_not_mix(tmp_path, cli):
    p = cli("ptft-finetune", "data.p=13", "store.root=store", cwd=tmp_path)  # data=cifar100 has no p
    assert p.returncode != 0 and "data.p" in p.stderr
    p = cli("ptft-finetune", "data=modarith", "store.root=store", "wandb.mode=disabled", cwd=tmp_path)
    assert p.returncode == 2 and "model=transformer" in p.stderr and "Traceback" not in p.stderr
    p = cli("ptft-pretrain", "data=modarith", "model=transformer", "train.lr=0.1", "store.root=store", cwd=tmp_path)
    assert p.returncode == 2 and "pretrain.train.lr" in p.stderr
    assert not (tmp_path / "store").exists()


def test_presets_compose_and_validate():
    from ptft.pipeline.config import validate

    for name in ("modarith_demo", "modarith_cpu", "modarith_relative_scale", "modarith_absolute_scale",
                 "modarith_readout_scale"):
        cfg = app.compose("finetune", [f"experiment=arith/{name}", "seed=3"])
        validate(cfg)
        assert cfg.name == name and cfg.data.name == "modarith" and cfg.model.name == "transformer"
        assert cfg.pretrain.train.optimizer == cfg.train.optimizer == "adamw"
        assert cfg.train.weight_decay <= 0.01 < cfg.pretrain.train.weight_decay  # FT keeps init scales alive
    gpu = app.compose("finetune", ["experiment=arith/modarith_relative_scale"])
    assert (gpu.data.p, gpu.model.d_model, gpu.model.n_heads, gpu.model.d_mlp, gpu.data.pt_frac) == (113, 128, 4, 512, 0.3)
    assert gpu.pretrain.train.lr == 1e-3 and gpu.pretrain.train.weight_decay == 1.0
    assert gpu.pretrain.train.max_steps >= 20000


def test_gpu_preset_starts_at_a_shrunk_size(tmp_path):
    cfg = app.compose("finetune", ["experiment=arith/modarith_relative_scale", f"store.root={tmp_path}", "data.p=11",
                                   "model.d_model=8", "model.d_mlp=16", "pretrain.train.max_steps=5",
                                   "train.max_steps=5", "runs.n_ft=[20]", "runtime.device=cpu", "wandb.mode=disabled"])
    (_, r), = run_finetune(cfg)
    assert r["status"] == "ok" and r["steps"] == 5


@pytest.mark.slow  # subprocesses (about 4 s of imports each)
def test_killed_pretraining_and_finetuning_resume_bit_identical(tmp_path, cli, kill9_after_checkpoint):
    long = ["pretrain.train.max_steps=8000", "train.max_steps=8000", "pretrain.train.ckpt_every_s=0.2",
            "train.ckpt_every_s=0.2", "data.p=23", "model.d_model=32", "model.d_mlp=64"]
    ref = run_finetune(app.compose("finetune", small(tmp_path / "ref", *long)))
    (ref_run, ref_res), = ref
    pt_hash = ref_res["pretrain"]
    killed = small(tmp_path / "killed", *long)
    pt_only = [a for a in killed if not a.startswith("train.")]  # ptft-pretrain refuses the FT's train.* keys
    kill9_after_checkpoint("ptft-pretrain", pt_only, tmp_path / "killed" / "pretrain" / pt_hash, tmp_path)
    kill9_after_checkpoint("ptft-finetune", killed, tmp_path / "killed" / "finetune" / ref_run.run_hash, tmp_path)
    out = cli("ptft-finetune", *killed, cwd=tmp_path, check=True)
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    assert run_dir == tmp_path / "killed" / "finetune" / ref_run.run_hash
    for stage, h in (("pretrain", pt_hash), ("finetune", ref_run.run_hash)):
        a, b = (json.loads((tmp_path / d / stage / h / "result.json").read_text()) for d in ("ref", "killed"))
        a.pop("provenance"), b.pop("provenance")  # when and where it ran
        assert json.dumps(a) == json.dumps(b), stage  # bit-identical numbers, metrics and diagnostics included
    assert json.loads((run_dir / "timing.json").read_text())["resumed"] is True


def test_aggregate_has_the_vision_columns_plus_its_own(tmp_path):
    from ptft.analysis.aggregate import collect

    store = tmp_path / "store"
    run_finetune(app.compose("finetune", small(store)))
    rows = collect([store])
    ft = [r for r in rows if r["stage"] == "finetune"]
    assert len(ft) == 1 and len([r for r in rows if r["stage"] == "pretrain"]) == 1
    for col in ("status", "mode", "n_ft", "seed", "test_acc", "test_loss", "init.kappa", "init.scale",
                "ft.readout_scale", "ft.rescale", "data.name", "model.name", "run_hash",
                "data.p", "data.ft_op", "data.pt_ops", "steps_to_95", "train_acc", "diag/movement/attn"):
        assert col in ft[0], col


def test_wandb_offline_one_run_per_stage_grouped_by_experiment(tmp_path):
    store = tmp_path / "store"
    args = [a for a in small(store, "name=arith_wandb") if not a.startswith("wandb.")]
    (run, _), = run_finetune(app.compose("finetune", [*args, "wandb.mode=offline"]))
    pt_dir, = [d for d in (store / "pretrain").iterdir() if d.is_dir()]
    for d in (pt_dir, run.path):
        run_id = (d / "wandb_id.txt").read_text()
        found = list((d / "wandb").glob(f"offline-run-*-{run_id}"))
        assert len(found) == 1
    meta = (run.path / "config.yaml").read_text()
    assert "name: arith_wandb" in meta


@pytest.mark.slow  # 3000 full-batch steps (about 40 s on a free core)
def test_the_demo_pretraining_groks(tmp_path):
    """modarith_demo's PT recipe: train accuracy 1 early, test accuracy >= 0.95 by the end (grokking)."""
    cfg = app.compose("pretrain", ["experiment=arith/modarith_demo", f"store.root={tmp_path}", "wandb.mode=disabled"])
    run, res = run_pretrain(cfg)
    assert res["status"] == "ok" and res["test_acc"] >= 0.95 and res["steps_to_95"] is not None
    rows = [json.loads(ln) for ln in (run.path / "metrics.jsonl").read_text().splitlines()]
    early = [r for r in rows if "eval/train_acc" in r and r["step"] <= 1000]
    assert any(r["eval/train_acc"] == 1.0 and r["eval/test_acc"] < 0.5 for r in early)  # memorised first
