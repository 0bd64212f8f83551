"""Sweeps: many independent training runs, each trained, analysed and summarised into one flat record.

A run whose directory already holds ``record.json`` is not trained again (a re-launched sweep resumes
where it stopped); a run that fails is recorded with its error and does not stop the others. Local
sweeps run in worker processes (``concurrent.futures``) with a progress bar.
"""

from __future__ import annotations

import json
import math
import os
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lpc_geom.config import TrainConfig
from lpc_geom.train.checkpoint import write_json

RECORD = "record.json"


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
    """Train, analyse (train and test latents) and write ``record.json``; errors become a record too."""
    import torch

    from lpc_geom.experiments.runs import analyze_run
    from lpc_geom.train import train

    if threads is not None:
        torch.set_num_threads(threads)
    record: dict[str, Any] = {"name": job.name, **job.cell, "seed": job.config.seed,
                              "run_dir": str(job.run_dir)}
    try:
        result = train(job.config)
        record.update({f"final_{k}": v for k, v in result.final.items() if isinstance(v, (int, float))})
        record["epoch_seconds_median"] = float(np.median([r["epoch_seconds"] for r in result.history]))
        for split in ("train", "test"):
            report = analyze_run(job.run_dir, split=split)
            record.update({f"{split}_{k}": v for k, v in report.to_dict().items()})
        if postprocess is not None:
            record.update(postprocess(job))
        record["status"] = "ok"
    except Exception as exc:  # a failed run is recorded, the sweep goes on
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
    job.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, job.run_dir / RECORD)
    return record


def finished_record(job: Job) -> dict[str, Any] | None:
    """The stored record of a job that already ran successfully, else None."""
    path = job.run_dir / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("status") == "ok" else None


def run_jobs(jobs: Sequence[Job], *, workers: int = 1, progress: bool = True,
             postprocess: Callable[[Job], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Run every job not already finished, ``workers`` at a time; returns the records in job order."""
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError("job names must be unique within a sweep")
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        done = finished_record(job)
        if done is not None:
            records[job.name] = done
        else:
            todo.append(job)
    bar = tqdm(total=len(jobs), initial=len(records), desc="sweep", disable=not progress, dynamic_ncols=True)
    quiet = [_quiet(job) for job in todo]
    if workers <= 1:
        for job in quiet:
            records[job.name] = run_job(job, postprocess=postprocess, threads=None)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_job, job, postprocess=postprocess): job for job in quiet}
            for future in as_completed(futures):
                records[futures[future].name] = future.result()
                bar.update()
    bar.close()
    return [records[name] for name in names]


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
