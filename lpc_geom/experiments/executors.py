"""Where the independent runs of a sweep execute: this process, local worker processes, or a cluster.

Every executor has one method, :meth:`SweepExecutor.run`, which applies a function to a list of items and
yields ``(index, outcome)`` pairs as the items finish (in completion order). ``outcome`` is the function's
return value, or the exception that kept it from returning one (a worker process that died, a cluster job
that was killed or timed out): the caller records that as a failed run and goes on with the others.
:func:`lpc_geom.experiments.sweep.run_jobs` is the one caller in this package; the same job function runs
under every executor, so a sweep that works locally runs unchanged on a cluster.

- :class:`LocalExecutor`: ``workers`` processes of a :class:`concurrent.futures.ProcessPoolExecutor`
  (each run with one intra-op thread), or this very process when ``workers == 1``.
- :class:`SubmititExecutor`: `submitit <https://github.com/facebookincubator/submitit>`_'s
  ``AutoExecutor``: Slurm when ``sbatch`` is available, otherwise local subprocesses; ``cluster="local"``
  forces subprocesses, ``cluster="debug"`` runs the jobs one by one in this process (submitit's debug
  mode; it opens a post-mortem debugger on an exception, which the sweep's job function never raises).
  submitit is the optional extra ``cluster``: ``pip install 'lpc_geom[cluster]'``.

>>> from lpc_geom.experiments.executors import make_executor
>>> executor = make_executor("local", workers=2)
>>> sorted(result for _, result in executor.run(abs, [-1, 2, -3]))
[1, 2, 3]
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "EXECUTORS",
    "LocalExecutor",
    "SubmititExecutor",
    "SweepExecutor",
    "make_executor",
    "submitit_available",
]

T = TypeVar("T")
R = TypeVar("R")

#: Names accepted by :func:`make_executor` (and by ``--executor`` of the benchmarks).
EXECUTORS = ("local", "submitit")
#: ``cluster`` values of :class:`SubmititExecutor`: None lets submitit pick (Slurm if available).
SUBMITIT_CLUSTERS = (None, "slurm", "local", "debug")


class SweepExecutor(abc.ABC):
    """Runs a function on many items and yields the outcomes as they finish.

    Attributes
    ----------
    threads_per_job : int or None
        Intra-op threads each job should use (``torch.set_num_threads``); None leaves torch's default
        (for jobs that own their CPUs: in-process runs and cluster jobs).
    """

    threads_per_job: int | None = None

    @abc.abstractmethod
    def run(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R | BaseException]]:
        """Apply ``fn`` to every item; yield ``(index, outcome)`` in completion order.

        Parameters
        ----------
        fn : callable
            Must be picklable for executors that leave this process (a module-level function or a
            ``functools.partial`` of one).
        items : sequence
            The arguments, one call each (picklable likewise).

        Yields
        ------
        index : int
            Position of the item in ``items``.
        outcome : object or BaseException
            ``fn(item)``, or the exception raised by the call or by the machinery running it. Every
            index is yielded exactly once.
        """

    @abc.abstractmethod
    def describe(self) -> str:
        """One line saying where the jobs run, for progress messages."""


class LocalExecutor(SweepExecutor):
    """Jobs in ``workers`` local processes (one intra-op thread each), or in this process if ``workers == 1``.

    Parameters
    ----------
    workers : int, default 1
        Number of worker processes. With 1, jobs run here one after the other and keep torch's thread
        setting.

    Notes
    -----
    A worker that dies (killed for memory, a segfault) breaks a ``ProcessPoolExecutor``: the job it ran
    and every job still queued then yield :class:`concurrent.futures.process.BrokenProcessPool`. They are
    reported as failures like any other, so a re-launched sweep runs them again.
    """

    def __init__(self, workers: int = 1):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        self.workers = workers
        self.threads_per_job = 1 if workers > 1 else None

    def run(self, fn, items):
        if self.workers == 1:
            for index, item in enumerate(items):
                try:
                    outcome = fn(item)
                except Exception as exc:
                    outcome = exc
                yield index, outcome
            return
        with ProcessPoolExecutor(max_workers=min(self.workers, max(1, len(items)))) as pool:
            futures: dict[Future, int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    exc = future.exception()
                    yield futures[future], (exc if exc is not None else future.result())

    def describe(self) -> str:
        if self.workers == 1:
            return "this process"
        return f"{self.workers} local worker processes"


def submitit_available() -> bool:
    """Whether submitit (the optional extra ``cluster``) can be imported."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        return False
    return True


