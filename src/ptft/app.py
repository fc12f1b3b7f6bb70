"""Hydra front end shared by every pipeline: config location, schemas, resolvers, error handling.

Each pipeline registers its structured (dataclass) schema in Hydra's ConfigStore and its primary
YAML in conf/ lists that schema first in its defaults, so an unknown key or a wrong type fails
before any compute. `entry()` turns a pipeline function into a Hydra main whose ConfigError ends
with one clear message and exit code 2, and `compose()` builds the same config in-process (tests,
notebooks, figure scripts).
"""
from __future__ import annotations

import errno
import functools
import itertools
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from ptft import ConfigError


def conf_dir() -> Path:
    """$PTFT_CONF_DIR, else the configs shipped in the package (ptft/conf; the repository's top-level
    conf/ is a link to it)."""
    env = os.environ.get("PTFT_CONF_DIR")
    if env:
        return Path(env).resolve()
    pkg = Path(__file__).resolve().parent / "conf"
    if pkg.is_dir():
        return pkg
    raise ConfigError(f"cannot find {pkg} (the package's configs); reinstall ptft or set PTFT_CONF_DIR to a conf/ "
                      f"directory")


_UID = uuid.uuid4().hex[:6]
if not OmegaConf.has_resolver("ptft_uid"):
    # a token unique to this invocation; cached in the config, so it survives pickling to SLURM jobs
    OmegaConf.register_new_resolver("ptft_uid", lambda: _UID, use_cache=True)


def register(name: str, node: Any, group: Optional[str] = None) -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=node, group=group)


def overrides_name() -> str:
    """The job's command-line overrides, e.g. 'dln.lam_pt=-0.99,dln.omega=0' (wandb run name)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        ov = [o for o in HydraConfig.get().overrides.task if not o.startswith(("hydra", "wandb", "store"))]
        return ",".join(ov) or "defaults"
    except Exception:
        return "defaults"


def launch_cwd() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.cwd)
    except Exception:
        return Path.cwd()


def store_root(cfg: DictConfig) -> Path:
    """store.root as an absolute path; ConfigError if it cannot be created or written. Creates nothing
    (the run store makes its directories when a run starts): see unwritable_dir."""
    if cfg.store.root is None or not str(cfg.store.root).strip():
        raise ConfigError("store.root is empty: give the run store's directory (default: runs; '.' for the "
                          "current directory)")
    root = Path(os.path.expanduser(str(cfg.store.root)))
    root = root if root.is_absolute() else launch_cwd() / root
    why = unwritable_dir(root)
    if why:
        raise ConfigError(f"store.root={cfg.store.root!s}: cannot create or write that directory ({why}); "
                          f"choose a writable one")
    return root


def unwritable_dir(path: Path) -> Optional[str]:
    """Why a directory cannot be created or written (None if it can); creates nothing. A missing one is
    probed by making and removing a uniquely named directory in its nearest existing parent, so concurrent
    jobs never race."""
    import tempfile

    try:
        path = Path(path)
        if path.exists():
            if not path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            if not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable")
        else:
            parent = next(p for p in path.parents if p.exists())
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{parent} is not a directory")
            os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".ptft-probe-"))
    except (OSError, ValueError) as e:
        return e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return None


def _check_output_dir(overrides: Sequence[str], multirun: bool) -> None:
    """hydra.run.dir (hydra.sweep.dir with -m), up to its first interpolation, can be created and written:
    else one line now, not Hydra's traceback when it makes the job's directory."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [o.split("=", 1)[1] for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") == key]
    value = given[-1] if given else ("multirun/" if multirun else "outputs/")
    static = value.split("${", 1)[0]
    path = Path(os.path.expanduser(static or "."))
    if "${" in value and not static.endswith("/"):
        path = path.parent
    why = unwritable_dir(path if path.is_absolute() else Path.cwd() / path)
    if why:
        raise ConfigError(f"{key}={value}: cannot create or write {path} ({why}); choose a writable directory")


