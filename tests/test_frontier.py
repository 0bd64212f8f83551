"""`lpc-geom sweep-gamma`: the accuracy-vs-collapse frontier end to end on a tiny grid."""

import csv
import json

import pytest
from PIL import Image

from lpc_geom.cli import main
from lpc_geom.config import TrainConfig
from lpc_geom.experiments.frontier import frontier_jobs, frontier_table

pytestmark = pytest.mark.slow

DATA = {"num_classes": 3, "dim": 8, "num_samples": 300}
FLAGS = ["--dataset", "blobs", "--set", f"dataset_options={json.dumps(DATA)}",
         "--set", 'backbone_options={"hidden": [16, 16]}', "--latent-dim", "4", "--epochs", "2", "--no-progress"]


def test_jobs_cover_ceilings_adaptive_and_baselines(tmp_path):
    base = TrainConfig(dataset="blobs", dataset_options=DATA, latent_dim=4,
                       gamma_options={"factor": 1.2, "tolerance": 0.02})
    jobs = frontier_jobs(base, [0.1, 10.0], [0, 1], tmp_path)
    assert [j.name for j in jobs] == [f"{v}-s{s}" for v in ("LPC-gmax0.1", "LPC-gmax10", "LPC-adaptive", "LinPen",
                                                            "NoPen") for s in (0, 1)]
    by = {j.name: j.config for j in jobs}
    # the adaptive base stops where it likes: the ceilings run the paper's schedule, without adaptive-only options
    assert by["LPC-gmax10-s1"].gamma_schedule == "exponential"
    assert by["LPC-gmax10-s1"].gamma_options == {"factor": 1.2, "gamma_max": 10.0}
    assert by["LPC-adaptive-s0"].gamma_options == {"factor": 1.2, "tolerance": 0.02}
    assert by["NoPen-s0"].latent_dim is None and by["LinPen-s0"].latent_dim == 4
    assert by["LinPen-s1"].seed == 1 and by["LinPen-s1"].out_dir == str(tmp_path / "runs" / "LinPen-s1")
    with pytest.raises(ValueError, match="distinct"):
        frontier_jobs(base, [1.0, 1.0], [0], tmp_path)


def test_table_says_n_a_for_a_variant_without_results():
    nan = float("nan")
    rows = [{"variant": "NoPen", "runs": 0, "failed": 1, **{f"{k}_{s}": nan for k in
            ("final_test_acc", "train_separation_ratio", "test_separation_ratio") for s in ("mean", "std")}}]
    assert "0 (1 failed)  n/a" in frontier_table(rows)


def test_sweep_gamma_end_to_end(tmp_path, capsys):
    out = tmp_path / "frontier"
    assert main(["sweep-gamma", *FLAGS, "--gamma-max", "0.01", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for variant in ("LPC-gmax0.01", "LPC-gmax1", "LPC-adaptive", "LinPen", "NoPen"):
        assert variant in printed
    rows = list(csv.DictReader((out / "frontier.csv").open()))
    assert [r["variant"] for r in rows] == ["LPC-gmax0.01", "LPC-gmax1", "LPC-adaptive", "LinPen", "NoPen"]
    assert all(r["runs"] == "1" and r["failed"] == "0" for r in rows)
    assert {float(r["gamma_max"]) for r in rows[:2]} == {0.01, 1.0}
    table = json.loads((out / "frontier.json").read_text())
    records = {r["name"]: r for r in json.loads((out / "runs.json").read_text())}
    for row in table:
        record = records[f"{row['variant']}-s0"]
        assert row["final_test_acc_mean"] == record["final_test_acc"]
        assert row["train_separation_ratio_mean"] == record["train_separation_ratio"] > 0
        assert row["test_separation_ratio_mean"] == record["test_separation_ratio"] > 0
    history = json.loads((out / "runs" / "LPC-gmax1-s0" / "history.json").read_text())
    assert [r["gamma"] for r in history] == [1e-2, 1e-2 * 1.05]  # the paper's schedule, capped at 1
    adaptive = json.loads((out / "runs" / "LPC-adaptive-s0" / "history.json").read_text())
    assert all("gamma_decision" in r for r in adaptive)
    with Image.open(out / "frontier.png") as image:
        assert image.size[0] > 2 * image.size[1] > 0  # two panels side by side, legend outside them
    # a second launch reuses every finished run and writes the same table
    assert main(["sweep-gamma", *FLAGS, "--gamma-max", "0.01", "1", "--out", str(out)]) == 0
    assert json.loads((out / "frontier.json").read_text()) == table


def test_sweep_gamma_refuses_train_only_flags(tmp_path, capsys):
    assert main(["sweep-gamma", *FLAGS, "--resume", "--out", str(tmp_path / "f")]) == 2
    assert "--resume: sweep-gamma" in capsys.readouterr().err
