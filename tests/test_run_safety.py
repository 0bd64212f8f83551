"""Trustworthy run directories: no code from run files, one run per directory, locks, stops, divergence, modes.

The attacks and faults are the real ones: a pickled payload in ``checkpoint.pt``, truncated files, a
second training into a finished run, two trainings at once, SIGTERM / SIGINT to a real ``lpc-geom train``
process, learning rates that diverge.
"""

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from processes import wait_for_epochs

from lpc_geom.cli import main
from lpc_geom.config import TrainConfig
from lpc_geom.experiments.runs import analyze_run, load_run, run_table
from lpc_geom.train import NonFiniteLossError, Trainer, TrainingStopped, train
from lpc_geom.train.checkpoint import RunFileError, UnsafeFileError, load_checkpoint
from lpc_geom.train.run_dir import (
    RUN_FILES,
    RunDirError,
    RunExistsError,
    RunInUseError,
    RunLock,
    check_finished,
    config_hash,
    is_fresh,
)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
DATA = {"num_classes": 4, "dim": 16, "num_samples": 512, "separation": 4.0}
# The paper's schedule, named: the steps per epoch below count every training sample (the adaptive default
# holds a validation split out of them).
TINY = {"dataset": "blobs", "dataset_options": DATA, "backbone_options": {"hidden": [32, 32]}, "latent_dim": 8,
        "batch_size": 64, "progress": False, "epochs": 2, "gamma_schedule": "exponential"}
FLAGS = ["--dataset", "blobs", "--gamma-schedule", "exponential", "--set", f"dataset_options={json.dumps(DATA)}",
         "--set", 'backbone_options={"hidden": [32, 32]}', "--latent-dim", "8", "--batch-size", "64",
         "--no-progress"]


def tiny(path, **changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "out_dir": str(path), **changes})


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lpc_geom", *map(str, args)], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=300, **kwargs)


