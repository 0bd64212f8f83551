"""The command line: help texts, errors with exit code 2, and each command on a tiny run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lpc_geom.cli import main
from lpc_geom.experiments.runs import robustness_run

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "blobs", "--set", 'dataset_options={"num_classes": 3, "dim": 8, "num_samples": 300}',
        "--set", 'backbone_options={"hidden": [16]}', "--latent-dim", "4", "--epochs", "2", "--no-progress",
        "--gamma-schedule", "exponential"]  # every training sample trained on (the adaptive default holds some out)


@pytest.mark.parametrize("command", [[], ["train"], ["demo"], ["analyze"], ["robustness"], ["rows"],
                                     ["sweep-gamma"]])
def test_help_explains_every_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: lpc-geom" in text
    if command == ["train"]:
        assert "--gamma-schedule" in text and "--resume" in text and "ablation row" in text


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "lpc_geom", "rows"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0
    assert "LPC-NoPen" in result.stdout and "ArcFace" in result.stdout


def test_bad_input_is_a_one_line_error_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "--row", "LPX", "--out", str(tmp_path)]) == 2
    assert "accepted: NoPen" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("epohcs: 3\n")
    assert main(["train", str(bad)]) == 2
    assert "unknown key(s) ['epohcs']" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "is not a finished lpc_geom run" in capsys.readouterr().err


def test_train_analyze_and_robustness_on_a_tiny_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    assert main(["analyze", str(run), "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "Collapse report" in out and "`separation_ratio`" in out
    report = json.loads((run / "report_train.json").read_text())
    assert report["N"] == 240 and report["K"] == 3 and report["d"] == 4
    # the reasons travel with the figures: every undefined figure is null in the file, with its reason
    assert isinstance(report["notes"], dict) and all(report[k] is None for k in report["undefined"])
    assert main(["robustness", str(run), "--samples", "20"]) == 0
    robustness = json.loads((run / "robustness.json").read_text())
    assert robustness["n_samples"] == 20 and 0 <= robustness["deepfool_success_rate"] <= 1
    table = capsys.readouterr().out
    assert "| robustness | `deepfool_mean_relative_norm` |" in table and "| test | `nc1` |" in table
    # the minimum-norm attack beside DeepFool's figures
    assert "| robustness | `fmn_median_relative_norm` |" in table and robustness["fmn_steps"] == 100
    if robustness["fmn_success_rate"] == 1:
        assert robustness["fmn_mean_relative_norm"] <= 1.01 * robustness["deepfool_refined_mean_relative_norm"]
    # all 240 training inputs (the test split has 60); the test split's file is left as it was
    assert main(["robustness", str(run), "--samples", "1000", "--split", "train", "--no-lipschitz"]) == 0
    on_train = json.loads((run / "robustness_train.json").read_text())
    assert on_train["n_samples"] == 240 and json.loads((run / "robustness.json").read_text())["n_samples"] == 20
    assert robustness["deepfool_refine_steps"] == 20 and on_train["deepfool_refined_mean_relative_norm"] <= (
        on_train["deepfool_mean_relative_norm"])
    assert main(["robustness", str(run), "--samples", "20", "--refine-steps", "0", "--no-lipschitz",
                 "--fmn-steps", "0"]) == 0
    assert not {"deepfool_refined_mean_relative_norm", "fmn_mean_relative_norm"} & set(
        json.loads((run / "robustness.json").read_text()))
    assert "| robustness (train) | `deepfool_mean_relative_norm` |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="split must be one of 'test', 'train', got 'val'"):
        robustness_run(run, samples=5, split="val")


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "demo.json").read_text())
    assert [r["row"] for r in rows] == ["NoPen", "LPC"]
    assert all(0.0 <= r["test_acc"] <= 1.0 and r["separation_ratio"] > 0 for r in rows)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "| NoPen |" in capsys.readouterr().out


def test_train_flags_come_from_the_config_fields_metadata(capsys):
    import dataclasses

    from lpc_geom.cli import TRAIN_FLAGS, build_parser
    from lpc_geom.config import TrainConfig
    from lpc_geom.models.geometry import GEOMETRIES
    from lpc_geom.optim import OPTIMIZERS

    assert TRAIN_FLAGS["out"] == "out_dir" and TRAIN_FLAGS["final_robustness"] == "final_robustness_samples"
    assert {"lr", "epochs", "geometry", "optimizer", "kfac_fisher", "device"} <= set(TRAIN_FLAGS.values())
    assert "progress" not in TRAIN_FLAGS.values()  # --no-progress inverts it
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    listing = text.split("overrides (take precedence")[1]
    starts = [listing.index(" --" + dest.replace("_", "-") + " ") for dest in TRAIN_FLAGS]
    assert starts == sorted(starts)  # in the order of the fields
    for (dest, key), start, end in zip(TRAIN_FLAGS.items(), starts, [*starts[1:], len(listing)], strict=True):
        entry = listing[start:end]
        assert f"(default: {defaults[key]})" in entry or "(default: the row's width)" in entry or (
            "default: --kfac-damping)" in entry), dest
    assert f"latent geometry of the head: {', '.join(GEOMETRIES)} (default: euclidean)" in text
    assert f"optimiser: auto, {', '.join(OPTIMIZERS)}, kfac-sgd" in text
    assert "--device {auto,cpu,cuda}" in text and "--kfac-fisher NAME" in text
    args = build_parser().parse_args(["train", "--epochs", "3", "--lr", "0.5", "--latent-dim", "7", "--out", "x"])
    assert (args.epochs, args.lr, args.latent_dim, args.out) == (3, 0.5, 7, "x")
    assert type(args.lr) is float and type(args.epochs) is int
