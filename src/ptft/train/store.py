"""Run store: one directory per run, named by a hash of the resolved scientific config.

Layout of a run directory `<root>/<stage>/<hash>/`:
    config.yaml     the resolved config of the job that made it (all keys, scientific or not)
    metrics.jsonl   one JSON object per logged step
    checkpoint.pt   the trainer's last checkpoint (tensors and plain containers only)
    result.json     written once, atomically, when the run ends: its presence means "finished"
Every write goes to a temporary file in the same directory and is renamed into place; a write that
fails (no space left, quota, read-only disk) leaves the previous file intact and raises StoreError
naming the file.

Damaged files are never served and never deleted: a result.json or config.yaml that cannot be read,
a result.json that fails its stage's schema (`result_problem`: required keys and their types, every
metric a number), a config.yaml with YAML aliases or over MAX_YAML_BYTES (`load_yaml`),
that belongs to another run (its hash), or whose run's artifacts (model.pt, pt_state.pt, checked
against the sha256s recorded in result.json) are missing or changed, is renamed
`<name>.damaged-<n>` with one line saying why, and the run counts as unfinished (so it runs again).
Checkpoints carry their own sha256 and the trainer keeps the previous one (checkpoint.prev.pt)
until the next is written (see `write_checkpoint` / `read_checkpoint`).

Every result.json gets a `provenance` dict (see `provenance()`): what made it and when.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import platform
import re
import socket
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import filelock
import yaml

RESULT, CONFIG, CHECKPOINT, METRICS = "result.json", "config.yaml", "checkpoint.pt", "metrics.jsonl"
_PROCESS_START = time.time()
_HASH_LINE = "# ptft run "  # first line of config.yaml: the run's hash


class StoreError(RuntimeError):
    """A file of the run store could not be written (disk full, quota, read-only, permissions)."""


class DamagedFile(RuntimeError):
    """A stored file could not be read back (truncated, corrupted, wrong format)."""


def run_hash(sci: dict[str, Any], length: int = 12) -> str:
    """A run's identity (its directory name, result tables' run_hash): a stable hash of its (nested, JSON-able)
    scientific config; key order does not matter."""
    text = json.dumps(sci, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = _write_temp(path, data)  # makes the directory (a StoreError if it cannot)
    try:
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _store_error(path, e) from None


def _write_temp(path: Path, data: bytes) -> str:
    """`data` in a fsynced temporary file beside `path` (removed again if anything fails)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _store_error(path, e) from None
        raise


def _store_error(path: Path, e: OSError) -> StoreError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why, fix = "no space left on device", "free space and rerun the same command to resume"
    elif e.errno == errno.EISDIR:
        why, fix = "it is a directory", "give a file name"
    elif e.errno in (errno.EEXIST, errno.ENOTDIR):
        why, fix = "a file stands where one of its directories should be", "choose another path"
    else:  # a read-only file system, no permission, ...
        why, fix = e.strerror or str(e), "make it writable (or choose another path) and rerun the same command"
    return StoreError(f"cannot write {path}: {why}; the previous {Path(path).name} (if any) is intact: {fix}")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def move_aside(path: Path) -> Path:
    """Rename a damaged file to `<name>.damaged-<n>` (kept for inspection, never deleted). If another
    process moved it first, returns the name it would have had."""
    path = Path(path)
    n = 1
    while path.with_name(f"{path.name}.damaged-{n}").exists():
        n += 1
    aside = path.with_name(f"{path.name}.damaged-{n}")
    try:
        os.link(path, aside)  # never overwrites an earlier damaged copy (fails if `aside` appeared meanwhile)
        path.unlink()
    except FileExistsError:
        return move_aside(path)
    except FileNotFoundError:
        pass
    except OSError:  # no hard links on this filesystem
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            pass
    return aside


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- what may be served ---------------------------------------------------------------------------
_NUMBER, _INT, _TEXT = "a number", "an integer", "a non-empty string"
RESULT_SCHEMAS: dict[str, dict[str, str]] = {  # stage -> keys every result.json has (a batched job: each member)
    "dln": {"status": _TEXT, "steps": _INT, "train_mse": _NUMBER, "test_mse": _NUMBER},
    "pretrain": {"status": _TEXT, "steps": _INT, "epochs": _INT, "train_loss": _NUMBER},
    "finetune": {"status": _TEXT, "steps": _INT, "epochs": _INT, "train_loss": _NUMBER, "n_ft": _INT, "seed": _INT},
}
_METRIC = re.compile(r"(^|[_/])(mse|loss|acc|l1|drift)($|[_/])|^diag/")  # any such key: a number (or null)