def record_run_dir(path: Path) -> None:
    """Inside a Hydra job: append the run directory to <job output dir>/run_dir.txt (read by
    ptft-aggregate to link a sweep job to its run, also when the job is killed later)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        out = Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return
    from ptft.train.store import atomic_write_text, move_aside

    ptr = out / "run_dir.txt"
    try:
        lines = ptr.read_text().splitlines() if os.path.lexists(ptr) else []
    except (OSError, ValueError) as e:  # not text (UnicodeDecodeError), a directory, unreadable
        print(f"[ptft] {ptr} is damaged ({type(e).__name__}); moved to {move_aside(ptr).name}", flush=True)
        lines = []
    if str(Path(path).resolve()) not in lines:
        atomic_write_text(ptr, "".join(ln + "\n" for ln in [*lines, str(Path(path).resolve())]))


def fail(msg: str, code: int = 2) -> None:
    print(f"ptft: error: {' '.join(str(msg).split())}", file=sys.stderr, flush=True)
    sys.exit(code)


# ---- each app's own presets and groups ----------------------------------------------------------------
# config name -> (console script, its config groups, the folders experiment/<track>/ of its presets)
APPS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "dln": ("ptft-dln", ("experiment",), ("dln",)),
    "pretrain": ("ptft-pretrain", ("data", "model", "experiment"), ("vision", "digits", "arith")),
    "finetune": ("ptft-finetune", ("data", "model", "experiment"), ("vision", "digits", "arith")),
}


def presets(config_name: Optional[str] = None) -> list[str]:
    """The presets `<track>/<name>` (conf/experiment/<track>/<name>.yaml) of an app, or of every app."""
    tracks = APPS[config_name][2] if config_name else {t for a in APPS.values() for t in a[2]}
    return sorted(f"{t}/{p.stem}" for t in tracks for p in (conf_dir() / "experiment" / t).glob("*.yaml"))


def _owner(track: Optional[str] = None, group: Optional[str] = None) -> str:
    """The console script(s) whose presets include experiment/<track>/ or whose configs have the group."""
    return " and ".join(script for script, groups, tracks in APPS.values() if track in tracks or group in groups)


def check_scope(config_name: str, overrides: Sequence[str]) -> None:
    """ConfigError naming the app that owns a preset or group picked for another app (before Hydra
    composes anything), and the install hint when hydra/launcher=slurm lacks its plugin."""
    import importlib.util

    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = {"hydra/launcher", *(g for a in APPS.values() for g in a[1])}
    overrides = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in keys]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides) if overrides else []
    except Exception:
        return  # composition reports bad syntax
    script, groups, tracks = APPS.get(config_name, (f"ptft-{config_name}", (), ()))
    for o in parsed:
        key = o.key_or_group
        try:
            values = [str(v) for v in (o.sweep_string_iterator() if o.is_sweep_override() else [o.value()])]
        except Exception:
            continue
        if key == "hydra/launcher" and any(v in ("slurm", "submitit_slurm", "submitit_local") for v in values) \
                and importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
            raise ConfigError("hydra/launcher=slurm needs the SLURM extra: pip install 'ptft[slurm]' (submitit and "
                              "hydra-submitit-launcher)")
        if config_name not in APPS or o.is_delete():
            continue
        if key != "experiment":
            if key not in groups and _owner(group=key):
                raise ConfigError(f"{key}={values[0]} belongs to {_owner(group=key)}, not {script}")
            continue
        own = presets(config_name)
        for v in values:
            if v in own or v == "None":
                continue
            track = v.split("/")[0]
            if "/" in v and track not in tracks and _owner(track=track):
                raise ConfigError(f"experiment={v} belongs to {_owner(track=track)}, not {script} (`{script} --help` "
                                  f"lists its presets)")
            moved = [p for p in presets() if v == p.split("/", 1)[1]  # a name of before the track folders
                     or sorted(v.split("_")) == sorted(p.replace("/", "_").split("_"))]
            if moved:
                raise ConfigError(f"experiment={v}: presets are grouped by track; did you mean experiment={moved[0]} "
                                  f"(of {_owner(track=moved[0].split('/')[0])})?")
            raise ConfigError(f"experiment={v}: no such preset; {script}'s presets are {', '.join(own)}")


def help_groups(config_name: str) -> str:
    """`group: options` lines of an app's own config groups, for its --help (conf/hydra/help/ptft.yaml)."""
    from hydra.core.global_hydra import GlobalHydra

    lines = []
    for g in APPS.get(config_name, ("", (), ()))[1]:
        if g == "experiment":
            opts = presets(config_name)
        elif GlobalHydra.instance().is_initialized():
            opts = GlobalHydra.instance().config_loader().get_group_options(g)
        else:
            opts = [p.stem for p in (conf_dir() / g).glob("*.yaml")]
        lines.append(f"{g}: {', '.join(sorted(opts))}")
    return "\n".join(lines)


if not OmegaConf.has_resolver("ptft_app"):
    OmegaConf.register_new_resolver("ptft_app", lambda name: APPS.get(name, (f"ptft-{name}",))[0])
    OmegaConf.register_new_resolver("ptft_groups", help_groups)


# ---- what a config needs in the ConfigStore before it is composed (e.g. the tracks' schemas) ------------
LOADERS: dict[str, Callable[[], None]] = {}
_LOADED: set[str] = set()