class SubmititExecutor(SweepExecutor):
    """Jobs submitted through ``submitit.AutoExecutor`` (Slurm on a cluster, subprocesses elsewhere).

    Parameters
    ----------
    folder : str or Path
        submitit's folder for job scripts, pickled calls and logs (``%j`` is replaced by the job id).
    cluster : {None, "slurm", "local", "debug"}
        None lets submitit choose (Slurm when ``sbatch`` is found, else local subprocesses).
    max_in_flight : int, optional
        At most this many jobs submitted and unfinished at a time (jobs are submitted as others finish).
        Default: all at once on Slurm (as one job array), one per CPU core of this machine for
        ``"local"`` (submitit's local executor starts every submitted job immediately).
    poll_seconds : float, optional
        How often job states are polled. Default 0.5 s locally, 15 s on Slurm.
    threads_per_job : int, optional
        ``torch.set_num_threads`` inside each job; default: torch's own (the job owns its CPUs), except
        ``"local"``, where jobs share this machine and get one thread each.
    **parameters
        Passed to ``AutoExecutor.update_parameters``: the shared ones (``timeout_min``, ``mem_gb``,
        ``cpus_per_task``, ``gpus_per_node``, ``nodes``, ``tasks_per_node``, ``name``) or cluster-specific
        ones with their prefix (``slurm_partition``, ``slurm_array_parallelism``, ``slurm_account``, ...).

    Raises
    ------
    ImportError
        When submitit is not installed (the message says how to install it).
    ValueError
        For an unknown ``cluster`` or a non-positive ``max_in_flight``.
    """

    def __init__(self, folder: str | Path, *, cluster: str | None = None, max_in_flight: int | None = None,
                 poll_seconds: float | None = None, threads_per_job: int | None = None, **parameters: Any):
        if not submitit_available():
            raise ImportError("the submitit executor needs submitit, the optional extra 'cluster': "
                              "pip install 'lpc_geom[cluster]' (or pip install submitit)")
        import submitit

        if cluster not in SUBMITIT_CLUSTERS:
            raise ValueError(f"cluster must be one of {SUBMITIT_CLUSTERS}, got {cluster!r}")
        if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
            raise ValueError(f"max_in_flight must be None or an integer >= 1, got {max_in_flight!r}")
        self.folder = Path(folder)
        self._executor = submitit.AutoExecutor(folder=self.folder, cluster=cluster)
        self.cluster = self._executor.cluster
        if parameters:
            self._executor.update_parameters(**parameters)
        self.parameters = dict(parameters)
        local = self.cluster in ("local", "debug")
        if max_in_flight is None and self.cluster == "local":
            max_in_flight = _cpu_count()
        self.max_in_flight = max_in_flight
        self.poll_seconds = (0.5 if local else 15.0) if poll_seconds is None else float(poll_seconds)
        self.threads_per_job = 1 if (threads_per_job is None and self.cluster == "local") else threads_per_job

    def run(self, fn, items):
        queue = list(enumerate(items))
        if self.max_in_flight is None:  # everything at once: one job array where the cluster has them
            with self._executor.batch():
                submitted = [(i, self._executor.submit(fn, item)) for i, item in queue]
            queue = []
        else:
            submitted = []
        running: dict[Any, int] = {}

        def top_up():
            while queue and len(running) < self.max_in_flight:
                index, item = queue.pop(0)
                running[self._executor.submit(fn, item)] = index

        for index, job in submitted:
            running[job] = index
        if self.max_in_flight is not None:
            top_up()
        while running:
            finished = [job for job in running if job.done()]
            if not finished:
                time.sleep(self.poll_seconds)
                continue
            for job in finished:
                index = running.pop(job)
                try:
                    outcome = job.result()
                except Exception as exc:  # FailedJobError, UncompletedJobError (killed, timed out), ...
                    outcome = exc
                yield index, outcome
            if self.max_in_flight is not None:
                top_up()

    def describe(self) -> str:
        extra = f", at most {self.max_in_flight} at a time" if self.max_in_flight else ""
        return f"submitit ({self.cluster}{extra}; logs in {self.folder})"


def _cpu_count() -> int:
    import os

    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def make_executor(name: str, *, workers: int = 1, folder: str | Path | None = None,
                  cluster: str | None = None, max_in_flight: int | None = None,
                  parameters: Mapping[str, Any] | None = None) -> SweepExecutor:
    """Build an executor by name.

    Parameters
    ----------
    name : {"local", "submitit"}
    workers : int, default 1
        ``local``: number of worker processes.
    folder : str or Path, optional
        ``submitit``: its log folder (required).
    cluster : {None, "slurm", "local", "debug"}, optional
        ``submitit``: where jobs run (None: Slurm if available, else local subprocesses).
    max_in_flight : int, optional
        ``submitit``: at most this many unfinished jobs at a time.
    parameters : mapping, optional
        ``submitit``: ``AutoExecutor.update_parameters`` arguments (``timeout_min``, ``slurm_partition``,
        ``gpus_per_node``, ...).

    Returns
    -------
    SweepExecutor

    Raises
    ------
    ValueError
        Unknown name, options given to the executor that does not use them, or no ``folder`` for
        submitit.
    """
    if name == "local":
        if cluster is not None or parameters or max_in_flight is not None:
            raise ValueError("cluster, max_in_flight and parameters are options of the submitit executor, "
                             "not of the local one")
        return LocalExecutor(workers)
    if name == "submitit":
        if folder is None:
            raise ValueError("the submitit executor needs a log folder (folder=...)")
        return SubmititExecutor(folder, cluster=cluster, max_in_flight=max_in_flight, **dict(parameters or {}))
    raise ValueError(f"unknown executor {name!r}; accepted: {', '.join(EXECUTORS)}")
