"""Property-based tests (hypothesis) of every entry point's input handling (issue 11).

Nothing here lists keys by hand: the Hydra pipelines are found from the console scripts and conf/,
their keys and types from the composed config, and every generated command line is checked the way
the console script checks it (`app.check`: compose + the pipeline's registered validator, in-process,
a few milliseconds each). Properties, for every key of every pipeline:

* robustness: any override ends either accepted or in ONE ptft.ConfigError line that names the key
  (never another exception);
* must reject: non-finite floats, text for numbers or booleans, lists or dicts for scalars, null for
  non-optional keys, integers beyond 64 bits, negative seeds, empty or repeated integer
  lists, unresolvable interpolations, unknown keys (also with +), unknown groups and group choices;
* must accept: the defaults, every experiment preset (for at least one pipeline) and each value of
  its sweep, and every key set to its own default value.

ptft-theory, ptft-data and ptft-aggregate (argparse) are driven in-process with generated argv:
exit 0 (or 1 = theory did not converge), or exit 2 with one line on stderr; never a traceback.
A few end-to-end cases run the real console scripts. Profiles: HYPOTHESIS_PROFILE=ptft (default:
fixed examples, so `make test` is reproducible) or ptft-explore (random, 10x more examples).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode, StringNode

from ptft import ConfigError, app

N = int(settings().max_examples)  # per entry point and property (profile in conftest.py)


# ------------------------------------------------------------------------------------------------
# discovery
# ------------------------------------------------------------------------------------------------
def console_scripts() -> dict[str, str]:
    """[project.scripts] of this source tree's pyproject.toml (not the installed metadata, which may be
    another checkout's)."""
    import tomllib

    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def _import_console_scripts() -> None:
    for target in console_scripts().values():
        importlib.import_module(target.split(":")[0])


_import_console_scripts()
PIPELINES = sorted(p.stem for p in app.conf_dir().glob("*.yaml"))
GROUPS = {p.name: sorted(q.relative_to(p).with_suffix("").as_posix() for q in p.rglob("*.yaml"))
          for p in app.conf_dir().iterdir() if p.is_dir() and p.name != "hydra"}  # experiment=<track>/<name>


@dataclasses.dataclass(frozen=True)
class Leaf:
    key: str
    kind: str          # int | float | bool | str | list | dict | any
    optional: bool
    default: Any
    element: Any = None  # element type of a list


def leaves(cfg: DictConfig, prefix: str = "") -> list[Leaf]:
    out = []
    for k in cfg.keys():
        node, key = cfg._get_node(k), f"{prefix}.{k}" if prefix else str(k)
        if isinstance(node, DictConfig):
            if dataclasses.is_dataclass(OmegaConf.get_type(node)):
                out += leaves(node, key)
            else:
                out.append(Leaf(key, "dict", node._is_optional(), OmegaConf.to_container(node)))
        elif isinstance(node, ListConfig):
            out.append(Leaf(key, "list", node._is_optional(), None if node._is_none() else list(node),
                            node._metadata.element_type))
        else:
            kind = {IntegerNode: "int", FloatNode: "float", BooleanNode: "bool", StringNode: "str"}.get(type(node), "any")
            out.append(Leaf(key, kind, node._is_optional(), node._value()))
    return out


LEAVES = {name: leaves(app.compose(name, [])) for name in PIPELINES}


def is_seed(key: str) -> bool:
    return re.search(r"(^|[._])seeds?$", key) is not None


