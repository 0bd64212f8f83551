"""Checks on the directories a command writes to, made before any work so that no result is lost."""

from __future__ import annotations

import tempfile
from pathlib import Path


def check_writable_directory(path: str | Path, *, label: str | None = None, create: bool = True) -> Path:
    """Make sure files can be written in directory ``path``, before anything is computed for it.

    Parameters
    ----------
    path : str or Path
        The directory.
    label : str, optional
        How the user named it (``--out``, ``RUN_DIR``); messages start with it.
    create : bool, default True
        Whether ``path`` may be missing (it is then created later, under its nearest existing ancestor,
        which must be a writable directory). Nothing is created here.

    Returns
    -------
    Path

    Raises
    ------
    NotADirectoryError
        If ``path`` (or, when it is missing, an ancestor) is an existing file.
    FileNotFoundError
        If ``path`` is missing and ``create`` is false.
    PermissionError
        If a file cannot be created there (read-only directory or file system, no permission); the
        probe file is removed at once.
    """
    path = Path(path).expanduser()
    prefix = f"{label} {path}" if label else str(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{prefix}: is a file, not a directory")
    existing = path
    while not existing.exists():
        if not create:
            raise FileNotFoundError(f"{prefix}: directory does not exist")
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{prefix}: {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".lpc_geom_write_probe."):
            pass
    except OSError as exc:
        where = "" if existing == path else f" (in {existing}, where it would be created)"
        raise PermissionError(f"{prefix}: cannot write files here{where}: {exc.strerror or exc}") from exc
    return path
