"""CollapseMonitor: figures against closed forms, history and files, the trainer's use, Lightning and TensorBoard."""

import csv
import json
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lpc_geom.config import TrainConfig
from lpc_geom.data import make_blobs
from lpc_geom.models import build_model
from lpc_geom.monitor import CollapseMonitor, TensorBoardMonitor, lightning_callback, write_history
from lpc_geom.train import train


def closed_forms(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Euclidean figures straight from their definitions (independent of lpc_geom.analysis)."""
    classes = np.unique(y)
    centres = np.stack([z[y == c].mean(0) for c in classes])
    own = centres[np.searchsorted(classes, y)]
    within = ((z - own) ** 2).sum()
    total = ((z - z.mean(0)) ** 2).sum()
    distances = np.linalg.norm(z[:, None, :] - centres[None], axis=2)
    own_distance = distances[np.arange(len(z)), np.searchsorted(classes, y)]
    distances[np.arange(len(z)), np.searchsorted(classes, y)] = np.inf
    norms = np.linalg.norm(z, axis=1)
    return {"sigma_w_rel": within / total, "separation_ratio": float(np.mean(distances.min(1) / own_distance)),
            "norm_cv": norms.std() / norms.mean()}


def blobs_model(seed=0, num_classes=3):
    torch.manual_seed(seed)
    return build_model("mlp", "LPC", (8,), num_classes, latent_dim=4, hidden=[16])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_per=st.integers(2, 6), k=st.integers(2, 4), d=st.integers(2, 5))
def test_figures_match_closed_forms_and_ignore_sample_order(seed, n_per, k, d):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    z = rng.normal(size=(len(y), d)) + 3 * rng.normal(size=(k, d))[y]
    monitor = CollapseMonitor()
    got = monitor.compute(torch.from_numpy(z), torch.from_numpy(y), prefix="p_")
    expected = closed_forms(z, y)
    assert set(got) == {f"p_{name}" for name in CollapseMonitor.figures}
    for name, value in expected.items():
        assert got[f"p_{name}"] == pytest.approx(value, rel=1e-9, abs=1e-12)
    order = rng.permutation(len(y))
    shuffled = monitor.compute(z[order], y[order], prefix="p_")
    assert shuffled == pytest.approx(got, rel=1e-9, abs=1e-12)
    assert monitor.history == []  # compute records nothing


def test_record_builds_one_row_per_epoch_and_refuses_disorder():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 5)
    z = rng.normal(size=(15, 4)) + 4 * np.eye(3, 4)[y]
    monitor = CollapseMonitor()
    first = monitor.record(0, z, y)
    monitor.record(0, z[::-1].copy(), y[::-1].copy(), prefix="train_")
    monitor.record(2, z * 0.5, y)
    assert [row["epoch"] for row in monitor.history] == [0, 2]
    assert monitor.history[0]["sigma_w_rel"] == first["sigma_w_rel"]
    assert monitor.history[0]["train_sigma_w_rel"] == pytest.approx(first["sigma_w_rel"], rel=1e-12)
    # scale invariance of sigma_w_rel and the separation ratio; norm_cv too (std and mean both scale)
    assert monitor.history[1] == pytest.approx({"epoch": 2, **first}, rel=1e-12)
    with pytest.raises(ValueError, match="epoch 1 comes after epoch 2"):
        monitor.record(1, z, y)
    with pytest.raises(ValueError, match=r"already has \['norm_cv', 'separation_ratio', 'sigma_w_rel'\]"):
        monitor.record(2, z, y)
    with pytest.raises(ValueError, match="non-negative integer"):
        monitor.record(-1, z, y)
    with pytest.raises(ValueError, match="non-negative integer"):
        monitor.record(3.0, z, y)
    with pytest.raises(ValueError, match="has 14 entries for 15 samples"):
        monitor.record(3, z, y[:-1])
    with pytest.raises(ValueError, match="1-D integer array"):
        monitor.record(3, z, y.astype(float))
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        monitor.record(3, z[:, 0], y)
    with pytest.raises(TypeError, match=r"torch\.Tensor or numpy array"):
        monitor.record(3, z.tolist(), y)
    assert [row["epoch"] for row in monitor.history] == [0, 2]  # refused calls recorded nothing


def test_constructor_and_update_validate_their_arguments():
    x, y = torch.randn(10, 8), torch.arange(10) % 3
    with pytest.raises(TypeError, match="mapping"):
        CollapseMonitor([x, y, x])
    with pytest.raises(TypeError, match="prefix must be a str"):
        CollapseMonitor({1: (x, y)})
    with pytest.raises(ValueError, match="has 9 entries for 10 samples"):
        CollapseMonitor((x, y[:-1]))
    with pytest.raises(ValueError, match="positive integer"):
        CollapseMonitor((x, y), batch_size=0)
    with pytest.raises(ValueError, match="no probe sets"):
        CollapseMonitor().update(blobs_model(), 0)
    with pytest.raises(TypeError, match="has no tensor attribute 'latents'; pass CollapseMonitor\\(latents_of"):
        CollapseMonitor((x, y)).update(nn.Linear(8, 4), 0)
    with pytest.raises(ValueError, match=r"latents_of must return a tensor of shape \(4, d\)"):
        CollapseMonitor((x, y), batch_size=4, latents_of=lambda m, b: m(b)[:2]).update(nn.Linear(8, 4), 0)
    calls = []
    counting = CollapseMonitor((x, y), latents_of=lambda m, b: calls.append(len(b)) or m(b))
    counting.update(nn.Linear(8, 4), 2)
    with pytest.raises(ValueError, match="epoch 1 comes after epoch 2"):
        counting.update(nn.Linear(8, 4), 1)
    assert calls == [10]  # the refused update ran no forward pass


def test_update_evaluates_probes_in_eval_mode_in_batches_like_record():
    data = make_blobs(num_classes=3, dim=8, num_samples=120, seed=1)
    model = blobs_model().double()
    model.train()
    monitor = CollapseMonitor({"": (data.x_test, data.y_test), "train_": (data.x_train[:50], data.y_train[:50])},
                              batch_size=7)
    figures = monitor.update(model, 0)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        reference = CollapseMonitor()
        reference.record(0, model(data.x_test.double()).latents, data.y_test)
        reference.record(0, model(data.x_train[:50].double()).latents, data.y_train[:50], prefix="train_")
    assert monitor.history == [pytest.approx(reference.history[0], rel=1e-10)]
    assert figures == {k: v for k, v in monitor.history[0].items() if k != "epoch"}


def test_history_files_and_plot(tmp_path):
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(2), 6)
    monitor = CollapseMonitor()
    for epoch in range(3):
        monitor.record(epoch, rng.normal(size=(12, 3)) + (4 - epoch) * np.eye(2, 3)[y], y)
    monitor.write(tmp_path)
    assert json.loads((tmp_path / "history.json").read_text()) == monitor.history
    with open(tmp_path / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for row, expected in zip(rows, monitor.history, strict=True):
        assert float(row["sigma_w_rel"]) == pytest.approx(expected["sigma_w_rel"], rel=1e-7)
    path = monitor.plot(tmp_path / "collapse.png")
    assert (tmp_path / "collapse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path is not None
    with pytest.raises(ValueError, match="history is empty"):
        CollapseMonitor().plot()


def test_write_history_keeps_columns_in_first_appearance_order(tmp_path):
    write_history([{"epoch": 0, "a": 1.0}, {"epoch": 1, "b": float("nan"), "a": 0.125}], tmp_path)
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines == ["epoch,a,b", "0,1,", "1,0.125,nan"]


def test_trainer_history_figures_are_the_monitors(tmp_path):
    """The trainer's last history row holds the monitor's figures of the final test latents."""
    cfg = TrainConfig(dataset="blobs", dataset_options={"num_classes": 3, "dim": 8, "num_samples": 200},
                      backbone_options={"hidden": [16]}, latent_dim=4, batch_size=50, epochs=2, progress=False,
                      out_dir=str(tmp_path / "run"))
    result = train(cfg)
    arrays = np.load(result.out_dir / "latents.npz")
    figures = CollapseMonitor().compute(arrays["test_latents"], arrays["test_labels"])
    last = json.loads((result.out_dir / "history.json").read_text())[-1]
    for name, value in figures.items():
        assert last[name] == pytest.approx(value, rel=1e-5)
        assert np.isfinite(last[f"train_{name}"])


def _toy_training(model, data, epochs, after_epoch):
    """A plain PyTorch loop (cross-entropy on the logits) calling ``after_epoch(model, epoch)``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(epochs):
        model.train()
        for batch in torch.arange(len(data.y_train)).split(32):
            loss = nn.functional.cross_entropy(model(data.x_train[batch]).logits, data.y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        after_epoch(model, epoch)


def test_tensorboard_scalars_equal_the_monitor_history(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_blobs(num_classes=3, dim=8, num_samples=150, seed=3)
    monitor = CollapseMonitor({"": (data.x_test, data.y_test), "train_": (data.x_train[:60], data.y_train[:60])})
    board = TensorBoardMonitor(monitor, tmp_path / "tb")
    _toy_training(blobs_model(), data, 2, board.update)
    board.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert sorted(tags) == sorted(f"collapse/{k}" for k in monitor.history[0] if k != "epoch")
    assert [row["epoch"] for row in monitor.history] == [0, 1]
    for tag in tags:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [0, 1]
        expected = [np.float32(row[tag.removeprefix("collapse/")]) for row in monitor.history]
        assert [np.float32(s.value) for s in scalars] == expected
    with pytest.raises(TypeError, match="SummaryWriter or a log directory"):
        TensorBoardMonitor(monitor, 3)


def test_lightning_callback_logs_the_monitor_history(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    data = make_blobs(num_classes=3, dim=8, num_samples=150, seed=4)

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = blobs_model()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self(x).logits, y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    monitor = CollapseMonitor({"": (data.x_test, data.y_test), "train_": (data.x_train[:60], data.y_train[:60])})
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x_train, data.y_train), batch_size=32)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="csv"),
                         callbacks=[lightning_callback(monitor)], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(Module(), loader)
    assert [row["epoch"] for row in monitor.history] == [0, 1]
    names = [k for k in monitor.history[0] if k != "epoch"]
    for name in names:
        assert float(trainer.logged_metrics[f"collapse/{name}"]) == pytest.approx(monitor.history[1][name],
                                                                                  rel=1e-6)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("collapse/sigma_w_rel")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for row, expected in zip(rows, monitor.history, strict=True):
        for name in names:
            assert float(row[f"collapse/{name}"]) == pytest.approx(expected[name], rel=1e-6)
    with pytest.raises(ValueError, match="probe sets"):
        lightning_callback(CollapseMonitor())


def test_a_missing_optional_package_names_its_extra(monkeypatch):
    from lpc_geom import monitor as module

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'lpc_geom\[lightning\]'"):
        module._lightning()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'lpc_geom\[tensorboard\]'"):
        TensorBoardMonitor(CollapseMonitor(), "unused")