def fmt(v: Any) -> str:
    """A value as a Hydra override string."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(v)


def verdict(name: str, overrides: list[str]) -> tuple[bool, str]:
    """(accepted, message). Any exception other than ConfigError fails the test right here."""
    try:
        app.check(name, overrides)
        return True, ""
    except ConfigError as e:
        return False, str(e)


def assert_one_line_naming(msg: str, key: str) -> None:
    assert msg.strip() and "\n" not in msg.strip(), f"not one line: {msg!r}"
    assert key in msg or key.split(".")[-1] in msg, f"{key!r} not named in: {msg}"


# ------------------------------------------------------------------------------------------------
# strategies: (override, key it is about, must it be rejected?)
# ------------------------------------------------------------------------------------------------
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
junk = st.text(alphabet=st.characters(codec="ascii", exclude_characters="\x00"), max_size=12)
BAD_NAMES = st.sampled_from(["nope", "Experiment", "dln_panel"])  # few: each unknown group costs one full compose
NONFINITE = ["nan", "inf", "-inf", "1e400", "-1e400", "NaN", "+inf"]


@st.composite
def bad_override(draw, name: str) -> tuple[str, str, bool]:
    leaf = draw(st.sampled_from(LEAVES[name]))
    key, kind = leaf.key, leaf.kind
    cases = ["zero", "negative", "huge", "garbage", "list", "dict", "null", "unknown", "group"]
    if kind == "float":
        cases += ["nonfinite"] * 3
    if kind in ("int", "float", "bool"):
        cases += ["text"] * 2
    if kind == "int":
        cases += ["int64"]
    if kind == "list":
        cases += ["empty", "repeated", "repeated"]
    if is_seed(key):
        cases += ["badseed"] * 2
    case = draw(st.sampled_from(cases))
    if case == "nonfinite":
        return f"{key}={draw(st.sampled_from(NONFINITE))}", key, True
    if case == "text":
        w = draw(words.filter(lambda s: s not in ("nan", "inf", "true", "false", "null", "yes", "no", "on", "off", "y", "n")))
        return f"{key}={w}", key, True
    if case == "int64":
        return f"{key}={draw(st.integers(2**63, 2**80))}", key, True
    if case == "badseed":
        v = draw(st.integers(-(2**62), -1))
        return (f"{key}=[{v}]" if kind == "list" else f"{key}={v}"), key, True
    if case == "zero":
        return f"{key}={draw(st.sampled_from(['0', '0.0', '-0.0', '[0]']))}", key, False
    if case == "negative":
        v = draw(st.one_of(st.integers(-(2**31), -1), st.floats(max_value=-1e-300, allow_infinity=False)))
        return f"{key}={fmt(v)}", key, False
    if case == "huge":
        v = draw(st.one_of(st.integers(10**6, 2**62), st.floats(1e6, 1e308)))
        return f"{key}={fmt(v)}", key, False
    if case == "garbage":
        return f"{key}={draw(junk)}", key, False
    if case == "list":
        must = kind not in ("list", "any", "str")  # a str key may take "[1, 2]" as text? no: Hydra rejects it
        return f"{key}=[1,2]", key, must or kind == "str"
    if case == "dict":
        return f"{key}={{a:1}}", key, kind not in ("dict", "any")
    if case == "null":
        return f"{key}=null", key, not leaf.optional
    if case == "empty":
        return f"{key}=[]", key, leaf.element is int
    if case == "repeated":
        base = [3, 3] if leaf.element is int else (leaf.default or ["x"])[:1] * 2
        return f"{key}={fmt(base)}", key, leaf.element is int
    if case == "unknown":
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        w = draw(words.filter(lambda s: s not in {lf.key.split(".")[-1] for lf in LEAVES[name]}))
        full = f"{parent}.{w}" if parent else w
        return f"{draw(st.sampled_from(['', '+']))}{full}={draw(st.sampled_from(['1', 'x', '0.5']))}", full, True
    # group: an unknown choice of a known group, or an unknown group
    if GROUPS and draw(st.booleans()):
        g = draw(st.sampled_from(sorted(GROUPS)))
        return f"{g}={draw(BAD_NAMES.filter(lambda s: s not in GROUPS[g]))}", g, True
    g = draw(BAD_NAMES.filter(lambda s: s not in GROUPS and s not in {lf.key.split('.')[0] for lf in LEAVES[name]}))
    return f"{g}/x=x", g, True


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------------------
# Hydra pipelines
# ------------------------------------------------------------------------------------------------
def test_every_pipeline_is_found_and_has_a_validator():
    assert {"dln", "pretrain", "finetune"} <= set(PIPELINES)
    missing = [p for p in PIPELINES if p not in app.VALIDATORS]
    assert not missing, f"conf/{missing[0]}.yaml has no app.register_validator(...) in its pipeline"


@pytest.mark.parametrize("name", PIPELINES)
def test_generated_bad_values_end_in_one_line_naming_the_key(name):
    @settings(max_examples=N, **SETTINGS)
    @given(bad_override(name))
    def prop(case):
        override, key, must_reject = case
        accepted, msg = verdict(name, [override])
        if must_reject:
            assert not accepted, f"accepted: {name} {override}"
        if not accepted:
            assert_one_line_naming(msg, key)

    prop()


@pytest.mark.parametrize("name", PIPELINES)
def test_every_key_accepts_its_own_default(name):
    for leaf in LEAVES[name]:
        if leaf.kind in ("dict", "any") or leaf.key in ("name",):
            continue
        accepted, msg = verdict(name, [f"{leaf.key}={fmt(leaf.default)}"])
        assert accepted, f"{name}: {leaf.key}={fmt(leaf.default)} rejected: {msg}"


@pytest.mark.parametrize("preset", GROUPS.get("experiment", []))
def test_every_preset_and_its_whole_sweep_is_accepted_by_a_pipeline(preset):
    """app.precheck of `-m experiment=<preset>` checks every combination of the preset's sweep."""
    errors = {}
    for name in PIPELINES:
        try:
            app.precheck(name, ["-m", f"experiment={preset}"])
            return
        except ConfigError as e:
            errors[name] = str(e)
    pytest.fail(f"experiment={preset} is accepted by no pipeline: {errors}")


