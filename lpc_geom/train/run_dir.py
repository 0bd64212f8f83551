"""The run directory: its file layout, its manifest, its lock, and the rules for writing into one.

This module alone knows which files a run consists of. A training holds an exclusive lock on
``run.lock`` while it writes (analyses hold a shared one while they read and write their reports), keeps
``run.json`` (the manifest) up to date, and refuses to write into a directory that holds another run
unless it resumes that run (same config) or was told to overwrite it (every file of the old run is
removed first). Reports cached next to a run record the SHA-256 of the file they were computed from and
count as stale once that file changed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lpc_geom.config import TrainConfig
from lpc_geom.train.checkpoint import read_json, write_json

CONFIG = "config.json"
HISTORY = "history.json"
HISTORY_CSV = "history.csv"
CHECKPOINT = "checkpoint.pt"
LAST_GOOD = "checkpoint_last_good.pt"
LATENTS = "latents.npz"
SUMMARY = "summary.json"
MANIFEST = "run.json"
LOCK = "run.lock"
#: A sweep's record of one run (written by :func:`lpc_geom.experiments.sweep.run_job`).
RECORD = "record.json"
#: Analyzer reports per split (written by :func:`lpc_geom.experiments.runs.analyze_run`).
REPORT_FILES = {"test": "report_test.json", "train": "report_train.json"}
#: Robustness reports per attacked split (written by :func:`lpc_geom.experiments.runs.robustness_run`).
ROBUSTNESS_FILES = {"test": "robustness.json", "train": "robustness_train.json"}

#: Files of a run directory whose training finished.
TRAINED_FILES = (CONFIG, HISTORY, SUMMARY, LATENTS, CHECKPOINT)
#: Files a training writes: a directory holding any of them holds a run.
TRAINING_FILES = (CONFIG, HISTORY, HISTORY_CSV, CHECKPOINT, LAST_GOOD, LATENTS, SUMMARY, MANIFEST)
#: Every file of a run (what ``--overwrite`` removes); the lock file stays, it is not part of a run.
RUN_FILES = (*TRAINING_FILES, *REPORT_FILES.values(), *ROBUSTNESS_FILES.values(), RECORD)

#: Config keys that may differ between a finished run and the sweep job that would reuse it.
REUSABLE_CHANGES = ("progress", "device", "checkpoint_every")
#: Config keys that may differ between a run and its resumption (out_dir: a moved run).
RESUMABLE_CHANGES = (*REUSABLE_CHANGES, "epochs", "out_dir")
#: ... and on a resumption from ``checkpoint_last_good.pt`` after a divergence: a smaller learning rate.
LAST_GOOD_CHANGES = (*RESUMABLE_CHANGES, "lr")

STATUSES = ("running", "finished", "failed", "stopped")


class RunDirError(ValueError):
    """A run directory cannot be written or read as asked; the message names it and says what to do."""


class RunInUseError(RunDirError):
    """Another process holds the run directory's lock (a training writing it, or an analysis reading it)."""


class RunExistsError(RunDirError):
    """The directory holds another run, and neither resuming it nor overwriting it was asked for."""