def history_without_timing(path):
    return [{k: v for k, v in row.items() if k != "epoch_seconds"}
            for row in json.loads((Path(path) / "history.json").read_text())]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-epoch run (trained once per module; tests copy it)."""
    path = tmp_path_factory.mktemp("finished") / "run"
    train(tiny(path))
    return path


def copy_run(source, target):
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and item.name != "run.lock":
            (target / item.name).write_bytes(item.read_bytes())
    return target


# ------------------------------------------------------------------------------------------- safe loading
class _Payload:
    """Pickles as a call of os.system: loading it with weights_only=False runs the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_a_crafted_checkpoint_executes_no_code_under_any_command(finished, tmp_path):
    run = copy_run(finished, tmp_path / "shared")
    marker = tmp_path / "marker"
    checkpoint = run / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    torch.save({**state, "model": _Payload(marker)}, checkpoint)
    torch.load(checkpoint, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
    marker.unlink()
    for command in (["analyze", run], ["robustness", run, "--samples", "5"],
                    ["train", *FLAGS, "--epochs", "3", "--out", run, "--resume"]):
        result = cli(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert not marker.exists(), command
        error = result.stderr.strip().splitlines()
        assert len(error) == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"{checkpoint}: refused, not loaded: it holds a reference to posix.system" in error[0]


def test_truncated_and_pickled_files_are_refused_naming_the_file(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-200])
    assert main(["analyze", str(run)]) == 2
    assert f"{checkpoint}: not loaded: not a readable checkpoint" in capsys.readouterr().err
    with pytest.raises(RunFileError, match="truncated or corrupt"):
        load_checkpoint(checkpoint)
    torch.save([1, 2], checkpoint)
    with pytest.raises(RunFileError, match="expected a checkpoint dict, found list"):
        load_checkpoint(checkpoint)

    run = copy_run(finished, tmp_path / "objects")
    arrays = dict(np.load(run / "latents.npz"))
    np.savez(run / "latents.npz", **arrays, extra=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnsafeFileError, match=r"latents.npz: refused, not loaded: it holds pickled object arrays"):
        load_run(run)
    (run / "latents.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RunFileError, match=r"latents.npz: not loaded: not a readable .npz archive"):
        load_run(run)
    (run / "history.json").write_text('[{"epoch": 0')
    with pytest.raises(RunFileError, match=r"history.json: not loaded: not valid JSON"):
        load_run(run)


# ------------------------------------------------------------------------------------- one run per directory
def test_a_second_training_into_a_run_is_refused_unless_resume_or_overwrite(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    analyze_run(run, split="test")
    (run / "robustness.json").write_text(json.dumps({"n_samples": 5.0}))
    (run / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    args = ["train", *FLAGS, "--out", str(run)]

    assert main([*args, "--epochs", "2", "--seed", "1"]) == 2
    assert "already holds a run (finished)" in capsys.readouterr().err
    assert main([*args, "--epochs", "1", "--resume"]) == 2  # fewer epochs than the checkpoint has done
    assert "has trained 2 epochs; epochs=1 is fewer (pass --epochs 2 or more)" in capsys.readouterr().err
    assert main([*args, "--epochs", "2", "--resume", "--overwrite"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "run.lock"}
    assert after == {k: v for k, v in before.items() if k != "run.lock"}  # nothing touched, manifest included

    assert main([*args, "--epochs", "1", "--seed", "1", "--overwrite"]) == 0
    left = {p.name for p in run.iterdir()}
    assert "report_test.json" not in left and "robustness.json" not in left and "notes.txt" in left
    assert len(json.loads((run / "history.json").read_text())) == 1
    with pytest.raises(RunExistsError):
        train(tiny(run))


def test_cached_reports_record_their_source_and_are_recomputed_when_stale(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    analyze_run(run, split="test")
    analyze_run(run, split="train")
    assert is_fresh(run / "report_test.json") and is_fresh(run / "report_train.json")
    source = json.loads((run / "report_test.json").read_text())["source"]
    assert source["file"] == "latents.npz" and len(source["sha256"]) == 64
    # two more epochs: new latents, new weights; the cached reports are now of another model
    assert main(["train", *FLAGS, "--epochs", "3", "--out", str(run), "--resume"]) == 0
    assert not is_fresh(run / "report_test.json")
    assert "Not shown, computed from other latents or weights than this run's: report_test.json, " \
           "report_train.json" in run_table(run)
    capsys.readouterr()
    assert main(["robustness", str(run), "--samples", "10", "--no-lipschitz"]) == 0
    table = capsys.readouterr().out
    assert is_fresh(run / "report_test.json") and is_fresh(run / "robustness.json")
    assert "| test | `nc1` |" in table and "report_train.json" in table.split("Not shown")[1]
    assert json.loads((run / "robustness.json").read_text())["source"]["file"] == "checkpoint.pt"


def test_manifest_modes_and_stale_temporaries(tmp_path):
    old = os.umask(0o022)
    try:
        result = train(tiny(tmp_path / "run"))
    finally:
        os.umask(old)
    run = result.out_dir
    for file in run.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file.name
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "finished" and manifest["epochs_done"] == 2
    assert manifest["config_hash"] == config_hash(tiny(run).to_dict()) != config_hash(tiny(run, seed=5).to_dict())
    assert manifest["pid"] == os.getpid() and manifest["started"] <= manifest["ended"]
    assert manifest["lpc_geom_version"] and manifest["torch_version"] == torch.__version__
    old = os.umask(0o077)
    try:
        (run / ".checkpoint.pt.dead.tmp").write_bytes(b"half")
        (run / ".latents.npz.k2j4.tmp").write_bytes(b"half")
        train(tiny(run, epochs=3), resume=True)
    finally:
        os.umask(old)
    assert not list(run.glob(".*.tmp"))
    assert stat.S_IMODE((run / "checkpoint.pt").stat().st_mode) == 0o600
    assert json.loads((run / "run.json").read_text())["resumed_from"] == {"file": "checkpoint.pt", "epochs_done": 2}


def test_the_lock_names_its_holder_and_analyses_share_it(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        holder = subprocess.run([sys.executable, "-c", "import sys; from lpc_geom.train.run_dir import RunLock; "
                                 "RunLock(sys.argv[1]).acquire()", str(run)], env=ENV, capture_output=True, text=True)
        assert f"is being written by another training (pid {os.getpid()} on" in holder.stderr
        with pytest.raises(RunInUseError, match=f"pid {os.getpid()}"):
            RunLock(run, shared=True).acquire()
    with RunLock(run, shared=True), RunLock(run, shared=True), \
            pytest.raises(RunInUseError, match="being read by another process"):  # analyses share it
        RunLock(run).acquire()
    with RunLock(run):  # released by every holder above: free again, and the holder record is cleared
        pass
    assert (run / "run.lock").read_text() == ""
    assert "run.lock" not in RUN_FILES  # --overwrite never deletes a lock another process may be waiting on


# ----------------------------------------------------------------------------------------------- signals
def _start(out, epochs):
    return subprocess.Popen([sys.executable, "-m", "lpc_geom", "train", *FLAGS, "--set",
                             f"dataset_options={json.dumps({**DATA, 'num_samples': 4096})}", "--epochs", str(epochs),
                             "--checkpoint-every", "100", "--out", str(out)],
                            env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)



@pytest.mark.slow
def test_sigterm_and_sigint_stop_cleanly_and_resume_to_the_uninterrupted_result(tmp_path):
    epochs = 5
    signals = {signal.SIGTERM: 143, signal.SIGINT: 130}
    reference = _start(tmp_path / "reference", epochs)
    procs = {}
    for signum in signals:  # one at a time: a run left going while another is awaited could finish first
        procs[signum] = proc = _start(tmp_path / signal.Signals(signum).name, epochs)
        wait_for_epochs(proc, tmp_path / signal.Signals(signum).name, 1)
        proc.send_signal(signal.SIGSTOP)  # paused (still holding its lock) wherever it is in epoch 1 or 2
    # a second training into a directory being trained meanwhile: refused, naming the holder
    second = cli("train", *FLAGS, "--epochs", str(epochs), "--out", tmp_path / "SIGTERM", "--overwrite")
    assert second.returncode == 2, second.stderr
    assert f"being written by another training (pid {procs[signal.SIGTERM].pid} on" in second.stderr
    for signum, proc in procs.items():
        proc.send_signal(signum)
        proc.send_signal(signal.SIGCONT)
    commands = {}
    for signum, proc in procs.items():
        out = tmp_path / signal.Signals(signum).name
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == signals[signum], stderr
        assert "Traceback" not in stderr
        line = stderr.strip().splitlines()[-1]
        epoch = int(line.split("stopped at epoch ")[1].split(";")[0])
        assert 1 <= epoch < epochs, line
        command = shlex.split(line.split("resume with: ")[1])
        assert command[:4] == [sys.executable, "-m", "lpc_geom", "train"] and command[-1] == "--resume"
        manifest = json.loads((out / "run.json").read_text())
        assert manifest["status"] == "stopped" and manifest["stopped_by"] == signal.Signals(signum).name
        assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= epoch - 1  # written at the stop, not every 100
        with pytest.raises(RunDirError, match="its manifest says 'stopped'"):
            check_finished(out)  # analyses refuse it
        commands[out] = command
    resumed = {out: subprocess.Popen(command, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True) for out, command in commands.items()}
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    for out, proc in resumed.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        assert json.loads((out / "run.json").read_text())["status"] == "finished"
        assert history_without_timing(out) == history_without_timing(tmp_path / "reference")
        for key in ("train_latents", "test_latents", "test_logits"):
            np.testing.assert_array_equal(np.load(out / "latents.npz")[key],
                                          np.load(tmp_path / "reference" / "latents.npz")[key])


def test_a_stop_inside_an_epoch_resumes_that_epoch_exactly(tmp_path):
    """In a library call: the signal arrives at a known step, TrainingStopped is raised, handlers restored."""
    from lpc_geom.data import load_dataset

    calls = {"steps": 0, "stop_at": 11}  # epoch 1 (7 steps each), its 4th step

    def augment(x, generator):  # consumes the epoch generator, so its saved state matters
        calls["steps"] += 1
        if calls["steps"] == calls["stop_at"]:
            os.kill(os.getpid(), signal.SIGINT)
        return x + 0.01 * torch.randn(x.shape, generator=generator, dtype=x.dtype)

    def dataset():
        data = load_dataset("blobs", **DATA)
        data.augment = augment
        return data

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        previous = signal.getsignal(signal.SIGINT)
        with pytest.raises(TrainingStopped) as info:
            train(tiny(tmp_path / "stopped", epochs=3), dataset=dataset())
        assert signal.getsignal(signal.SIGINT) is previous
        assert info.value.signum == signal.SIGINT and info.value.epoch == 1
        state = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
        assert state["epoch"] == 0 and state["partial"]["epoch"] == 1 and state["partial"]["step"] == 4
        resumed = train(tiny(tmp_path / "stopped", epochs=3), dataset=dataset(), resume=True)
        calls["stop_at"] = None  # no signal this time
        straight = train(tiny(tmp_path / "straight", epochs=3), dataset=dataset())
    finally:
        torch.set_num_threads(threads)
    assert history_without_timing(resumed.out_dir) == history_without_timing(straight.out_dir)
    np.testing.assert_array_equal(np.load(resumed.out_dir / "latents.npz")["test_latents"],
                                  np.load(straight.out_dir / "latents.npz")["test_latents"])


# -------------------------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_divergence_stops_with_a_last_good_state_and_resumes_from_it(optimizer, tmp_path, capsys):
    run = tmp_path / optimizer
    args = ["train", *FLAGS, "--optimizer", optimizer, "--epochs", "2", "--out", str(run)]
    assert main([*args, "--lr", "1e6"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    last_good = run / "checkpoint_last_good.pt"
    assert len(error) == 1 and "lpc-geom train: error: non-finite" in error[0]
    assert f"optimizer={optimizer}, gamma=0.01, lr=1e+06" in error[0] and f": {last_good};" in error[0]
    assert " at epoch 0, step " in error[0] and "(the initial state)" in error[0]
    state = load_checkpoint(last_good)
    initial = Trainer(tiny(tmp_path / "fresh", optimizer=optimizer)).model.state_dict()
    assert state["epoch"] == -1
    for key, value in initial.items():
        assert torch.equal(state["model"][key], value), key
    assert json.loads((run / "run.json").read_text())["status"] == "failed"

    assert main([*args, "--lr", "1e-3", "--resume"]) == 2  # it diverged before its first periodic checkpoint
    assert "no checkpoint.pt there (it stopped before its first checkpoint)" in capsys.readouterr().err
    assert main([*args, "--lr", "1e-3", "--seed", "4", "--resume", "--from-last-good"]) == 2
    assert "differs from the checkpoint's in ['seed']; only [" in capsys.readouterr().err
    assert main([*args, "--lr", "1e-3", "--resume", "--from-last-good"]) == 0
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "finished" and manifest["resumed_from"]["file"] == "checkpoint_last_good.pt"
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1] and all(r["lr"] == 1e-3 for r in history)


def test_non_finite_latents_after_finite_losses_are_divergence_too(tmp_path):
    """SGD at lr 1e6, one step per epoch: the losses stay finite while the weights grow until the latents overflow."""
    pattern = r"non-finite (loss|parameters|test latents|test logits|training latents) at epoch (\d+), step"
    with pytest.raises(NonFiniteLossError, match=pattern) as info:
        train(tiny(tmp_path / "run", optimizer="sgd", lr=1e6, batch_size=512, epochs=5))
    epoch = int(re.search(pattern, str(info.value)).group(2))
    state = load_checkpoint(info.value.last_good)
    assert state["epoch"] == epoch - 1 and len(state["history"]) == epoch
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_one_config_comparison_for_resumptions_and_sweeps():
    from lpc_geom.train.run_dir import LAST_GOOD_CHANGES, RESUMABLE_CHANGES, config_differences

    wanted = TrainConfig(epochs=3, gamma_options={"every": 2}).to_dict()
    saved = {**wanted, "progress": False, "epochs": 5, "gamma_options": {"every": 2}}
    assert config_differences(saved, wanted) == ["epochs"]  # progress is a reusable change
    assert config_differences(saved, wanted, ignore=RESUMABLE_CHANGES) == []
    del saved["kfac_fisher"]  # a key added after the run was trained counts as its default
    assert config_differences(saved, wanted, ignore=RESUMABLE_CHANGES) == []
    saved.update(lr=0.5, seed=3, backbone_options=(("hidden", [16]),))
    assert config_differences(saved, wanted, ignore=RESUMABLE_CHANGES) == ["backbone_options", "lr", "seed"]
    assert config_differences(saved, wanted, ignore=LAST_GOOD_CHANGES) == ["backbone_options", "seed"]
    assert config_differences({**wanted, "removed_key": 1}, wanted) == ["removed_key"]
    assert config_differences({"latent_dim": [4][0]}, {"latent_dim": 4.0}) == []  # JSON: 4 == 4.0


def test_a_sweep_reads_a_run_config_once_and_refuses_a_corrupt_record(tmp_path, monkeypatch):
    from lpc_geom.experiments import sweep
    from lpc_geom.train import checkpoint

    job = sweep.Job("r", TrainConfig(out_dir=str(tmp_path / "r"), epochs=1, progress=False))
    job.run_dir.mkdir()
    (job.run_dir / "record.json").write_text('{"status": "ok"')
    with pytest.raises(RunFileError, match=r"record\.json: not loaded: not valid JSON"):
        sweep.finished_record(job)
    # a half-trained run of the job: every file of a finished training but a history one epoch short
    from lpc_geom.train.checkpoint import save_checkpoint

    (job.run_dir / "config.json").write_text(json.dumps(job.config.to_dict()))
    for name in ("history.json", "summary.json"):
        (job.run_dir / name).write_text("[]" if name == "history.json" else "{}")
    (job.run_dir / "latents.npz").write_bytes(b"")
    save_checkpoint({"epoch": 0}, job.run_dir / "checkpoint.pt")
    reads = []
    original = checkpoint.read_json
    monkeypatch.setattr(sweep, "read_json", lambda path: reads.append(Path(path).name) or original(path))
    monkeypatch.setattr("lpc_geom.train.train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no training")))
    record = sweep._run_job(job, None)
    assert record["status"] == "failed" and "no training" in record["error"] and record["resumed_at_epoch"] == 1
    assert reads.count("config.json") == 1


def test_a_signal_during_a_checkpoint_write_is_delivered_after_the_file_is_whole(tmp_path, monkeypatch):
    """submitit's requeue handler raises SystemExit wherever it lands; inside torch.save that lost the file."""
    import torch

    from lpc_geom.train import checkpoint

    received = []

    def requeue(signum, _frame):
        received.append(signum)
        raise SystemExit(0)

    real_save = torch.save

    def save_and_get_signalled(obj, handle):
        os.kill(os.getpid(), signal.SIGUSR2)  # arrives mid-write, as near a time limit
        time.sleep(0.05)
        assert received == []  # not yet: the write goes on
        real_save(obj, handle)

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        monkeypatch.setattr(checkpoint.torch, "save", save_and_get_signalled)
        state = {"epoch": 3, "weights": torch.arange(1000.0)}
        with pytest.raises(SystemExit):
            checkpoint.save_checkpoint(state, tmp_path / "checkpoint.pt")
        assert received == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is requeue
    finally:
        signal.signal(signal.SIGUSR2, previous)
    loaded = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], state["weights"])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_per_epoch_progress_is_fsynced_only_with_a_checkpoint(tmp_path, monkeypatch):
    import lpc_geom.train.checkpoint as checkpoint_module

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    result = train(tiny(tmp_path / "run", epochs=5, checkpoint_every=2), stop_signals=())
    names = [re.sub(r"^\.(.*)\.[0-9a-f]{8}\.tmp$", r"\1", name) for name in synced]
    # epochs 2 and 4 write a checkpoint, epoch 5 the last one: their progress files are fsynced, epochs 1 and 3 not
    assert names.count("checkpoint.pt") == 3 and names.count("history.json") == 3
    assert names.count("history.csv") == 3
    assert names.count("run.json") >= 3 + 2  # the epochs' three, and the manifest's opening and closing writes
    assert len(json.loads((result.out_dir / "history.json").read_text())) == 5  # every epoch on disk all the same
    assert json.loads((result.out_dir / "run.json").read_text())["epochs_done"] == 5