def test_fast_compose_equals_hydra_compose():
    """app.check's cached compose gives Hydra's config (or Hydra's error) for the same overrides."""
    cases = [["dln.alpha=0.2", "train.lr=0.1"], ["experiment=dln/panel_b", "dln.dim=300"], ["dln.dim=abc"],
             ["+dln.extra=1"], ["dln.seeds=[1,2]"], ["seed=3", "dln.seeds=null"], ["experiment=nope"]]
    for ov in cases:
        try:
            fast = OmegaConf.to_container(app.compose_fast("dln", ov))
        except Exception as e:
            fast = type(e).__name__
        try:
            full = OmegaConf.to_container(app.compose("dln", ov))
        except Exception as e:
            full = type(e).__name__
        assert fast == full, ov


# ------------------------------------------------------------------------------------------------
# argparse entry points
# ------------------------------------------------------------------------------------------------
def run_main(main, argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    err = capsys.readouterr().err
    return code, err


def assert_clean_exit(code: int, err: str, allowed: tuple = (0, 2)) -> None:
    assert code in allowed, (code, err)
    assert "Traceback" not in err
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "error" in lines[0], err


number = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.sampled_from(NONFINITE),
                   st.integers(-5, 5).map(str), st.floats(1e-3, 1.0).map(repr), words, st.just(""))


@st.composite
def theory_argv(draw) -> tuple[list[str], bool]:
    vals = {"--rho-pt": "0.1", "--rho-ft": "0.1", "--omega": "1", "--alpha": "0.3"}
    bad = False
    for flag in draw(st.lists(st.sampled_from([*vals, "--a-pt", "--sigma0"]), max_size=3, unique=True)):
        v = draw(number)
        vals[flag] = v
        try:
            bad |= not math.isfinite(float(v))
        except ValueError:
            bad = True
    if draw(st.booleans()):
        del vals[draw(st.sampled_from(["--rho-pt", "--rho-ft", "--omega", "--alpha"]))]
        bad = True
    argv = ["advise"] + [x for kv in vals.items() for x in kv]
    if draw(st.booleans()):
        c, lam, g = draw(number), draw(number), draw(number)
        argv += ["--candidates", f"{c},{lam},{g}"]
        for v in (c, g):
            try:
                bad |= not math.isfinite(float(v))
            except ValueError:
                bad = True
    else:
        argv += ["--candidates", "1e-3,0,0"]
    if draw(st.integers(0, 9)) == 0:
        argv.append(f"--{draw(words)}")
        bad = True
    return argv, bad


