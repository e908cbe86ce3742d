"""Atomic file writes and locks: a crash mid-write never leaves a half-written file
behind, and concurrent read-modify-write updates of one file never lose an entry.

Files are created with the permissions of an ordinary ``open()`` (0666 minus the
user's umask) even though they are written to a private temporary name first.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_default(path: str | os.PathLike, directory: bool = False) -> None:
    """What open()/mkdir() would have given: 0666/0777 minus the umask (mkstemp uses 0600)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.exists(tmp):
            _chmod_default(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def locked(path: str | os.PathLike, timeout: float = 120.0) -> Iterator[None]:
    """Hold an exclusive lock for ``path`` (a ``.lock`` file beside it) across processes:
    wrap a read-modify-write of a shared file in it."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(f".{path.name}.lock")), timeout=timeout)
    try:
        with lock:
            yield
    except Timeout:
        raise TimeoutError(f"another process has held the lock on {path} for over {timeout:.0f} s") from None


def remove_stale_temporaries(folder: str | os.PathLike, name: str) -> int:
    """Delete ``.NAME.*.tmp`` files left in ``folder`` by writes that were killed; returns
    how many. Only call it where no other process is writing ``name``."""
    removed = 0
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        try:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_depth(text: str | bytes) -> int:
    """The deepest bracket nesting of a JSON text, strings skipped (no recursion, so any
    depth is measured safely before the parser sees it)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    depth = deepest = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def parse_json(text: str | bytes, source: str, max_depth: int | None = None) -> Any:
    """Parse JSON from a file or request: duplicate keys and nesting deeper than
    ``max_depth`` (the ``json_depth`` limit) are errors naming ``source``, never a crash."""
    from adaptive_exit.limits import limit

    depth_cap = int(limit("json_depth") if max_depth is None else max_depth)
    if json_depth(text) > depth_cap:
        raise ValueError(f"{source}: JSON nested deeper than {depth_cap} levels (limit json_depth)")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:  # a duplicate key
        raise ValueError(f"{source}: malformed JSON ({exc})") from None


def read_json(path: str | os.PathLike, max_bytes: int | None = None) -> Any:
    """A JSON file read within the ``json_file_bytes`` limit; errors name the file."""
    from adaptive_exit.limits import limit

    path = Path(path)
    cap = limit("json_file_bytes") if max_bytes is None else max_bytes
    size = path.stat().st_size
    if size > cap:
        raise ValueError(f"{path}: {size:,} bytes, over the {cap:,}-byte limit for JSON files (limit json_file_bytes)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_json(text, str(path))


def update_json(path: str | os.PathLike, **changes: Any) -> None:
    """Set top-level keys of a JSON file, atomically and under a lock."""
    with locked(path):
        data = read_json(path)
        data.update(changes)
        write_json(path, data)


def save_model_folder(path: str | os.PathLike, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """``path/model.safetensors`` (weights) and ``path/config.json`` (meta), each atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_with(path / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    write_json(path / "config.json", meta)


def read_model_folder(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(meta, weights) of a folder written by :func:`save_model_folder`; names a missing file."""
    from safetensors.torch import load_file

    path = Path(path)
    config_file, weights = path / "config.json", path / "model.safetensors"
    for f in (config_file, weights):
        if not f.is_file():
            raise FileNotFoundError(f"model file missing: {f}")
    meta = read_json(config_file)
    try:
        return meta, load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - SafetensorError: truncated, corrupt, absurd header
        raise ValueError(f"{weights}: not a readable safetensors file ({' '.join(str(exc).split())[:200]})") from None


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a safetensors file declares, read from its header only (nothing is
    loaded); a corrupt or absurd header is a ValueError naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise ValueError(f"{path}: not a readable safetensors file ({' '.join(str(exc).split())[:200]})") from None


def check_weights_fit(build_on_meta: Callable[[], torch.nn.Module], shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Before any real allocation: build the model a config describes on the meta device and
    check it against the weights file's shapes and the ``model_parameters`` limit, so a
    config claiming a huge model is refused instead of allocated."""
    from .limits import limit

    try:
        with torch.device("meta"):
            probe = build_on_meta()
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{source}: the config does not describe a model that can be built ({' '.join(str(exc).split())[:200]})") from None
    count, cap = sum(p.numel() for p in probe.parameters()), int(limit("model_parameters"))
    if count > cap:
        raise ValueError(f"{source}: the config describes {count:,} parameters, over the limit of {cap:,} (limit model_parameters)")
    for name, tensor in probe.state_dict().items():
        if name in shapes and tuple(tensor.shape) != tuple(shapes[name]):
            raise ValueError(f"{source}: the config gives {name} the shape {tuple(tensor.shape)}, the weights file "
                             f"holds {tuple(shapes[name])}")


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomically create ``path`` with ``writer(tmp_path)``."""
    with atomic_path(path) as tmp:
        writer(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _chmod_default(tmp, directory=True)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
