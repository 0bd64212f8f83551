"""Sweeps: many independent training runs, each trained, analysed and summarised into one flat record.

A re-launched sweep goes on where the last one stopped: a run whose directory already holds a successful
``record.json`` is not trained again, and a half-trained one (a checkpoint, the same config) resumes from
its checkpoint instead of starting over; a run directory trained with another config is an error, not a
silent reuse. A run that fails is recorded with its error and does not stop the others; one whose worker
process died is started again once (:mod:`lpc_geom.experiments.executors`). Where the runs execute is an
executor's business: local worker processes by default, or a cluster through submitit, where a job that
reaches its time limit is requeued and resumes (:class:`SweepTask`), with the same job function and a
progress bar either way. :func:`failure_lines` and :func:`exit_status` are what a sweep's command line
reports at the end.
"""

from __future__ import annotations

import math
import os
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lpc_geom.config import TrainConfig
from lpc_geom.experiments.executors import LocalExecutor, SweepExecutor
from lpc_geom.train.checkpoint import read_json, write_json
from lpc_geom.train.run_dir import CONFIG, HISTORY, RECORD, REUSABLE_CHANGES, SUMMARY, TRAINED_FILES
from lpc_geom.train.run_dir import config_differences as run_config_differences

#: Exit status of a sweep's command line when any run failed (0 when all finished).
FAILED_EXIT_STATUS = 1


@dataclass
class Job:
    """One run of a sweep: a name, the grid cell it belongs to, and its full training config."""

    name: str
    config: TrainConfig
    cell: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out_dir)