def _is(v: Any, kind: str) -> bool:
    if kind == _TEXT:
        return isinstance(v, str) and v != ""
    if isinstance(v, bool):
        return False
    return isinstance(v, int) if kind == _INT else isinstance(v, (int, float))


def result_problem(stage: str, res: Any, complete: bool = True) -> Optional[str]:
    """Why a result.json of `stage` must not be served (a required key missing, a value of the wrong type,
    a metric that is not a number), or None if it is valid (RESULT_SCHEMAS; other stages: a status).
    complete=False (listing results, e.g. ptft-aggregate): only `status` is required, present keys typed."""
    if not isinstance(res, dict):
        return f"holds a {type(res).__name__}, not an object"
    schema = RESULT_SCHEMAS.get(stage, {"status": _TEXT})
    rows: list[tuple[str, Any, dict[str, str]]] = [("", res, schema)]
    if "members" in res:  # a batched job: the members carry the per-run keys
        members = res["members"]
        if not isinstance(members, list) or not members:
            return "members is not a non-empty list"
        rows = [("", res, {"status": _TEXT}), *((f"members[{i}].", m, schema) for i, m in enumerate(members))]
    for where, row, keys in rows:
        if not isinstance(row, dict):
            return f"{where[:-1]} is not an object"
        for k, kind in keys.items():
            if k not in row:
                if complete or k == "status":
                    return f"{where}{k} is missing"
                continue
            if not _is(row[k], kind):
                return f"{where}{k}={str(json.dumps(row[k], default=str))[:40]} is not {kind}"
        for k, v in row.items():
            if _METRIC.search(k) and v is not None and not _is(v, _NUMBER):
                return f"{where}{k}={str(json.dumps(v, default=str))[:40]} is not a number"
    prov = res.get("provenance", {})
    if not isinstance(prov, dict) or not isinstance(prov.get("files", {}), dict) or not all(
            isinstance(v, str) for v in prov.get("files", {}).values()):
        return "provenance is not an object with a files object of sha256s"
    return None


MAX_YAML_BYTES = 1 << 20  # a stored config is a few kB


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader without aliases: a few lines of nested aliases (a 'billion laughs') expand to
    gigabytes in safe_load. ptft never writes aliases (OmegaConf.to_yaml does not emit them)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError(f"YAML aliases are not allowed (line {self.peek_event().start_mark.line + 1})")
        return super().compose_node(parent, index)


def load_yaml(path: Path) -> Any:
    """A stored YAML file (config.yaml, .hydra/*.yaml) read safely: at most MAX_YAML_BYTES, no aliases, no
    tags. Raises OSError, ValueError (too large, undecodable) or yaml.YAMLError."""
    with open(path, "rb") as f:
        data = f.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        raise ValueError(f"larger than {MAX_YAML_BYTES} bytes: not a config")
    return yaml.load(data.decode("utf-8"), Loader=_NoAliasLoader)


