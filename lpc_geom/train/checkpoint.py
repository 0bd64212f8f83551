"""Run files: atomic writes that honour the umask, and reads that never execute code from a file.

Writes go to a temporary file in the same directory, are fsynced and renamed over the target, so a crash
while writing never replaces the last good file (``durable=False`` leaves the fsync out: the rename still
protects against a crash of the process, not against one of the machine; the trainer's per-epoch progress
files, whose durable copy is the next checkpoint, are written so); a signal whose Python handler would run
during a write (submitit's requeue handler exits the process from wherever it lands) is delivered right
after it.
Checkpoints are read with ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists and dicts
only), archives with ``numpy.load(allow_pickle=False)``: a file that holds anything else, or that is
truncated, is refused with a :class:`RunFileError` naming it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpc_geom.train.signals import signals_deferred


class RunFileError(ValueError):
    """A run file could not be read safely; the message names the file and says it was not loaded."""


class UnsafeFileError(RunFileError):
    """A run file holds objects other than tensors, numbers, strings, lists and dicts (it was not loaded)."""


def temporary_name(path: Path) -> Path:
    """The temporary file a write of ``path`` goes through (``.NAME.<random>.tmp`` in the same directory)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _atomic_write(path: Path, write, durable: bool = True) -> None:
    with signals_deferred():
        _write_and_rename(path, write, durable)


def _write_and_rename(path: Path, write, durable: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    # os.open with mode 0o666: the kernel applies the umask, like any other tool's files (mkstemp makes 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``."""
    _atomic_write(Path(path), lambda handle: torch.save(state, handle))


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's go on for a paragraph)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0].split(". ")[0].rstrip(".") if lines else type(exc).__name__


def _refused_global(exc: BaseException) -> str | None:
    """What a ``weights_only`` load refused (``GLOBAL posix.system``), or None when it refused nothing."""
    text = str(exc)
    if "Weights only load failed" not in text:
        return None
    found = re.search(r"GLOBAL (\S+)", text)
    return f"a reference to {found.group(1)}" if found else "an object that is not a tensor, number or string"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without executing code from it.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    UnsafeFileError
        The file holds objects other than tensors, numbers, strings, lists and dicts (a pickled object
        whose loading would run code, a class of another program); nothing of it was loaded.
    RunFileError
        The file is truncated, corrupt, or not a checkpoint (not a dict).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(exc)
        if refused is not None:
            raise UnsafeFileError(
                f"{path}: refused, not loaded: it holds {refused}, and lpc_geom checkpoints hold only tensors, "
                f"numbers, strings, lists and dicts (loading it could run code from the file)") from None
        raise RunFileError(f"{path}: not loaded: not a readable checkpoint ({_first_line(exc)}); "
                           f"it may be truncated or corrupt") from None
    except Exception as exc:  # torch reports truncation as RuntimeError, EOFError, zip errors, ...
        raise RunFileError(f"{path}: not loaded: not a readable checkpoint ({type(exc).__name__}: "
                           f"{_first_line(exc)}); it may be truncated or corrupt") from None
    if not isinstance(state, dict):
        raise RunFileError(f"{path}: not loaded: expected a checkpoint dict, found {type(state).__name__}")
    return state


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, read with ``allow_pickle=False`` (object arrays are refused)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UnsafeFileError(f"{path}: refused, not loaded: it holds pickled object arrays, and lpc_geom "
                                  f"archives hold only numeric arrays (loading it could run code)") from None
        raise RunFileError(f"{path}: not loaded: not a readable .npz archive ({_first_line(exc)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise RunFileError(f"{path}: not loaded: not a readable .npz archive ({type(exc).__name__}: "
                           f"{_first_line(exc)}); it may be truncated or corrupt") from None


def read_json(path: str | Path) -> Any:
    """The JSON value in ``path``; a file that is not JSON is a :class:`RunFileError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFileError(f"{path}: not loaded: not valid JSON ({_first_line(exc)}); "
                           f"it may be truncated or corrupt") from None


def write_bytes(data: bytes, path: str | Path, *, durable: bool = True) -> None:
    """Atomically replace ``path`` with ``data`` (fsynced before the rename unless ``durable`` is False)."""
    _atomic_write(Path(path), lambda handle: handle.write(data), durable)


def write_text(text: str, path: str | Path, *, durable: bool = True) -> None:
    write_bytes(text.encode(), path, durable=durable)


def write_json(obj: Any, path: str | Path, *, durable: bool = True) -> None:
    """Atomically write ``obj`` as indented JSON (``durable`` as in :func:`write_bytes`)."""
    write_text(json.dumps(obj, indent=2, default=float), path, durable=durable)