def run_job(job: Job, *, postprocess: Callable[[Job], dict[str, Any]] | None = None,
            threads: int | None = 1) -> dict[str, Any]:
    """Train, analyse (train and test latents) and write ``record.json``; errors become a record too.

    Warnings raised while the job runs (e.g. K-FAC leaving a layer type unpreconditioned, a collapse onto
    the origin) are collected into the record's ``warnings`` (distinct ``"Category: message"`` strings)
    instead of being printed from inside a worker, where they would interleave with the progress bar.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # geoopt 0.5.1 calls torch.jit.script at import (a worker's first geoopt import): not the run's business
        warnings.filterwarnings("ignore", message="`torch.jit.script", category=DeprecationWarning)
        record = _run_job(job, postprocess)
    messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    if messages:
        record["warnings"] = messages
    job.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, job.run_dir / RECORD)
    return record


@dataclass(frozen=True)
class SweepTask:
    """The job function of a sweep: ``task(job)`` is :func:`run_job` with the sweep's options.

    Calling it again on a job continues where the last call stopped (a finished training is reused, a
    half-trained one resumes from its checkpoint), so a call may be interrupted and simply made again.
    :meth:`checkpoint` says so to submitit: it is submitit's checkpointing interface
    (``submitit.helpers.Checkpointable``), called when a cluster job reaches its time limit or is
    preempted, and the requeued job resumes the run from its last checkpoint (``checkpoint_every``)
    instead of epoch 0.

    Attributes
    ----------
    postprocess : callable, optional
        As in :func:`run_job` (picklable).
    threads : int or None
        As in :func:`run_job`.
    """

    postprocess: Callable[[Job], dict[str, Any]] | None = None
    threads: int | None = 1

    def __call__(self, job: Job) -> dict[str, Any]:
        return run_job(job, postprocess=self.postprocess, threads=self.threads)

    def checkpoint(self, job: Job) -> Any:
        """The call that continues this one: the same task on the same job (a ``DelayedSubmission``).

        The trainer's state cannot be saved from here (submitit calls this from a signal handler, in the
        middle of a step); the checkpoint the trainer last wrote is what the requeued call resumes from.
        """
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, job)


def _run_job(job: Job, postprocess: Callable[[Job], dict[str, Any]] | None) -> dict[str, Any]:
    from lpc_geom.experiments.runs import analyze_run
    from lpc_geom.train import train

    record: dict[str, Any] = {"name": job.name, **job.cell, "seed": job.config.seed,
                              "run_dir": str(job.run_dir)}
    try:
        differing = config_differences(job)
        trained = finished_training(job, differing)
        if trained is None:
            resume_at = half_trained(job, differing)
            if resume_at is not None:
                record["resumed_at_epoch"] = resume_at
            # Without a checkpoint to resume, what the directory holds of this same job (a config written by a
            # run killed before its first checkpoint) is stale and replaced; a run of another config is not
            # (the trainer refuses it, and the failure names the directory).
            stale = resume_at is None and not differing
            result = train(job.config, resume=resume_at is not None, overwrite=stale)
            history, final = result.history, result.final
        else:  # trained before, but its analysis or post-processing failed: only those run again
            history, final = trained
            record["training_reused"] = True
        record.update({f"final_{k}": v for k, v in final.items() if isinstance(v, (int, float))})
        record["epoch_seconds_median"] = float(np.median([r["epoch_seconds"] for r in history]))
        for split in ("train", "test"):
            report = analyze_run(job.run_dir, split=split, backbone=job.config.backbone)  # the job's own
            record.update({f"{split}_{k}": v for k, v in report.to_dict().items()})
        if postprocess is not None:
            record.update(postprocess(job))
        record["status"] = "ok"
    except Exception as exc:  # a failed run is recorded, the sweep goes on
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
    return record


def config_differences(job: Job) -> list[str] | None:
    """Keys in which the config saved in the job's run directory differs from the job's (None: no config).

    See :func:`lpc_geom.train.run_dir.config_differences` (keys added to :class:`TrainConfig` after the
    run was trained count as their defaults, values compare as JSON); :data:`REUSABLE_CHANGES` are
    ignored.
    """
    path = job.run_dir / CONFIG
    if not path.is_file():
        return None
    return run_config_differences(read_json(path), job.config.to_dict(), ignore=REUSABLE_CHANGES)


def finished_training(job: Job, differing: list[str] | None) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """``(history, summary)`` of a run directory whose training finished with the job's config, else None.

    A run whose training completed (all of :data:`TRAINED_FILES`, one history row per epoch, the same
    config) but whose analysis failed is analysed again without training it again. ``differing``: the
    job's :func:`config_differences` (read once by the caller).
    """
    if not all((job.run_dir / name).is_file() for name in TRAINED_FILES) or differing:
        return None
    history = read_json(job.run_dir / HISTORY)
    if len(history) != job.config.epochs:
        return None
    return history, read_json(job.run_dir / SUMMARY)


def half_trained(job: Job, differing: list[str] | None) -> int | None:
    """The epoch at which a half-trained run of the job would continue, or None when there is none.

    A run directory holds a half-trained run of the job when its training did not finish
    (:func:`finished_training` is None) but it has a checkpoint and the job's config (up to
    :data:`REUSABLE_CHANGES`). The epoch is read from the checkpoint (the one after its last epoch).
    ``differing``: as in :func:`finished_training`.
    """
    from lpc_geom.train.checkpoint import load_checkpoint
    from lpc_geom.train.run_dir import CHECKPOINT

    path = job.run_dir / CHECKPOINT
    if not path.is_file() or differing != [] or finished_training(job, differing) is not None:
        return None
    return int(load_checkpoint(path)["epoch"]) + 1


def finished_record(job: Job) -> dict[str, Any] | None:
    """The stored record of a job that already ran successfully, else None.

    Raises
    ------
    ValueError
        When the run directory holds a successful run trained with a different config (other than in
        :data:`REUSABLE_CHANGES`): reusing it would report results of another experiment. The message
        names the differing keys.
    RunFileError
        When ``record.json`` is not valid JSON (it names the file).
    """
    path = job.run_dir / RECORD
    if not path.is_file():
        return None
    record = read_json(path)
    if record.get("status") != "ok":
        return None
    differing = config_differences(job)
    if differing:
        raise ValueError(
            f"{job.run_dir} holds a finished run of {job.name!r} trained with another config (differing "
            f"keys: {', '.join(differing)}); write this sweep elsewhere or delete that directory")
    return record


def failure_record(job: Job, exc: BaseException) -> dict[str, Any]:
    """The record of a job whose execution failed outside :func:`run_job` (a dead worker, a killed
    cluster job), in the same form as the records of runs that failed inside it."""
    return {"name": job.name, **job.cell, "seed": job.config.seed, "run_dir": str(job.run_dir),
            "status": "failed", "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(exc))}


def run_jobs(jobs: Sequence[Job], *, workers: int = 1, progress: bool = True,
             postprocess: Callable[[Job], dict[str, Any]] | None = None,
             executor: SweepExecutor | None = None) -> list[dict[str, Any]]:
    """Run every job not already finished; returns the records in job order.

    Half-trained runs resume from their checkpoints (:func:`half_trained`); a job whose worker process
    died is started again once (the executor's ``retries``) while the others go on.

    Parameters
    ----------
    jobs : sequence of Job
        Unique names.
    workers : int, default 1
        Local worker processes (one intra-op thread each; 1: in this process). Ignored when
        ``executor`` is given.
    progress : bool, default True
        A progress bar over the whole sweep (per-run bars are switched off).
    postprocess : callable, optional
        ``postprocess(job) -> dict`` run after training and analysis, inside the job; its entries join
        the record. Must be picklable for executors that leave this process (a module-level function or
        a ``functools.partial`` of one).
    executor : SweepExecutor, optional
        Where the jobs run (:mod:`lpc_geom.experiments.executors`); default
        ``LocalExecutor(workers)``.

    Returns
    -------
    list of dict
        One record per job (``status`` ``"ok"`` or ``"failed"`` with ``error`` and ``traceback``), also
        written to ``<run_dir>/record.json``. ``resumed_at_epoch``: the run continued from a checkpoint at
        that epoch; ``retried_after``: why the earlier attempts' processes died.
    """
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError("job names must be unique within a sweep")
    executor = LocalExecutor(workers) if executor is None else executor
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        done = finished_record(job)
        if done is not None:
            records[job.name] = done
        else:
            todo.append(job)
    if todo and executor.forks_workers:
        _preload_job_modules()
    bar = tqdm(total=len(jobs), initial=len(records), desc="sweep", disable=not progress, dynamic_ncols=True)
    quiet = [_quiet(job) for job in todo]
    task = SweepTask(postprocess, executor.threads_per_job)
    failed = 0
    for outcome in executor.run(task, quiet):
        job = quiet[outcome.index]
        record = outcome.value
        if isinstance(record, BaseException):
            record = failure_record(job, record)
        if outcome.deaths:
            record["retried_after"] = list(outcome.deaths)
        if isinstance(outcome.value, BaseException) or outcome.deaths:
            job.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(record, job.run_dir / RECORD)
        records[job.name] = record
        failed += record.get("status") != "ok"
        bar.update()
        if failed:
            bar.set_postfix(failed=failed)
    bar.close()
    return [records[name] for name in names]


def failure_lines(records: Iterable[dict[str, Any]]) -> list[str]:
    """One line per failed run, ``"<name>: <reason>"`` (the first line of its error), headed by a count.

    Empty when every run finished. The traceback stays in the run's ``record.json``.
    """
    records = list(records)
    failed = [r for r in records if r.get("status") != "ok"]
    if not failed:
        return []
    lines = [f"{len(failed)} of {len(records)} runs failed (tracebacks in each run's {RECORD}):"]
    for record in failed:
        reason = (str(record.get("error") or "no error recorded").strip().splitlines() or [""])[0]
        retried = " (after a retry)" if record.get("retried_after") else ""
        lines.append(f"  {record.get('name')}: {reason[:300]}{retried}")
    return lines


def exit_status(records: Iterable[dict[str, Any]]) -> int:
    """0 when every run finished, :data:`FAILED_EXIT_STATUS` when any failed."""
    return FAILED_EXIT_STATUS if any(r.get("status") != "ok" for r in records) else 0


def _preload_job_modules() -> None:
    """Import what every job imports, here, once: forked workers inherit the modules instead of spending
    seconds of CPU each on importing them (trainer, models, analysers, and ``torch._dynamo``, which
    ``torch.optim`` imports when the first optimiser is built)."""
    import torch._dynamo  # noqa: F401

    import lpc_geom.analysis.report
    import lpc_geom.experiments.runs
    import lpc_geom.train.trainer  # noqa: F401


def _quiet(job: Job) -> Job:
    """Per-run progress bars would interleave with the sweep's: switch them off."""
    return Job(job.name, job.config.replace(progress=False), job.cell)


def aggregate(records: Iterable[dict[str, Any]], by: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and std (ddof 0) of every numeric field per cell (records grouped by the ``by`` keys).

    Failed runs are counted in ``failed`` and left out of the statistics; non-finite values are left out
    of the mean of their field and counted in ``<field>_nonfinite``.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record.get(k) for k in by), []).append(record)
    rows = []
    for key, members in groups.items():
        ok = [m for m in members if m.get("status") == "ok"]
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row["runs"], row["failed"] = len(ok), len(members) - len(ok)
        fields = [f for f in (ok[0] if ok else {}) if f not in by and f != "seed"]
        for name in fields:
            values = [m.get(name) for m in ok]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                continue
            finite = [float(v) for v in values if math.isfinite(v)]
            row[f"{name}_mean"] = float(np.mean(finite)) if finite else math.nan
            row[f"{name}_std"] = float(np.std(finite)) if finite else math.nan
            if len(finite) < len(values):
                row[f"{name}_nonfinite"] = len(values) - len(finite)
        rows.append(row)
    return rows


def default_workers() -> int:
    """Worker processes for a local sweep: one per core (each run uses one thread)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
