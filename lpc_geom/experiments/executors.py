"""Where the independent runs of a sweep execute: this process, local worker processes, or a cluster.

Every executor has one method, :meth:`SweepExecutor.run`, which applies a function to a list of items and
yields one :class:`Outcome` per item as the items finish (in completion order): the function's return
value, or the exception that kept it from returning one. A call whose process died without an answer
(killed by a signal or for memory, a segfault, a cluster job killed or timed out for good) is a
:class:`WorkerDied`; such a call is started again once (:attr:`SweepExecutor.retries`) while the other
calls go on, and the outcome lists the deaths before it. :func:`lpc_geom.experiments.sweep.run_jobs` is the
one caller in this package; the same job function runs under every executor, so a sweep that works locally
runs unchanged on a cluster.

- :class:`LocalExecutor`: ``workers`` local worker processes, one call at a time each (each run with one
  intra-op thread), or this very process when ``workers == 1``. The workers die with the sweep: a
  SIGKILLed sweep leaves no worker behind.
- :class:`SubmititExecutor`: `submitit <https://github.com/facebookincubator/submitit>`_'s
  ``AutoExecutor``: Slurm when ``sbatch`` is available, otherwise local subprocesses; ``cluster="local"``
  forces subprocesses, ``cluster="debug"`` runs the jobs one by one in this process (submitit's debug
  mode; it opens a post-mortem debugger on an exception, which the sweep's job function never raises).
  A callable with a ``checkpoint`` method (submitit's checkpointing interface, as the sweep's job is) is
  requeued by submitit when its job reaches the time limit or is preempted. submitit is the optional
  extra ``cluster``: ``pip install 'lpc_geom[cluster]'``.

>>> from lpc_geom.experiments.executors import make_executor
>>> executor = make_executor("local", workers=2)
>>> sorted(outcome.value for outcome in executor.run(abs, [-1, 2, -3]))
[1, 2, 3]
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

__all__ = [
    "EXECUTORS",
    "LocalExecutor",
    "Outcome",
    "SubmititExecutor",
    "SweepExecutor",
    "WorkerDied",
    "make_executor",
    "submitit_available",
]

T = TypeVar("T")
R = TypeVar("R")
H = TypeVar("H")

#: Names accepted by :func:`make_executor` (and by ``--executor`` of the benchmarks).
EXECUTORS = ("local", "submitit")
#: ``cluster`` values of :class:`SubmititExecutor`: None lets submitit pick (Slurm if available).
SUBMITIT_CLUSTERS = (None, "slurm", "local", "debug")
#: Seconds a worker process gets to stop after SIGTERM (its parent died, or the sweep is stopping) before
#: it is killed: Slurm's default grace between SIGTERM and SIGKILL, enough for a run to write a checkpoint.
STOP_GRACE_SECONDS = 30.0
#: How often a worker's watchdog thread checks that its parent is still alive.
PARENT_POLL_SECONDS = 1.0


class WorkerDied(RuntimeError):
    """The process running a call ended without returning (killed by a signal, exited, lost)."""


class Outcome(NamedTuple):
    """What :meth:`SweepExecutor.run` yields for each item.

    Attributes
    ----------
    index : int
        Position of the item in ``items``.
    value : object or BaseException
        The function's return value; or the exception it raised; or a :class:`WorkerDied` when every
        attempt's process died.
    deaths : tuple of str
        Why the earlier attempts of this item died (empty when the first attempt answered).
    """

    index: int
    value: Any
    deaths: tuple[str, ...] = ()


class SweepExecutor(abc.ABC, Generic[H]):
    """Runs a function on many items and yields the outcomes as they finish.

    Subclasses say how one call starts (:meth:`_start`), how finished calls are collected (:meth:`_collect`)
    and how unfinished ones are abandoned (:meth:`_abandon`); :meth:`run` owns the scheduling: at most
    :attr:`max_in_flight` calls at a time, a call whose process died started again (first in the queue)
    up to :attr:`retries` times.

    Attributes
    ----------
    threads_per_job : int or None
        Intra-op threads each job should use (``torch.set_num_threads``); None leaves torch's default
        (for jobs that own their CPUs: in-process runs and cluster jobs).
    max_in_flight : int or None
        Calls started and unfinished at a time; None: all at once.
    forks_workers : bool
        Whether the calls run in processes forked from this one.
    retries : int
        How many times a call whose process died is started again (default 1). A call that raised is
        not: it would raise again.
    """

    threads_per_job: int | None = None
    max_in_flight: int | None = None
    retries: int = 1

    @property
    def forks_workers(self) -> bool:
        """Whether the calls run in processes forked from this one (which inherit its imported modules)."""
        return False

    def run(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[Outcome]:
        """Apply ``fn`` to every item; yield one :class:`Outcome` per item in completion order.

        Parameters
        ----------
        fn : callable
            Must be picklable for executors that leave this process (a module-level function, a
            ``functools.partial`` of one, or an instance of a module-level class).
        items : sequence
            The arguments, one call each (picklable likewise).

        Yields
        ------
        Outcome
            Every index exactly once. Closing the iterator early (or an exception in the consumer)
            abandons the unfinished calls (:meth:`_abandon`).
        """
        queue = deque(enumerate(items))
        deaths: dict[int, list[str]] = {index: [] for index, _ in queue}
        running: dict[H, tuple[int, T]] = {}
        try:
            while queue or running:
                room = len(queue) if self.max_in_flight is None else self.max_in_flight - len(running)
                starting = [queue.popleft() for _ in range(min(room, len(queue)))]
                if starting:
                    handles = self._start(fn, [item for _, item in starting])
                    running.update(zip(handles, starting, strict=True))
                for handle, value in self._collect(list(running)):
                    index, item = running.pop(handle)
                    if isinstance(value, WorkerDied) and len(deaths[index]) < self.retries:
                        deaths[index].append(str(value))
                        queue.appendleft((index, item))  # first in line: the others already had their turn
                        continue
                    if not queue:
                        self._nothing_queued()
                    yield Outcome(index, value, tuple(deaths[index]))
        finally:
            self._abandon(list(running))

    @abc.abstractmethod
    def _start(self, fn: Callable[[T], R], items: list[T]) -> list[H]:
        """Start one call per item; one handle each."""

    @abc.abstractmethod
    def _collect(self, running: list[H]) -> list[tuple[H, Any]]:
        """Wait until at least one running call finished; its ``(handle, value)`` pairs (value as in
        :class:`Outcome`, a :class:`WorkerDied` for a dead process)."""

    def _nothing_queued(self) -> None:
        """Every call left has started: resources waiting for more (idle workers) may go."""

    def _abandon(self, running: list[H]) -> None:
        """The iterator ends; ``running`` holds the calls that did not finish (it was closed early).

        By default they are left to finish: cluster jobs outlive the sweep that submitted them, and a
        re-launched sweep reuses what they finished.
        """

    @abc.abstractmethod
    def describe(self) -> str:
        """One line saying where the jobs run, for progress messages."""


# --------------------------------------------------------------------------------------------- local
def _set_parent_death_signal() -> bool:
    """Ask Linux to send this process SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    Returns whether the kernel accepted it (False on other systems, or where libc has no ``prctl``).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def _start_parent_watchdog(parent_pid: int, *, signal_first: bool, poll: float = PARENT_POLL_SECONDS,
                           grace: float = STOP_GRACE_SECONDS) -> threading.Thread:
    """A daemon thread that ends this process once ``parent_pid`` is no longer its parent.

    When the parent dies the process is re-parented (to init or a sub-reaper), so ``os.getppid()`` changes.
    The thread then sends this process SIGTERM (unless ``signal_first`` is False: the kernel already sent
    it, :func:`_set_parent_death_signal`), and exits it after ``grace`` seconds if it is still alive.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll)
        if signal_first:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(128 + int(signal.SIGTERM))

    thread = threading.Thread(target=watch, name="lpc-geom-parent-watchdog", daemon=True)
    thread.start()
    return thread


def die_with_parent(parent_pid: int) -> None:
    """Make this (worker) process end when ``parent_pid``, the sweep that started it, dies.

    Two mechanisms, because neither alone covers every case. ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` makes the
    Linux kernel signal the worker the moment its parent dies, however it dies (SIGKILL, a crash, the
    OOM killer); no thread can be as prompt, but it exists only on Linux and acts on SIGTERM, which a run
    may handle (to write a checkpoint) and so survive if it hangs. The watchdog thread
    (:func:`_start_parent_watchdog`) works on every POSIX system, and bounds the stop: it kills the worker
    :data:`STOP_GRACE_SECONDS` after its parent's death. SIGTERM rather than SIGKILL gives a run the chance
    to save its progress for the re-launched sweep. A parent that died before ``prctl`` took effect is
    caught by comparing ``os.getppid()`` with the pid the parent passed down.
    """
    kernel = _set_parent_death_signal()
    if os.getppid() != parent_pid:  # died before the death signal was armed
        os._exit(128 + int(signal.SIGTERM))
    _start_parent_watchdog(parent_pid, signal_first=not kernel)


def _worker_main(conn: Connection, fn: Callable[[T], R], parent_pid: int) -> None:
    """Body of a worker process: answer every item received with ``(fn(item),)``, or ``(exception,)``.

    None or a closed pipe ends the worker.
    """
    die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group: let the sweep decide (it stops its workers with SIGTERM).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        try:
            answer: tuple[Any] = (fn(item),)
        except Exception as exc:
            answer = (exc,)
        except KeyboardInterrupt as stop:  # a training stopped by SIGTERM (it saved a checkpoint): end quietly
            raise SystemExit(128 + int(getattr(stop, "signum", signal.SIGINT))) from None
        try:
            conn.send(answer)
        except Exception as exc:  # an unpicklable value or exception: say so instead of dying silently
            conn.send((RuntimeError(f"the result of the call could not be sent back: {exc!r}"),))


class _Worker(NamedTuple):
    process: multiprocessing.process.BaseProcess
    conn: Connection


class _Call(NamedTuple):
    """A handle of :class:`LocalExecutor`: the worker running the call (one call at a time each)."""

    number: int  # handles must be distinct even when a worker runs several calls
    worker: _Worker


class LocalExecutor(SweepExecutor[_Call]):
    """Jobs in up to ``workers`` local worker processes (one intra-op thread each), or here if ``workers == 1``.

    Parameters
    ----------
    workers : int, default 1
        Worker processes. With 1, jobs run here one after the other and keep torch's thread setting
        (and nothing can die separately, so nothing is retried).

    Notes
    -----
    Each worker process (of :mod:`multiprocessing`'s default start method) runs one call at a time and
    then the next, so the libraries a job imports are imported once per worker, not per call. A worker
    that dies costs only the call it ran: that call is started again once, in a new worker, and the
    others go on. Workers leave as soon as nothing is queued for them, and die with the sweep
    (:func:`die_with_parent`); a sweep that stops early (an exception, Ctrl-C) sends them SIGTERM and
    kills those still alive :data:`STOP_GRACE_SECONDS` later.
    """

    def __init__(self, workers: int = 1):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        self.workers = workers
        self.max_in_flight = workers
        self.threads_per_job = 1 if workers > 1 else None
        self._fn: Callable | None = None
        self._idle: list[_Worker] = []
        self._calls = 0

    @property
    def forks_workers(self) -> bool:
        # the start method in force, or the default (listed first) without fixing it as get_start_method() would
        method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
        return self.workers > 1 and method == "fork"

    def run(self, fn, items):
        if self.workers > 1:
            self._fn, self._idle = fn, []
            try:
                yield from super().run(fn, items)
            finally:
                self._nothing_queued()
                self._fn = None
            return
        for index, item in enumerate(items):
            try:
                value = fn(item)
            except Exception as exc:
                value = exc
            yield Outcome(index, value)

    def _new_worker(self) -> _Worker:
        context = multiprocessing.get_context()
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_worker_main, args=(child_end, self._fn, os.getpid()),
                                  name="lpc-geom-sweep-worker")
        process.start()
        child_end.close()  # the worker holds the only other end: end of file when it dies
        return _Worker(process, parent_end)

    def _start(self, fn, items):
        calls = []
        for item in items:
            while True:
                worker = self._idle.pop() if self._idle else self._new_worker()
                try:
                    worker.conn.send(item)
                    break
                except OSError:  # died while idle: replace it
                    _close(worker)
            self._calls += 1
            calls.append(_Call(self._calls, worker))
        return calls

    def _collect(self, running):
        by_object = {}
        for call in running:
            by_object[call.worker.conn] = by_object[call.worker.process.sentinel] = call
        ready = {by_object[obj] for obj in wait_for(list(by_object))}
        finished = []
        for call in ready:
            answer = None
            with contextlib.suppress(EOFError, OSError):
                if call.worker.conn.poll():
                    answer = call.worker.conn.recv()
            if answer is not None:
                self._idle.append(call.worker)
                finished.append((call, answer[0]))
                continue
            # end of file or an exited process, without an answer: the worker died
            call.worker.process.join(STOP_GRACE_SECONDS)
            if call.worker.process.is_alive():  # closed its pipe yet still running: end it
                call.worker.process.kill()
            _close(call.worker)
            finished.append((call, WorkerDied(_death_reason(call.worker.process))))
        return finished

    def _nothing_queued(self):
        for worker in self._idle:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in self._idle:
            worker.process.join(STOP_GRACE_SECONDS)
            if worker.process.is_alive():
                worker.process.kill()
            _close(worker)
        self._idle = []

    def _abandon(self, running):
        workers = [call.worker for call in running]
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.process.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
            _close(worker)

    def describe(self) -> str:
        if self.workers == 1:
            return "this process"
        return f"{self.workers} local worker processes"


def _close(worker: _Worker) -> None:
    worker.process.join()
    worker.conn.close()


def _death_reason(process: multiprocessing.process.BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker process {process.pid} was killed by {name}"
    return f"worker process {process.pid} exited with status {code} without returning a result"


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
        ``"local"`` (submitit's local executor starts every submitted job immediately). A job whose
        process died (:class:`WorkerDied`) is submitted again once.
    poll_seconds : float, optional
        How often job states are polled. Default 0.5 s locally, 15 s on Slurm.
    threads_per_job : int, optional
        ``torch.set_num_threads`` inside each job; default: torch's own (the job owns its CPUs), except
        ``"local"``, where jobs share this machine and get one thread each.
    **parameters
        Passed to ``AutoExecutor.update_parameters``: the shared ones (``timeout_min``, ``mem_gb``,
        ``cpus_per_task``, ``gpus_per_node``, ``nodes``, ``tasks_per_node``, ``name``) or cluster-specific
        ones with their prefix (``slurm_partition``, ``slurm_array_parallelism``, ``slurm_account``, ...).

    Notes
    -----
    Time limits: submitit signals a job (SIGUSR2) shortly before its time limit or on preemption; if the
    submitted callable has a ``checkpoint(*args)`` method returning a ``submitit.helpers.DelayedSubmission``
    (``submitit.helpers.Checkpointable``'s interface), submitit calls it, requeues the job with the call it
    returns, and the job goes on under the same job id, unseen by :meth:`run`. The sweep's job
    (:class:`lpc_geom.experiments.sweep.SweepTask`) returns itself, which resumes the run from its last
    checkpoint. A job not requeued (not checkpointable, or timed out more often than submitit's
    ``max_num_timeout``) ends without a result, a :class:`WorkerDied`.

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

    def _start(self, fn, items):
        if self.max_in_flight is None and len(items) > 1:  # all at once: one job array where the cluster has them
            with self._executor.batch():
                jobs = [self._executor.submit(fn, item) for item in items]
            return jobs
        return [self._executor.submit(fn, item) for item in items]

    def _collect(self, running):
        while True:
            finished = [job for job in running if job.done()]
            if finished:
                break
            time.sleep(self.poll_seconds)
        from submitit.core.utils import FailedJobError, UncompletedJobError

        outcomes = []
        for job in finished:
            try:
                value = job.result()
            except FailedJobError as exc:  # the call raised: it would raise again
                value = exc
            except UncompletedJobError as exc:  # no result: killed, or timed out for good
                value = WorkerDied(f"job {job.job_id} ended without a result ({job.state}): {exc}")
            outcomes.append((job, value))
        return outcomes

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