def test_theory_cli_generated_arguments(capsys):
    from ptft.dln.advise import main

    @settings(max_examples=N, **SETTINGS)
    @given(theory_argv())
    def prop(case):
        argv, bad = case
        code, err = run_main(main, argv, capsys)
        assert_clean_exit(code, err, (0, 1, 2))
        if bad:
            assert code == 2, (argv, code, err)

    prop()


@st.composite
def data_argv(draw, root: Path) -> tuple[list[str], bool]:
    vals = {"--n-train-per-class": "1", "--n-test-per-class": "1", "--seed": "0", "--noise": "1.0",
            "--max-shift": "2", "--distractors": "0"}
    bad = False
    for flag in draw(st.lists(st.sampled_from(sorted(vals)), max_size=3, unique=True)):
        v = draw(st.one_of(number, st.integers(-(2**40), 2**70).map(str)))
        vals[flag] = v
        try:
            x = float(v)
            if flag == "--noise":
                bad |= not (math.isfinite(x) and x >= 0)
            else:
                bad |= not (x == int(x) and "." not in v and "e" not in v.lower()) or x < 0
                bad |= flag == "--seed" and x >= 2**63
        except (ValueError, OverflowError):
            bad = True
    sub = draw(words)
    argv = ["synthetic", "--root", str(root / sub), "--format", draw(st.sampled_from(["cifar100", "svhn", "mnist"]))]
    bad |= argv[-1] == "mnist"
    return argv + [x for kv in vals.items() for x in kv], bad


def test_data_cli_generated_arguments(capsys, tmp_path, monkeypatch):
    from ptft.vision import synthetic

    real = synthetic.make_dataset
    # the real generator on one image per class (generated sizes may be huge): seeds, noise and shifts
    # still go through the real code
    monkeypatch.setattr(synthetic, "make_dataset", lambda n, ntr, nte, *a, **k: real(n, 1, 1, *a, **k))

    @settings(max_examples=max(N // 3, 20), **SETTINGS)
    @given(data_argv(tmp_path))
    def prop(case):
        argv, bad = case
        code, err = run_main(synthetic.main, argv, capsys)
        assert_clean_exit(code, err)
        if bad:
            assert code == 2, (argv, code, err)

    prop()


@st.composite
def damaged_store(draw, root: Path) -> Path:
    """A run store with run dirs holding generated (often broken) config.yaml / result.json."""
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    content = st.one_of(st.binary(max_size=40), junk, st.just("[1, 2]"), st.just("{}"), st.just("null"),
                        st.just('{"status": "ok", "members": [1, {"seed": 2}]}'),
                        st.just('{"status": "ok", "provenance": {"git_commit": "abc"}}'), st.just("a: [1"))
    for i in range(draw(st.integers(0, 4))):
        d = root / "dln" / f"{i:012d}"
        d.mkdir(parents=True)
        for name in draw(st.lists(st.sampled_from(["config.yaml", "result.json"]), unique=True)):
            c = draw(content)
            (d / name).write_bytes(c if isinstance(c, bytes) else c.encode())
    root.mkdir(parents=True, exist_ok=True)
    return root


def test_aggregate_cli_never_crashes_on_damaged_stores(capsys, tmp_path):
    from ptft.analysis import aggregate

    @settings(max_examples=max(N // 3, 20), **SETTINGS)
    @given(damaged_store(tmp_path / "store"), st.booleans())
    def prop(root, missing):
        argv = [str(root)] + ([str(tmp_path / "nope")] if missing else [])
        code, err = run_main(aggregate.main, argv, capsys)
        assert_clean_exit(code, err)
        assert code == (2 if missing else 0)

    prop()


# ------------------------------------------------------------------------------------------------
# end to end: the real console scripts (a few cases)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script,override,needle", [
    ("ptft-finetune", "runs.seeds=[-1]", "runs.seeds"),
    ("ptft-pretrain", "train.lr=nan", "train.lr"),
    ("ptft-dln", "+dln.foo=1", "dln.foo"),
])
def test_console_scripts_reject_in_one_line(tmp_path, cli, script, override, needle):
    p = cli(script, override, "store.root=st", cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptft: error:") and needle in lines[0]
    assert not any(tmp_path.iterdir())