# ---- checkpoints ---------------------------------------------------------------------------------
def previous_checkpoint(path: Path) -> Path:
    """checkpoint.pt -> checkpoint.prev.pt (the one before the last)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _keep_previous(path: Path) -> None:
    """Make the current checkpoint also checkpoint.prev.pt without a moment in which checkpoint.pt is
    missing (a hard link, then a rename over the old previous one); a rename where links are unsupported."""
    prev = previous_checkpoint(path)
    link = prev.with_name(f".{prev.name}.link.tmp")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
    except OSError:
        os.replace(path, prev)
        return
    os.replace(link, prev)


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (tensors, plain containers) with its own sha256; the checkpoint it replaces is
    kept as checkpoint.prev.pt, so a damaged newest one still leaves one to resume from."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    outer = io.BytesIO()
    torch.save({"ptft_checkpoint": 1, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, outer)
    path = Path(path)
    tmp = _write_temp(path, outer.getvalue())
    try:
        if path.exists():
            _keep_previous(path)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _store_error(path, e) from None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state written by write_checkpoint (or a plain torch.save dict); DamagedFile if unreadable."""
    import torch

    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(st, dict) and "ptft_checkpoint" in st:
            payload = st["payload"].numpy().tobytes()
            if hashlib.sha256(payload).hexdigest() != st["sha256"]:
                raise DamagedFile("its content does not match its sha256")
            st = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except DamagedFile:
        raise
    except Exception as e:  # truncated zip, bad pickle, ...: torch raises many types
        raise DamagedFile(f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}") from None
    if not isinstance(st, dict):
        raise DamagedFile(f"holds a {type(st).__name__}, not a checkpoint dict")
    return st


