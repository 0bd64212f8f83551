"""End-to-end training: determinism, resume after a kill, non-finite loss, collapse warning, DDP."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lpc_geom.config import TrainConfig
from lpc_geom.train import CollapseToOriginWarning, NonFiniteLossError, train

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "dataset": "blobs",
    "dataset_options": {"num_classes": 4, "dim": 16, "num_samples": 512, "separation": 4.0},
    "backbone_options": {"hidden": [32, 32]},
    "latent_dim": 8,
    "batch_size": 64,
    "progress": False,
}


def tiny_config(tmp_path, name="run", **changes):
    return TrainConfig(**{**TINY, "out_dir": str(tmp_path / name), **changes})


def cli(*args):
    return [sys.executable, "-m", "lpc_geom", *args]


def test_training_writes_outputs_and_is_deterministic(tmp_path):
    cfg = tiny_config(tmp_path, "a", epochs=4)
    first = train(cfg)
    second = train(cfg.replace(out_dir=str(tmp_path / "b")))
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]
    out = first.out_dir
    for name in ("config.json", "history.json", "history.csv", "checkpoint.pt", "latents.npz", "summary.json"):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]
    assert {"train_loss", "train_acc", "test_acc", "gamma", "lr", "sigma_w_rel", "separation_ratio",
            "norm_cv", "train_sigma_w_rel", "train_separation_ratio", "train_norm_cv"} <= set(history[0])
    arrays = np.load(out / "latents.npz")
    assert arrays["train_latents"].shape == (len(arrays["train_labels"]), 8)
    assert arrays["test_predictions"].shape == arrays["test_labels"].shape
    assert history[-1]["test_acc"] > 0.5  # well-separated blobs


def test_kfac_start_epoch_switches_the_preconditioner_on(tmp_path):
    """Before kfac_start_epoch a kfac-adam run is exactly the AdamW run; from it on, K-FAC changes the steps."""
    adamw = train(tiny_config(tmp_path, "adamw", epochs=3, optimizer="adamw")).history
    late = train(tiny_config(tmp_path, "late", epochs=3, optimizer="kfac-adam", kfac_start_epoch=2)).history
    never = train(tiny_config(tmp_path, "never", epochs=3, optimizer="kfac-adam", kfac_start_epoch=3)).history
    losses = [[r["train_loss"] for r in h] for h in (adamw, late, never)]
    assert losses[2] == losses[0]
    assert losses[1][:2] == losses[0][:2]
    assert losses[1][2] != losses[0][2]


def test_kfac_damping_late_applies_from_the_learning_rate_decay(tmp_path):
    common = {"epochs": 3, "optimizer": "kfac-adam", "lr_halve_from": 2, "lr_halve_every": 1}
    plain = train(tiny_config(tmp_path, "plain", **common)).history
    late = train(tiny_config(tmp_path, "late", kfac_damping_late=0.5, **common)).history
    assert [r["train_loss"] for r in late[:2]] == [r["train_loss"] for r in plain[:2]]
    assert late[2]["train_loss"] != plain[2]["train_loss"]
    from lpc_geom.train.trainer import Trainer

    trainer = Trainer(tiny_config(tmp_path, "probe", kfac_damping=1e-2, kfac_damping_late=1e-3, **common))
    assert [trainer.kfac_damping_at(e) for e in (0, 1, 2, 5)] == [1e-2, 1e-2, 1e-3, 1e-3]


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    """Kill a CLI run once it has checkpointed mid-run, resume it, compare with an uninterrupted run."""
    epochs = 12
    data_options = {**TINY["dataset_options"], "num_samples": 4096}  # epochs long enough to kill mid-run
    common = ["train", "--set", f"dataset_options={json.dumps(data_options)}",
              "--set", f"backbone_options={json.dumps(TINY['backbone_options'])}",
              "--dataset", "blobs", "--latent-dim", "8", "--batch-size", "64", "--epochs", str(epochs),
              "--checkpoint-every", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli(*common, "--out", str(killed)), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint, history = killed / "checkpoint.pt", killed / "history.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists() and history.exists() and len(json.loads(history.read_text())) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(checkpoint, weights_only=True)["epoch"] < epochs - 1
    resumed = subprocess.run(cli(*common, "--out", str(killed), "--resume"), env=env, cwd=REPO,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    full = tmp_path / "full"
    straight = subprocess.run(cli(*common, "--out", str(full)), env=env, cwd=REPO, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    a = json.loads((killed / "history.json").read_text())
    b = json.loads((full / "history.json").read_text())
    assert [r["epoch"] for r in a] == list(range(epochs))
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "test_acc", "sigma_w_rel"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (ra["epoch"], key)
    np.testing.assert_allclose(np.load(killed / "latents.npz")["test_latents"],
                               np.load(full / "latents.npz")["test_latents"], rtol=1e-5, atol=1e-7)


def test_resume_refuses_a_different_config(tmp_path):
    cfg = tiny_config(tmp_path, epochs=2)
    train(cfg)
    # a run directory that was moved (or copied) continues, here for two more epochs
    shutil.copytree(tmp_path / "run", tmp_path / "moved")
    longer = train(cfg.replace(out_dir=str(tmp_path / "moved"), epochs=4), resume=True)
    assert [r["epoch"] for r in longer.history] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"differs from the checkpoint's in \['seed'\]"):
        train(cfg.replace(seed=3, epochs=4), resume=True)


def test_non_finite_loss_names_epoch_gamma_lr_and_keeps_last_good(tmp_path):
    cfg = tiny_config(tmp_path, epochs=6, gamma_schedule="exponential",
                      gamma_options={"start": 1.0, "factor": 1e30, "gamma_max": 1e300}, lr=1e-3, checkpoint_every=1)
    # gamma x1e30 per epoch first empties the latent space (the warning), then overflows the loss
    expected = r"loss at epoch 2, step 0 of \d+ \(optimizer=auto, gamma=.*lr=0\.001"
    with pytest.raises(NonFiniteLossError, match=expected) as info, \
            pytest.warns(CollapseToOriginWarning, match="collapsed onto the origin"):
        train(cfg)
    last_good = tmp_path / "run" / "checkpoint_last_good.pt"
    assert f"Last good state (end of epoch 1): {last_good}" in str(info.value) and info.value.last_good == last_good
    state = torch.load(last_good, weights_only=True)
    # the state at the end of epoch 1: what the periodic checkpoint of that epoch holds, not mid-epoch-2 weights
    periodic = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == periodic["epoch"] == 1 and state["partial"] is None
    for key, value in periodic["model"].items():
        assert torch.equal(state["model"][key], value), key
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_collapse_onto_origin_is_warned(tmp_path):
    # the exponential schedule: gamma reaches 1e7 whatever the accuracy (the adaptive controller would hold it)
    cfg = tiny_config(tmp_path, epochs=4, gamma_schedule="exponential",
                      gamma_options={"start": 1e4, "factor": 10.0, "gamma_max": 1e8},
                      dataset_options={**TINY["dataset_options"], "separation": 0.5})
    with pytest.warns(CollapseToOriginWarning, match="collapsed onto the origin"):
        result = train(cfg)
    assert any(r["collapsed_to_origin"] for r in result.history)


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
@pytest.mark.parametrize("optimizer", [
    ["--optimizer", "adamw"],
    # K-FAC with the exact Fisher: its statistics are all-reduced over the global batch, so the ranks agree
    # with one process (the sampled "mc" Fisher draws different labels per shard)
    ["--optimizer", "kfac-adam", "--kfac-fisher", "exact", "--kfac-update-freq", "2"],
], ids=["adamw", "kfac-adam"])
def test_ddp_two_processes_match_single_process(tmp_path, optimizer):
    """Real DDP (torchrun, gloo, 2 CPU processes) against one process with the same seed."""
    args = ["train", "--set", f"dataset_options={json.dumps(TINY['dataset_options'])}",
            "--set", f"backbone_options={json.dumps(TINY['backbone_options'])}",
            "--dataset", "blobs", "--latent-dim", "8", "--batch-size", "64", "--epochs", "3", "--no-progress",
            *optimizer]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(cli(*args, "--out", str(tmp_path / "single")), env=env, cwd=REPO,
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "lpc_geom", *args, "--out", str(tmp_path / "ddp")]
    ddp = subprocess.run(torchrun, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = json.loads((tmp_path / "single" / "history.json").read_text())
    b = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["test_acc"] == pytest.approx(rb["test_acc"], abs=1e-3)
    la = np.load(tmp_path / "single" / "latents.npz")["test_latents"]
    lb = np.load(tmp_path / "ddp" / "latents.npz")["test_latents"]
    np.testing.assert_allclose(la, lb, rtol=1e-3, atol=1e-4)
    if "kfac-adam" in optimizer:  # the preconditioner really ran on every rank: same factors as one process
        from lpc_geom.train.checkpoint import load_checkpoint

        pa, pb = (load_checkpoint(tmp_path / run / "checkpoint.pt")["preconditioner"] for run in ("single", "ddp"))
        assert pa["steps"] == pb["steps"] > 0
        for name, layer in pa["layers"].items():
            for key, value in layer["ema"].items():
                torch.testing.assert_close(pb["layers"][name]["ema"][key], value, rtol=1e-3, atol=1e-6)


def test_a_batch_too_small_for_the_processes_is_refused_before_training(tmp_path, monkeypatch):
    from lpc_geom.train.distributed import check_batch_size

    check_batch_size(4, 2)
    check_batch_size(2, 1)
    with pytest.raises(ValueError, match=r"batch_size=3 is too small for 2 processes.*--batch-size 4 or more"):
        check_batch_size(3, 2)
    monkeypatch.setenv("WORLD_SIZE", "4")  # refused before the process group is joined
    with pytest.raises(ValueError, match="batch_size=7 is too small for 4 processes"):
        train(tiny_config(tmp_path, batch_size=7, epochs=1))
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_ddp_refuses_a_batch_smaller_than_two_samples_per_process(tmp_path):
    """Real DDP (torchrun, gloo, 2 CPU processes): a global batch of 3 would give one process one sample."""
    args = ["train", "--set", f"dataset_options={json.dumps(TINY['dataset_options'])}",
            "--set", f"backbone_options={json.dumps(TINY['backbone_options'])}", "--dataset", "blobs",
            "--batch-size", "3", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "ddp")]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "lpc_geom", *args]
    ddp = subprocess.run(torchrun, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert ddp.returncode != 0
    assert "lpc-geom train: error: batch_size=3 is too small for 2 processes" in ddp.stderr
    assert not (tmp_path / "ddp" / "history.json").exists()


def test_final_robustness_is_written_with_the_summary(tmp_path):
    result = train(tiny_config(tmp_path, epochs=2, final_robustness_samples=30))
    report = json.loads((result.out_dir / "robustness.json").read_text())
    assert report["n_samples"] == 30
    assert result.final["robust_deepfool_mean_relative_norm"] == pytest.approx(report["deepfool_mean_relative_norm"])
    assert json.loads((result.out_dir / "summary.json").read_text())["robust_n_samples"] == 30


def test_lpc_geom_train_is_the_trainer_whether_or_not_the_package_was_imported_first(tmp_path):
    """`lpc_geom.train(config)` trains even after a submodule import bound `lpc_geom.train` to the package."""
    settings = json.dumps({**TINY, "epochs": 2})
    code = (
        "import json, sys, lpc_geom\n"
        "import lpc_geom.train.schedules\n"  # binds lpc_geom.train to the package
        "from lpc_geom import TrainConfig\n"
        "assert lpc_geom.train is sys.modules['lpc_geom.train']\n"
        f"config = TrainConfig(**{{**json.loads({settings!r}), 'out_dir': sys.argv[1]}})\n"
        "result = lpc_geom.train(config)\n"
        "print(type(result).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "RunResult"
    assert (tmp_path / "run" / "config.json").is_file()