def register_loader(config_name: str, fn: Callable[[], None]) -> None:
    """`fn()` registers what conf/<config_name>.yaml needs in the ConfigStore; it runs once, before the
    config's first composition (so a pipeline need not import its tracks to be imported)."""
    LOADERS[config_name] = fn
    _LOADED.discard(config_name)


def load(config_name: str) -> None:
    if config_name not in _LOADED and config_name in LOADERS:
        LOADERS[config_name]()
        _LOADED.add(config_name)


# ---- validation: compose + the pipeline's validate, the same in-process and on the command line -----
VALIDATORS: dict[str, Callable[[DictConfig], None]] = {}


def register_validator(config_name: str, fn: Callable[[DictConfig], None]) -> None:
    """`fn(cfg)` raises ConfigError for a bad config of conf/<config_name>.yaml (run before any compute)."""
    VALIDATORS[config_name] = fn


def explain(e: BaseException) -> str:
    """One line naming the key, from a Hydra / OmegaConf composition error."""
    from omegaconf.errors import OmegaConfBaseException

    from hydra.errors import OverrideParseException

    parts, seen, keyed = [], set(), False
    if isinstance(e, OverrideParseException):
        parts.append(f"cannot parse the override {e.override!r}")
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            if keyed:
                break
            msg, keyed = f"{e.full_key}: {msg or type(e).__name__}", True
        if msg and msg != "None" and "$VALUE" not in msg and msg not in parts:
            parts.append(msg)
        e = e.__cause__ or e.__context__
    return " ".join("; ".join(parts).split()) or "invalid configuration"


def check_numbers(node: Any, prefix: str = "") -> None:
    """Every float of a config is finite and every integer fits in 64 bits (ConfigError naming the key)."""
    items = node.items() if hasattr(node, "items") else enumerate(node) if isinstance(node, (list, tuple)) else None
    if items is None:
        if isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(f"{prefix}={node} must be a finite number")
        if isinstance(node, int) and not isinstance(node, bool) and not -(2**63) <= node < 2**63:
            raise ConfigError(f"{prefix}={node} is out of range (a 64-bit integer)")
        return
    if not hasattr(node, "items"):  # ListConfig / list
        items = enumerate(list(node))
    for k, v in items:
        check_numbers(v, f"{prefix}.{k}" if prefix and not isinstance(k, int) else
                      f"{prefix}[{k}]" if isinstance(k, int) else str(k))


_BASES: dict[tuple, Any] = {}


def _base(config_name: str, structural: tuple[str, ...]) -> DictConfig:
    """The composed config of the group choices (cached, failures too: a bad group fails the same way)."""
    key = (str(conf_dir()), config_name, structural)
    if key not in _BASES:
        if len(_BASES) > 64:
            _BASES.clear()
        try:
            _BASES[key] = compose(config_name, list(structural))
        except Exception as e:
            _BASES[key] = e
    if isinstance(_BASES[key], Exception):
        raise _BASES[key]
    return _BASES[key]


def _is_structural(o: Any) -> bool:
    """A group choice (experiment=x, hydra/launcher=y), a package override or a hydra.* key."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.object_type import ObjectType

    key = o.key_or_group
    return ("/" in key or "@" in o.input_line.split("=", 1)[0] or key == "hydra" or key.startswith("hydra.")
            or (conf_dir() / key).is_dir() or ConfigStore.instance().get_type(key) == ObjectType.GROUP)


def compose_fast(config_name: str, overrides: Optional[Sequence[str]] = None) -> DictConfig:
    """compose(), with the config of the group choices cached and the key=value overrides applied by
    Hydra's own override code: the same config (or the same error) in milliseconds instead of ~0.1 s."""
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException

    load(config_name)
    parsed = OverridesParser.create().parse_overrides(list(overrides or []))
    for o in parsed:
        if o.is_sweep_override():
            raise ConfigCompositionException(f"Ambiguous value for argument '{o.input_line}': a sweep needs "
                                             f"--multirun (-m)")
    values = [o for o in parsed if not _is_structural(o)]
    cfg = copy.deepcopy(_base(config_name, tuple(o.input_line for o in parsed if _is_structural(o))))
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    return cfg


def check_keys(node: Any, prefix: str = "") -> None:
    """No key outside the schema: `+dln.foo=1` is accepted by Hydra (it opens the struct flag) and
    would be silently ignored. Keys of free-form dicts (Dict[str, float] fields) are allowed."""
    import dataclasses

    from omegaconf import ListConfig

    if isinstance(node, DictConfig):
        typ = OmegaConf.get_type(node)
        fields = {f.name for f in dataclasses.fields(typ)} if dataclasses.is_dataclass(typ) else None
        for k in node.keys():
            key = f"{prefix}.{k}" if prefix else str(k)
            if fields is not None and k not in fields:
                raise ConfigError(f"{key}: unknown key (not in {typ.__name__}); check its spelling")
            if prefix == "" and k == "hydra":
                continue
            check_keys(node._get_node(k), key)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            check_keys(node._get_node(i), f"{prefix}[{i}]")


