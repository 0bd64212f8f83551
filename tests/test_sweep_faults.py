"""Sweeps under faults, as a user meets them: real sweep processes, real signals, real re-launches.

Each sweep is ``benchmarks/compare_manifolds.py`` on a tiny grid (an MLP on Gaussian blobs, a checkpoint
every epoch) started as its own process group, so that whatever a test leaves behind is killed at its end.
Processes are found through ``/proc`` (Linux): a worker is a child of the sweep's main process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds processes through /proc")

EPOCHS = 20
TINY = [
    "--dataset", "blobs", "--dataset-option", "num_samples=240", "--dataset-option", "num_classes=4",
    "--dataset-option", "dim=8", "--backbone", "mlp", "--backbone-option", "hidden=[32,6]", "--latent-dim", "8",
    "--epochs", str(EPOCHS), "--set", "checkpoint_every=1", "--robustness-samples", "8", "--no-progress",
    "--no-figures", "--optimizers", "default", "--seeds", "0",
]
RUN_NAMES = {"euclidean-LPC": "euclidean-LPC__default__seed0", "euclidean-NoPen": "euclidean-NoPen__default__seed0",
             "sphere": "sphere__default__seed0"}


# ------------------------------------------------------------------------------------------ processes
def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, None when it is gone (a zombie counts as gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return None if state in ("Z", "X") else (state, int(ppid))


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pid:
                found.add(int(entry.name))
    return found


def _wait_for(condition, what: str, timeout: float = 90.0, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Sweep:
    """``compare_manifolds.py`` with the tiny grid as a process of its own group (output in a file)."""

    def __init__(self, out: Path, geometries: list[str], *extra: str, workers: int = 2):
        self.out = out
        self.log = out.parent / f"{out.name}.{time.monotonic_ns()}.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(REPO / "benchmarks" / "compare_manifolds.py"), *TINY,
                   "--geometries", *geometries, "--workers", str(workers), "--out", str(out),
                   "--results-dir", str(out.parent / f"{out.name}.fragment"), *extra]  # not the checkout's docs
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log, "w") as handle:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def run_dir(self, geometry: str) -> Path:
        return self.out / "runs" / RUN_NAMES[geometry]

    def wait(self, timeout: float = 240.0) -> int:
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text()

    def records(self) -> dict[str, dict]:
        return {r["name"]: r for r in json.loads((self.out / "runs.json").read_text())}

    def cleanup(self) -> None:
        """Kill whatever is left of the process group (the test may have failed half-way)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture
def sweeps():
    started: list[Sweep] = []
    yield lambda *args, **kwargs: started.append(Sweep(*args, **kwargs)) or started[-1]
    for sweep in started:
        sweep.cleanup()


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


def _same_start(history: list[dict], before: list[dict], start: int) -> bool:
    """The first ``start`` epochs of ``history`` are those of ``before`` as measured (compared as JSON: NaN)."""
    n = min(start, len(before))  # history.json is written just after the checkpoint: it may lag by one
    return n >= 1 and json.dumps(history[:n]) == json.dumps(before[:n])


def _epochs_done(run_dir: Path) -> int:
    """Epochs in the run's checkpoint-backed history (0 before its first checkpoint)."""
    try:
        return len(_history(run_dir)) if (run_dir / "checkpoint.pt").is_file() else 0
    except (OSError, json.JSONDecodeError):
        return 0


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.slow
def test_sigkill_of_a_sweep_leaves_no_worker_and_its_relaunch_resumes_the_runs(tmp_path, sweeps):
    geometries = ["euclidean-LPC", "euclidean-NoPen"]
    sweep = sweeps(tmp_path / "cmp", geometries)
    dirs = [sweep.run_dir(g) for g in geometries]
    _wait_for(lambda: all(_epochs_done(d) >= 2 for d in dirs), "both runs past their second checkpoint")
    workers = _children(sweep.process.pid)
    assert len(workers) == 2, workers
    sweep.process.send_signal(signal.SIGKILL)
    assert sweep.wait() == -signal.SIGKILL
    # the workers die with their parent instead of training on as orphans
    _wait_for(lambda: all(_stat(pid) is None for pid in workers), f"workers {sorted(workers)} to die", timeout=20)
    assert all(_epochs_done(d) < EPOCHS for d in dirs)  # killed half-way: there is something to resume
    before = {d: _history(d) for d in dirs}

    again = sweeps(tmp_path / "cmp", geometries)
    assert again.wait() == 0, again.output()
    records = again.records()
    for geometry, run_dir in zip(geometries, dirs, strict=True):
        record = records[RUN_NAMES[geometry]]
        assert record["status"] == "ok"
        history = _history(run_dir)
        assert [row["epoch"] for row in history] == list(range(EPOCHS))
        # resumed from its checkpoint: the epochs trained before the kill are kept as they were measured
        assert _same_start(history, before[run_dir], record["resumed_at_epoch"])


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_resumes_while_the_others_finish(tmp_path, sweeps):
    geometries = ["euclidean-LPC", "euclidean-NoPen", "sphere"]  # two workers: one run waits in the queue
    sweep = sweeps(tmp_path / "cmp", geometries)
    _wait_for(lambda: sum(_epochs_done(sweep.run_dir(g)) >= 2 for g in geometries) == 2,
              "two runs past their second checkpoint")
    victim = min(_children(sweep.process.pid))
    os.kill(victim, signal.SIGKILL)
    assert sweep.wait() == 0, sweep.output()
    records = sweep.records()
    assert [r["status"] for r in records.values()] == ["ok"] * 3
    retried = [r for r in records.values() if "retried_after" in r]
    assert len(retried) == 1
    assert retried[0]["retried_after"] == [f"worker process {victim} was killed by SIGKILL"]
    assert retried[0]["resumed_at_epoch"] >= 2  # the retry resumed from the run's checkpoint
    assert [row["epoch"] for row in _history(Path(retried[0]["run_dir"]))] == list(range(EPOCHS))
    assert "runs failed" not in sweep.output()