def config_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any], *,
                       ignore: Sequence[str] = REUSABLE_CHANGES) -> list[str]:
    """The config keys in which a run's saved config differs from ``wanted``, sorted.

    A key either side lacks counts as its :class:`~lpc_geom.config.TrainConfig` default (a key added
    after the run was trained), values compare as their JSON form (a tuple equals the list ``config.json``
    holds), and the keys in ``ignore`` are left out (:data:`REUSABLE_CHANGES` by default; a resumption
    passes :data:`RESUMABLE_CHANGES` or :data:`LAST_GOOD_CHANGES`).
    """
    defaults = TrainConfig().to_dict()
    saved = json.loads(json.dumps({**defaults, **saved}))
    wanted = json.loads(json.dumps({**defaults, **wanted}))
    return sorted(k for k in set(saved) | set(wanted) if k not in ignore and saved.get(k) != wanted.get(k))


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of a config as canonical JSON, without the keys that may change on resume.

    Two configs with the same hash describe the same experiment (a resumption may train it longer).
    """
    kept = {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_files(path: str | Path) -> list[str]:
    """The training files present in ``path`` (empty: the directory holds no run)."""
    path = Path(path)
    return [name for name in TRAINING_FILES if (path / name).exists()]


def temporaries(path: str | Path) -> list[Path]:
    """Temporary files of interrupted atomic writes of run files (``.checkpoint.pt.<random>.tmp``)."""
    path = Path(path)
    return sorted(p for name in RUN_FILES for p in path.glob(f".{name}.*.tmp"))


def remove_run(path: str | Path) -> list[str]:
    """Delete every file of the run in ``path`` (and interrupted writes of them); returns the names removed.

    Files that are not run files (notes, figures of the user's) are left where they are.
    """
    path = Path(path)
    removed = []
    for name in RUN_FILES:
        if (path / name).is_file():
            (path / name).unlink()
            removed.append(name)
    for tmp in temporaries(path):
        tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    return removed


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest ``run.json`` of a run directory, or None (a run written before manifests existed)."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        return None
    manifest = read_json(file)
    if not isinstance(manifest, dict) or manifest.get("status") not in STATUSES:
        raise RunDirError(f"{file}: not a run manifest (expected a JSON object with status one of {STATUSES})")
    return manifest


def check_finished(path: str | Path) -> None:
    """Raise :class:`RunDirError` unless the manifest (when there is one) says the run finished."""
    manifest = read_manifest(path)
    if manifest is None or manifest["status"] == "finished":
        return
    status = manifest["status"]
    hint = {"running": "it is being trained, or its training was killed (resume it with lpc-geom train --resume)",
            "stopped": "its training was stopped (resume it with lpc-geom train --resume)",
            "failed": f"its training failed: {manifest.get('error', 'see its log')}"}[status]
    raise RunDirError(f"{path} is not a finished lpc_geom run: its manifest says {status!r}; {hint}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunLock:
    """``fcntl.flock`` on ``run.lock``: exclusive for a training, shared for an analysis; never waits.

    The exclusive holder writes its PID, host and start time into the lock file, so that a second
    writer's error names it. The kernel releases the lock when its holder dies, however it dies.

    Parameters
    ----------
    path : str or Path
        The run directory (created for an exclusive lock).
    shared : bool, default False
    """

    def __init__(self, path: str | Path, *, shared: bool = False):
        self.path = Path(path)
        self.shared = shared
        self._fd: int | None = None

    def _holder(self, fd: int) -> str:
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            holder = {}
        if "pid" not in holder:
            return "another process"
        return f"pid {holder['pid']} on {holder.get('host', '?')}, since {holder.get('since', '?')}"

    def acquire(self) -> RunLock:
        if not self.shared:
            self.path.mkdir(parents=True, exist_ok=True)
        file = self.path / LOCK
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if self.shared and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOENT):
                return self  # a read-only copy of a run (or none at all): no training can hold this lock
            raise
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            try:  # a shared lock still granted: only analyses hold it, no training
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                readers = True
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                readers = False
            holder = self._holder(fd)
            os.close(fd)
            if readers:
                raise RunInUseError(f"{self.path} is being read by another process (lpc-geom analyze or "
                                    f"robustness); try again when it is done") from None
            raise RunInUseError(f"{self.path} is being written by another training ({holder}); wait for it to "
                                f"finish, stop it, or train into another --out") from None
        if not self.shared:
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            if not self.shared:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunWriter:
    """A training's hold on its run directory: the lock, the refusal rules, the manifest.

    Parameters
    ----------
    path : str or Path
        The run directory.
    config : dict
        The run's config (``TrainConfig.to_dict()``).
    command : list of str, optional
        The command line that started the training, recorded in the manifest.
    """

    def __init__(self, path: str | Path, config: dict[str, Any], *, command: list[str] | None = None):
        self.path = Path(path)
        self.config = config
        self.command = command
        self.lock = RunLock(self.path)
        self.manifest: dict[str, Any] = {}

    def open(self, *, resume: bool, overwrite: bool) -> list[str]:
        """Lock the directory and apply the rules; returns the names of the files removed.

        Without ``resume`` a directory holding a run is refused (:class:`RunExistsError`) unless
        ``overwrite``, which removes the old run's files. Temporary files of interrupted writes are
        removed in every case (under the lock no other writer exists).
        """
        if resume and overwrite:
            raise RunDirError(f"{self.path}: --resume continues the run there and --overwrite deletes it; "
                              f"pass one of them")
        self.lock.acquire()
        try:
            existing = run_files(self.path)
            removed = []
            if existing and not resume:
                if not overwrite:
                    manifest = read_manifest(self.path) if MANIFEST in existing else None
                    status = f" ({manifest['status']})" if manifest else ""
                    raise RunExistsError(
                        f"{self.path} already holds a run{status} ({', '.join(existing)}); continue it with "
                        f"--resume, replace it with --overwrite (deletes its files), or choose another --out")
                removed = remove_run(self.path)
            for tmp in temporaries(self.path):
                tmp.unlink(missing_ok=True)
                removed.append(tmp.name)
            previous = read_manifest(self.path) if resume else None
        except BaseException:
            self.lock.release()
            raise
        self.manifest = {
            "status": "running", "config_hash": config_hash(self.config),
            "lpc_geom_version": _version(), "torch_version": _torch_version(),
            "created": (previous or {}).get("created", _now()), "started": _now(), "ended": None,
            "pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
            "epochs_done": 0, "error": None,
        }
        return removed

    def update(self, *, durable: bool = True, **fields: Any) -> None:
        """Merge ``fields`` into the manifest and write it atomically (``durable``: see
        :func:`~lpc_geom.train.checkpoint.write_bytes`)."""
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {fields['status']!r}")
        if fields.get("status", "running") != "running":
            fields.setdefault("ended", _now())
        self.manifest.update(fields)
        write_json(self.manifest, self.path / MANIFEST, durable=durable)

    def close(self) -> None:
        self.lock.release()


def _version() -> str:
    from lpc_geom import __version__

    return __version__


def _torch_version() -> str:
    import torch

    return torch.__version__


# --------------------------------------------------------------------------------------- cached reports
def stamp(report: dict[str, Any], path: str | Path, source: str) -> dict[str, Any]:
    """``report`` with ``"source": {"file": source, "sha256": ...}``: what it was computed from."""
    return {**report, "source": {"file": source, "sha256": file_sha256(Path(path) / source)}}


def is_fresh(report_path: str | Path, *, _hashes: dict[str, str] | None = None) -> bool:
    """Whether a cached report's recorded source file is unchanged (False: stale, missing or unstamped)."""
    report_path = Path(report_path)
    if not report_path.is_file():
        return False
    try:
        source = json.loads(report_path.read_text()).get("source")
    except (ValueError, AttributeError):
        return False
    if not isinstance(source, dict) or source.get("file") not in (LATENTS, CHECKPOINT):
        return False
    file = report_path.parent / source["file"]
    if not file.is_file():
        return False
    hashes = {} if _hashes is None else _hashes
    if source["file"] not in hashes:
        hashes[source["file"]] = file_sha256(file)
    return hashes[source["file"]] == source.get("sha256")