def check(config_name: str, overrides: Optional[Sequence[str]] = None) -> DictConfig:
    """compose + the pipeline's validator: the config a command line gives, or ConfigError (one line)."""
    check_scope(config_name, overrides or [])
    try:
        cfg = compose_fast(config_name, overrides)
    except ConfigError:
        raise
    except Exception as e:  # Hydra / OmegaConf: unknown key or group, wrong type, bad override syntax
        raise ConfigError(explain(e)) from None
    check_keys(cfg)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation that does not resolve
        raise ConfigError(explain(e)) from None
    check_numbers({k: v for k, v in plain.items() if k != "hydra"})
    fn = VALIDATORS.get(config_name)
    if fn is not None:
        fn(cfg)
    return cfg


_FLAG_ONLY = ("help", "hydra_help", "version", "cfg", "info", "shell_completion", "config_path", "config_name",
              "config_dir", "experimental_rerun")
MAX_PRECHECK = 256  # sweep combinations checked one by one; larger sweeps check each value on its own


def precheck(config_name: str, argv: Sequence[str]) -> None:
    """Validate the command line's config(s) before Hydra starts any job: every combination of a
    multirun sweep (or each swept value on its own, for large sweeps), including sweeps from an
    experiment preset's hydra.sweeper.params. Flags such as --help or --cfg are left to Hydra."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        args = get_args_parser().parse_args(list(argv))
    except SystemExit:
        return  # Hydra reports its own usage errors
    check_scope(config_name, args.overrides)  # also before --help / --cfg, which compose the config too
    if any(getattr(args, f, None) for f in _FLAG_ONLY):
        return
    overrides = list(args.overrides)
    if not args.multirun:
        _check_store(check(config_name, overrides))
        _check_output_dir(overrides, False)
        return
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        preset = _sweeper_params(config_name, [o.input_line for o in parsed if not o.is_sweep_override()])
        given = {o.get_key_element() for o in parsed}
        parsed += OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in preset.items() if k not in given])
        choices = [[o.input_line] if not o.is_sweep_override() else
                   [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(explain(e)) from None
    n = math.prod(len(c) for c in choices)
    if n <= MAX_PRECHECK:
        combos: Any = itertools.product(*choices)
    else:
        first = [c[0] for c in choices]
        combos = ([*first[:i], v, *first[i + 1:]] for i, c in enumerate(choices) for v in c)
    for combo in combos:
        _check_store(check(config_name, list(combo)))
    _check_output_dir(overrides, True)


def _check_store(cfg: DictConfig) -> None:
    if OmegaConf.select(cfg, "store.root", default=None) is not None:
        store_root(cfg)


def _sweeper_params(config_name: str, overrides: list[str]) -> dict[str, str]:
    """hydra.sweeper.params of the composed config (an experiment preset's sweep)."""
    from hydra import compose as _compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    load(config_name)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        try:
            cfg = _compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        except Exception as e:
            raise ConfigError(explain(e)) from None
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    return {str(k): str(v) for k, v in params.items()} if params else {}


def entry(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Decorate `fn(cfg)` into a Hydra main over conf/<config_name>.yaml."""

    def deco(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        import hydra

        @functools.wraps(fn)
        def task(cfg: DictConfig) -> Any:
            from ptft.train.store import StoreError
            from ptft.train.trainer import Preempted

            try:
                return fn(cfg)
            except ConfigError as e:
                fail(str(e))
            except StoreError as e:
                fail(str(e), code=1)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise
                fail(f"cannot write {e.filename or 'a file'}: {e.strerror}; free space and rerun the same "
                     f"command to resume", code=1)
            except Preempted as e:
                print(f"ptft: {e}; rerun the same command to resume", file=sys.stderr, flush=True)
                sys.exit(128 + e.signum)

        @functools.wraps(fn)
        def cli() -> Any:
            try:  # conf_dir() here, not at import: a broken install ends with one line too
                hydra_main = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)(task)
                load(config_name)
                precheck(config_name, sys.argv[1:])
            except ConfigError as e:
                fail(str(e))
            return hydra_main()

        return cli

    return deco


def compose(config_name: str, overrides: Optional[Sequence[str]] = None) -> DictConfig:
    """The config a command line would give, built in-process (no Hydra run directory)."""
    from hydra import compose as _compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    load(config_name)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        return _compose(config_name=config_name, overrides=list(overrides or []))