# ---- provenance ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _git_state() -> tuple[Optional[str], Optional[bool]]:
    """(commit, dirty) of the source tree this package runs from, or (None, None) if not a git checkout."""
    import ptft

    root = Path(ptft.__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None, None
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=20, check=True).stdout
        commit = run("rev-parse", "HEAD").strip()
        dirty = bool(run("status", "--porcelain", "--untracked-files=no").strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def provenance(run_hash: str, started: float, device: Optional[str]) -> dict[str, Any]:
    """What made a result: suite, source commit, torch/CUDA, device, host, times."""
    import torch

    import ptft

    commit, dirty = _git_state()
    end = time.time()
    dev = str(device) if device else "cpu"
    gpu = None
    if dev.startswith("cuda") and torch.cuda.is_available():
        try:
            gpu = torch.cuda.get_device_name(torch.device(dev))
        except Exception:
            gpu = None
    return {"ptft_version": ptft.__version__, "git_commit": commit, "git_dirty": dirty,
            "torch": torch.__version__, "cuda": torch.version.cuda, "device": dev, "gpu": gpu,
            "python": platform.python_version(), "host": socket.gethostname(), "run_hash": run_hash,
            "start": _iso(started), "end": _iso(end), "wall_s": round(end - started, 3)}


def _artifacts(path: Path) -> list[Path]:
    """Files a finished run serves besides result.json: its .pt files that are not checkpoints."""
    return sorted(p for p in path.glob("*.pt") if p.is_file() and not p.name.startswith("checkpoint"))


class RunDir:
    """A run's directory in the store. Creating the object creates nothing on disk."""

    def __init__(self, root: str | Path, stage: str, sci: dict[str, Any]):
        self.sci = sci
        self.run_hash = run_hash(sci)
        self.path = Path(root) / stage / self.run_hash
        self.started: Optional[float] = None
        self._config: dict[str, Any] = {}

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def finished(self) -> bool:
        """True if the run has a readable result.json of this run whose artifacts are intact. A damaged
        result (or config.yaml, or artifact) is moved aside with one line and the run counts as unfinished."""
        if not self._is_dir() or not self.file(RESULT).exists():
            return False
        why, bad = self.damage()
        if why is None:
            return True
        moved = [move_aside(p).name for p in [self.file(RESULT), *bad]]
        print(f"[ptft] {self.path}: {why}; moved aside ({', '.join(moved)}); the run is unfinished and runs again",
              flush=True)
        return False

    def _is_dir(self) -> bool:
        """Whether the run directory exists; something else in its place (a file) is moved aside."""
        if self.path.is_dir():
            return True
        if os.path.lexists(self.path):
            print(f"[ptft] {self.path} is not a directory; moved to {move_aside(self.path).name}; the run starts "
                  f"over", flush=True)
        return False

    def damage(self) -> tuple[Optional[str], list[Path]]:
        """(why the stored result cannot be served, the files besides result.json to move aside) or (None, [])."""
        try:
            res = json.loads(self.file(RESULT).read_bytes())
        except (OSError, ValueError) as e:
            return f"result.json is unreadable ({type(e).__name__}: {str(e)[:100]})", []
        problem = result_problem(self.path.parent.name, res)
        if problem:
            return f"result.json is invalid ({problem})", []
        prov = res.get("provenance") if isinstance(res.get("provenance"), dict) else {}
        if prov.get("run_hash") not in (None, self.run_hash):
            return f"result.json belongs to run {prov['run_hash']}, not {self.run_hash}", []
        cfg = self.file(CONFIG)
        if cfg.exists():
            try:
                if not isinstance(load_yaml(cfg), dict):
                    raise ValueError("not a mapping")
                first = cfg.read_bytes()[:200].decode(errors="replace").split("\n", 1)[0]
            except Exception as e:  # OSError, UnicodeError, yaml.YAMLError, ...
                return f"config.yaml is unreadable ({type(e).__name__}: {str(e)[:100]})", [cfg]
            if first.startswith(_HASH_LINE) and first[len(_HASH_LINE):].strip() != self.run_hash:
                return f"config.yaml belongs to run {first[len(_HASH_LINE):].strip()}, not {self.run_hash}", [cfg]
        for name, digest in (prov.get("files") or {}).items():
            f = self.file(name)
            if not os.path.lexists(f):
                return f"{name} is missing", []
            try:
                same = f.is_file() and sha256_file(f) == digest
            except OSError:
                same = False
            if not same:
                return f"{name} does not match its sha256 in result.json (damaged)", [f]
        return None, []

    def load_result(self) -> dict[str, Any]:
        return json.loads(self.file(RESULT).read_text())

    def write_result(self, result: dict[str, Any]) -> None:
        """Write result.json, adding `provenance` to `result` (in place): what made it, the sha256 of the
        run's artifacts. Stale previous checkpoints are removed (the run no longer needs them)."""
        prov = provenance(self.run_hash, self.started or _PROCESS_START,
                          result.get("device") or _dig(self._config, "device") or _dig(self._config, "runtime.device"))
        prov["files"] = {p.name: sha256_file(p) for p in _artifacts(self.path)}
        result["provenance"] = prov
        atomic_write_json(self._writable(RESULT), result)
        for p in self.path.glob("checkpoint*.prev.pt"):
            p.unlink(missing_ok=True)

    def write_config(self, yaml_text: str) -> None:
        if self.started is None:
            self.started = time.time()
        try:
            import yaml

            loaded = yaml.safe_load(yaml_text)
            self._config = loaded if isinstance(loaded, dict) else {}
        except Exception:
            self._config = {}
        atomic_write_text(self._writable(CONFIG), f"{_HASH_LINE}{self.run_hash}\n{yaml_text}")

    def _writable(self, name: str) -> Path:
        """The run's file `name`; a directory (or other non-file) in its place is moved aside with one line."""
        path = self.file(name)
        if os.path.lexists(path) and not path.is_file():
            print(f"[ptft] {path} is not a file; moved to {move_aside(path).name}", flush=True)
        return path

    def clear_result(self) -> None:
        """For force=true: forget the checkpoints (the run starts over). result.json and the artifacts stay
        until the new ones replace them, so a rerun that fails loses nothing."""
        for name in (CHECKPOINT, previous_checkpoint(Path(CHECKPOINT)).name):
            self.file(name).unlink(missing_ok=True)

    def lock(self, timeout: float = -1) -> filelock.FileLock:
        """An inter-process lock on this run (a sibling `.lock` file, not inside the run dir)."""
        if self.started is None:
            self.started = time.time()
        self._is_dir()
        return file_lock(Path(str(self.path) + ".lock"), timeout)


def file_lock(path: Path, timeout: float = -1) -> filelock.FileLock:
    """A filelock.FileLock at `path` (its directory made); a directory or other non-file in its place is
    moved aside with one line (it is no lock: nobody can hold it)."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_file():
        print(f"[ptft] the lock {path} is not a file; moved to {move_aside(path).name}", flush=True)
    try:  # a lock file we may not open (another user's store) is never replaced: that would break the lock
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o666))
    except OSError as e:
        raise StoreError(f"cannot open the lock {path} ({e.strerror or e}); it guards this run against "
                         f"concurrent jobs: fix its permissions (or its directory's) and rerun") from None
    return filelock.FileLock(str(path), timeout=timeout)


def _dig(d: dict[str, Any], dotted: str) -> Any:
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d
