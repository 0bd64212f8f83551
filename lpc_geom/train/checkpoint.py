"""Atomic checkpoints: a crash while writing never replaces the last good file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``."""
    _atomic_write(Path(path), lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; start a new run without --resume")
    return torch.load(path, map_location=map_location, weights_only=False)


def write_bytes(data: bytes, path: str | Path) -> None:
    """Atomically replace ``path`` with ``data``."""
    _atomic_write(Path(path), lambda handle: handle.write(data))


def write_text(text: str, path: str | Path) -> None:
    write_bytes(text.encode(), path)


def write_json(obj: Any, path: str | Path) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(json.dumps(obj, indent=2, default=float), path)