@pytest.mark.slow
def test_a_run_whose_worker_dies_twice_fails_the_sweep_with_the_failure_listed(tmp_path, sweeps):
    geometries = ["euclidean-LPC", "euclidean-NoPen"]
    sweep = sweeps(tmp_path / "cmp", geometries)
    def two_workers():
        found = _children(sweep.process.pid)
        return found if len(found) == 2 else None

    workers = _wait_for(two_workers, "two workers")
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    retry = _wait_for(lambda: _children(sweep.process.pid) - workers, "the retry's worker")
    (retry,) = retry
    os.kill(retry, signal.SIGKILL)
    assert sweep.wait() == 1, sweep.output()
    records = sweep.records()
    failed = [r for r in records.values() if r["status"] != "ok"]
    assert len(failed) == 1 and len(records) == 2
    assert failed[0]["error"] == f"WorkerDied: worker process {retry} was killed by SIGKILL"
    assert failed[0]["retried_after"] == [f"worker process {victim} was killed by SIGKILL"]
    listing = sweep.output().rsplit("Took", 1)[1]  # the end of the output
    assert "1 of 2 runs failed" in listing
    assert f"{failed[0]['name']}: WorkerDied: worker process {retry} was killed by SIGKILL (after a retry)" in listing


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_and_its_workers_without_a_traceback(tmp_path, sweeps):
    geometries = ["euclidean-LPC", "euclidean-NoPen"]
    sweep = sweeps(tmp_path / "cmp", geometries)
    _wait_for(lambda: all(_epochs_done(sweep.run_dir(g)) >= 1 for g in geometries), "both runs training")
    workers = _children(sweep.process.pid)
    os.killpg(sweep.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    assert sweep.wait() == 130
    assert all(_stat(pid) is None for pid in workers)  # stopped before the sweep exits
    output = sweep.output()
    assert "interrupted; launch the same command again" in output and "Traceback" not in output


@pytest.mark.parametrize("mechanism", ["kernel", "watchdog"])
def test_a_worker_dies_with_its_parent(tmp_path, mechanism):
    # A parent forks a child that arms one of the two mechanisms of die_with_parent, then the parent is
    # SIGKILLed; the child (which would sleep for a minute) must end.
    arm = ("armed = _set_parent_death_signal()" if mechanism == "kernel"
           else "armed = _start_parent_watchdog(parent, signal_first=True, poll=0.05).is_alive()")
    armed = tmp_path / "armed"
    code = textwrap.dedent(f"""
        import os, time
        from lpc_geom.experiments.executors import _set_parent_death_signal, _start_parent_watchdog
        parent = os.getpid()
        child = os.fork()
        if child == 0:
            {arm}
            with open({str(armed)!r}, "w") as handle:
                handle.write(str(armed))
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        assert _wait_for(lambda: armed.is_file() and armed.read_text(), "the child to arm its mechanism") == "True"
        assert _stat(child) is not None
        parent.kill()
        parent.wait()
        _wait_for(lambda: _stat(child) is None, "the orphaned child to die", timeout=10)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(parent.pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _descendants(pid: int) -> set[int]:
    found, frontier = set(), {pid}
    while frontier:
        frontier = set().union(*(_children(p) for p in frontier)) - found
        found |= frontier
    return found


@pytest.mark.slow
def test_submitit_time_limit_requeues_the_job_and_it_resumes(tmp_path, sweeps):
    pytest.importorskip("submitit", reason="submitit (the optional extra 'cluster') is not installed")
    # submitit's local cluster: sweep -> job controller -> task process. Near its time limit a job gets
    # SIGUSR2 (from the controller, or from Slurm); here the test sends it once the run has checkpoints.
    sweep = sweeps(tmp_path / "cmp", ["euclidean-LPC"], "--executor", "submitit", "--submitit-cluster", "local",
                   "--timeout-min", "10")
    run_dir = sweep.run_dir("euclidean-LPC")
    _wait_for(lambda: _epochs_done(run_dir) >= 2, "the run past its second checkpoint")
    tasks = [pid for pid in _descendants(sweep.process.pid) if "submitit.core._submit" in _cmdline(pid)]
    assert len(tasks) == 1, tasks
    os.kill(tasks[0], signal.SIGUSR2)
    before = _history(run_dir)
    assert sweep.wait() == 0, sweep.output()
    record = sweep.records()["euclidean-LPC__default__seed0"]
    assert record["status"] == "ok" and "retried_after" not in record  # requeued by submitit, not retried
    assert record["resumed_at_epoch"] >= 2
    history = _history(run_dir)
    assert [row["epoch"] for row in history] == list(range(EPOCHS))
    assert _same_start(history, before, record["resumed_at_epoch"])
    logs = "".join(p.read_text() for p in (sweep.out / "submitit").rglob("*_log.*"))
    assert "Requeued job" in logs and "Calling checkpoint method" in logs


def test_sweep_task_checkpoint_resubmits_the_same_call(tmp_path):
    submitit = pytest.importorskip("submitit", reason="submitit (the optional extra 'cluster') is not installed")
    from lpc_geom.config import TrainConfig
    from lpc_geom.experiments.sweep import Job, SweepTask

    task = SweepTask(threads=1)
    job = Job("j", TrainConfig(out_dir=str(tmp_path / "j")))
    delayed = task.checkpoint(job)
    # submitit requeues with this call: the same task on the same job, which resumes from the run directory
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is task and delayed.args == (job,) and delayed.kwargs == {}
