"""The geometry x optimiser comparison (lpc_geom.experiments.compare) and the sweep executors, on tiny grids.

Every run trains 2 epochs of a small MLP on Gaussian blobs, so the whole pipeline (training, analysis,
robustness, tables, GW matrices, figures, re-launch) takes seconds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import runpy
import sys
from functools import partial
from pathlib import Path

import pytest

from lpc_geom.config import TrainConfig
from lpc_geom.experiments import compare
from lpc_geom.experiments.executors import LocalExecutor, SubmititExecutor, WorkerDied, make_executor
from lpc_geom.experiments.sweep import Job, exit_status, failure_lines, run_jobs

REPO = Path(__file__).resolve().parents[1]

# hidden [32, 6] and latent_dim 8: the Stiefel head needs latent_dim <= 6 and fails, the others train.
TINY = [
    "--dataset", "blobs", "--dataset-option", "num_samples=240", "--dataset-option", "num_classes=4",
    "--dataset-option", "dim=8", "--backbone", "mlp", "--backbone-option", "hidden=[32,6]", "--latent-dim", "8",
    "--epochs", "2", "--robustness-samples", "24", "--no-progress",
]
GRID = ["--geometries", "euclidean-LPC", "euclidean-NoPen", "sphere", "poincare-2d", "stiefel",
        "--optimizers", "default", "kfac", "--seeds", "0", "1"]


@pytest.mark.slow
def test_pipeline_tiny_grid_resumes_and_records_failures(tmp_path, capsys):
    out = tmp_path / "cmp"
    result = compare.main([*TINY, *GRID, "--out", str(out), "--workers", "1"])

    # every run has a record; the Stiefel cell fails with its reason, the others finish
    assert len(result.records) == 5 * 2 * 2
    failed = [r for r in result.records if r["status"] != "ok"]
    assert {r["geometry"] for r in failed} == {"stiefel"} and len(failed) == 4
    assert all("latent_dim <= in_dim" in r["error"] and r["traceback"] for r in failed)
    ok = [r for r in result.records if r["status"] == "ok"]
    assert all(math.isfinite(r["robust_deepfool_mean_relative_norm"]) for r in ok)
    # the refined DeepFool distance is a point on DeepFool's segment: never longer
    assert all(0 < r["robust_deepfool_refined_mean_relative_norm"] <= r["robust_deepfool_mean_relative_norm"]
               for r in ok)
    # the minimum-norm attack fools every input and is never farther than the refined DeepFool points
    assert all(r["robust_fmn_success_rate"] == 1.0 for r in ok)
    assert all(r["robust_fmn_median_relative_norm"] > 0 for r in ok)
    assert all(0 < r["robust_fmn_mean_relative_norm"] <= 1.01 * r["robust_deepfool_refined_mean_relative_norm"]
               for r in ok)
    assert all(math.isfinite(r["train_separation_ratio"]) for r in ok)
    kfac = {r["optimizer_name"] for r in ok if r["optimizer"] == "kfac"}
    assert kfac == {"kfac-adam", "kfac-riemannian"}

    # per-run and per-cell files; the table marks the failed cell and is printed
    for name in ("runs.csv", "runs.json", "cells.csv", "cells.json", "table.md", "analysis.json"):
        assert (out / name).is_file(), name
    with open(out / "runs.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 20
    cells = {(c["geometry"], c["optimizer"]): c for c in json.loads((out / "cells.json").read_text())}
    assert len(cells) == 10
    lpc = cells[("euclidean-LPC", "default")]
    assert lpc["runs"] == 2 and lpc["failed"] == 0 and lpc["epoch_seconds_relative"] == pytest.approx(1.0)
    assert {"final_test_acc_mean", "final_test_acc_std", "train_separation_ratio_mean"} <= set(lpc)
    assert cells[("stiefel", "kfac")]["runs"] == 0 and cells[("stiefel", "kfac")]["failed"] == 2
    table = (out / "table.md").read_text()
    assert "| stiefel | default (auto) | 0 (2 failed) |" in table
    assert "Euclidean LPC vs NoPen" in table and "FMN x" in table
    assert "| FMN ‖r‖/‖x‖ | FMN median |" in table.splitlines()[2]
    assert "| n/a | n/a | n/a | n/a |" in next(line for line in table.splitlines() if line.startswith("| stiefel"))
    # the separation-robustness correlation for each attack, with and without the sphere cells
    by_attack = json.loads((out / "analysis.json").read_text())["separation_vs_robustness_by_attack"]
    assert set(by_attack) == set(compare.ATTACKS) == {"DeepFool", "DeepFool refined", "FMN"}
    for name, subsets in by_attack.items():
        assert subsets["all"]["n"] == 16 and subsets["without sphere"]["n"] == 12
        assert all(-1 <= c["pearson"] <= 1 for c in subsets.values()), name
        assert f"separation ratio vs {name} robustness, Pearson all: r = {subsets['all']['pearson']:.3f}" in table
    assert result.correlations_by_attack == by_attack
    printed = capsys.readouterr().out
    assert result.table in printed and str(out.resolve()) in printed
    ending = printed.rsplit("Took", 1)[1]  # the failures are listed last
    assert "4 of 20 runs failed" in ending and "\n  stiefel__kfac__seed1: ValueError: " in ending
    assert compare.exit_status(result.records) == 1

    # GW matrices over the finished geometries, diagonal = seed vs seed; figures
    gw = json.loads((out / "analysis.json").read_text())["gw"]
    assert set(gw) == {"default", "kfac"}
    assert gw["default"]["geometries"] == ["euclidean-LPC", "euclidean-NoPen", "sphere", "poincare-2d"]
    matrix = gw["default"]["matrix"]
    assert all(math.isfinite(v) and v >= 0 for row in matrix for v in row)
    assert all(matrix[i][j] == pytest.approx(matrix[j][i]) for i in range(4) for j in range(4))
    figures = {p.name for p in result.figures}
    assert figures == {"latents_2d.png", "unit_histograms.png", "collapse_history.png",
                       "separation_vs_robustness.png", "gw_matrix.png"}
    assert all((out / "figures" / name).stat().st_size > 10_000 for name in figures)

    # re-launch: finished runs are reused (checkpoints untouched), failed runs are tried again, and a run
    # whose training finished but whose analysis failed is analysed again without training again
    checkpoints = {r["name"]: (Path(r["run_dir"]) / "checkpoint.pt").stat().st_mtime_ns for r in ok}
    failed_records = {r["name"]: (Path(r["run_dir"]) / "record.json").stat().st_mtime_ns for r in failed}
    analysis_failed = Path(ok[0]["run_dir"]) / "record.json"
    analysis_failed.write_text(json.dumps({**ok[0], "status": "failed", "error": "RuntimeError: analysis"}))
    again = compare.main([*TINY, *GRID, "--out", str(out), "--workers", "1", "--no-figures"])
    assert json.loads(analysis_failed.read_text())["training_reused"] is True
    for r in again.records:
        if r["name"] in checkpoints:
            assert (Path(r["run_dir"]) / "checkpoint.pt").stat().st_mtime_ns == checkpoints[r["name"]]
    assert {r["name"]: r.get("final_test_acc") for r in again.records if r["status"] == "ok"} == \
        {r["name"]: r["final_test_acc"] for r in ok}
    assert all((Path(r["run_dir"]) / "record.json").stat().st_mtime_ns > failed_records[r["name"]]
               for r in again.records if r["name"] in failed_records)
    assert again.table == result.table

    # a re-launch with another config into the same directory is refused, naming what differs
    with pytest.raises(ValueError, match="epochs"):
        compare.main([*TINY, *GRID, "--out", str(out), "--workers", "1", "--epochs", "3"])


def test_default_backbone_is_a_1d_resnet_end_to_end(tmp_path):
    # the default grid's backbone (1-D ResNet-18), tiny: K-FAC on Conv1d, DeepFool + refinement, 1-D Lipschitz rule
    base = compare.default_config()
    assert (base.dataset, base.backbone, base.backbone_options) == ("mnist1d", "resnet18", {"width": 8})
    result = compare.main(["--dataset", "blobs", "--dataset-option", "num_samples=120", "--dataset-option",
                           "dim=8", "--backbone-option", "width=2", "--latent-dim", "4", "--epochs", "1",
                           "--robustness-samples", "8", "--fmn-steps", "20", "--no-progress", "--no-figures",
                           "--workers", "1",
                           "--geometries", "euclidean-LPC", "--optimizers", "default", "kfac", "--seeds", "0",
                           "--out", str(tmp_path / "rn")])
    assert [r["status"] for r in result.records] == ["ok", "ok"], [r.get("error") for r in result.records]
    for record in result.records:
        assert 0 < record["robust_deepfool_refined_mean_relative_norm"] <= record["robust_deepfool_mean_relative_norm"]
        refined = record["robust_deepfool_refined_mean_relative_norm"]
        assert 0 < record["robust_fmn_mean_relative_norm"] <= 1.01 * refined and record["robust_fmn_steps"] == 20
        assert math.isfinite(record["robust_lipschitz_upper"])


def test_settings_and_jobs():
    settings = compare.CompareSettings(out=Path("x"), geometries=["euclidean-NoPen", "poincare-2d"],
                                       optimizers=["kfac"], seeds=[3], base=compare.default_config().replace(
                                           latent_dim=16))
    jobs = compare.build_jobs(settings)
    assert [j.name for j in jobs] == ["euclidean-NoPen__kfac__seed3", "poincare-2d__kfac__seed3"]
    nopen, disk = (j.config for j in jobs)
    assert (nopen.row, nopen.geometry, nopen.latent_dim, nopen.optimizer) == ("NoPen", "euclidean", None,
                                                                               "kfac-adam")
    assert (disk.geometry, disk.latent_dim, disk.optimizer, disk.seed) == ("poincare", 2, "kfac-riemannian", 3)
    assert disk.out_dir == str(Path("x") / "runs" / "poincare-2d__kfac__seed3")
    with pytest.raises(ValueError, match="unknown geometries"):
        compare.CompareSettings(geometries=["hyperbolic"])
    with pytest.raises(ValueError, match="duplicates"):
        compare.CompareSettings(seeds=[0, 0])
    with pytest.raises(ValueError, match="fmn_steps"):
        compare.CompareSettings(fmn_steps=-1)
    assert compare.settings_from_args(compare.build_parser().parse_args(["--fmn-steps", "7"])).fmn_steps == 7
    with pytest.raises(SystemExit, match="the grid sets"):
        compare.main(["--set", "geometry=sphere"])


def test_separation_robustness_correlation():
    records = [{"status": "ok", "train_separation_ratio": r, "robust_deepfool_mean_relative_norm": 0.1 * r}
               for r in (1.0, 10.0, 100.0)]
    records.append({"status": "failed"})
    out = compare.separation_robustness(records)
    assert out["n"] == 3 and out["pearson"] == pytest.approx(1.0)
    assert 0.8 < out["pearson_log"] < 1.0
    assert math.isnan(compare.separation_robustness(records[:2])["pearson"])
    # any robustness field, and cells left out
    records = [{"status": "ok", "geometry": g, "train_separation_ratio": r, "robust_fmn_mean_relative_norm": f}
               for g, r, f in (("euclidean-LPC", 1.0, 0.1), ("poincare", 2.0, 0.2), ("stiefel", 3.0, 0.3),
                               ("sphere", 4.0, -5.0), ("euclidean-NoPen", 5.0, math.inf))]
    fmn = compare.separation_robustness(records, "robust_fmn_mean_relative_norm")
    assert fmn["n"] == 4 and fmn["pearson"] < 0  # the sphere run reverses the trend; the inf run is left out
    no_sphere = compare.separation_robustness(records, "robust_fmn_mean_relative_norm", exclude=["sphere"])
    assert no_sphere["n"] == 3 and no_sphere["pearson"] == pytest.approx(1.0)
    by_attack = compare.correlations_by_attack(records)
    assert by_attack["FMN"] == {"all": fmn, "without sphere": no_sphere}
    assert by_attack["DeepFool"]["all"]["n"] == 0 and math.isnan(by_attack["DeepFool"]["all"]["pearson"])
    lines = compare.correlation_lines(by_attack)
    assert len(lines) == 3 and "FMN robustness, Pearson all: r = " in lines[2]
    assert "without sphere: r = 1.000" in lines[2]


def test_cli_help_explains_itself(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["compare_manifolds.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "benchmarks" / "compare_manifolds.py"), run_name="__main__")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for words in ("--geometries", "--executor", "submitit", "Finished runs are reused", "table.md", "--results-dir"):
        assert words in text


@pytest.mark.slow
def test_benchmark_writes_the_documentation_fragment_from_its_run(tmp_path, monkeypatch):
    bench = runpy.run_path(str(REPO / "benchmarks" / "compare_manifolds.py"))
    results = tmp_path / "docs" / "compare_manifolds"
    argv = [*TINY, "--geometries", "euclidean-LPC", "euclidean-NoPen", "--optimizers", "default", "--seeds", "0",
            "--out", str(tmp_path / "cmp"), "--workers", "1", "--results-dir", str(results)]
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "compare_manifolds.py"), *argv])  # as launched
    assert bench["main"](argv) == 0
    text = (results / "index.md").read_text()
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert text.startswith("## Geometries and optimisers") and "Produced by `python " in text
    assert table.strip() in text  # the run's own table, LPC vs NoPen and correlations, not a copy typed twice
    assert "| FMN ‖r‖/‖x‖ | FMN median |" in text and "Euclidean LPC vs NoPen" in text and "FMN x" in text
    assert "separation ratio vs FMN robustness" in text
    for name in compare.FRAGMENT_FIGURES:
        assert f"]({name})" in text and (results / name).stat().st_size > 10_000
    data = json.loads((results / "data.json").read_text())
    assert data["provenance"]["command"].startswith("python benchmarks/compare_manifolds.py --dataset blobs")
    assert len(data["provenance"]["loadavg_before"]) == 3
    assert [(c["geometry"], c["runs"]) for c in data["cells"]] == [("euclidean-LPC", 1), ("euclidean-NoPen", 1)]
    assert set(data["separation_vs_robustness_by_attack"]) == set(compare.ATTACKS)


# ------------------------------------------------------------------------------------------ executors
def _crash_on_negative(x: int) -> int:
    if x < 0:
        os._exit(3)  # a worker killed from outside (out of memory, segfault) looks like this
    return 2 * x


def test_local_executor_retries_a_dead_worker_once_and_goes_on():
    outcomes = {o.index: o for o in LocalExecutor(2).run(_crash_on_negative, [1, -1, 3])}
    assert set(outcomes) == {0, 1, 2}
    assert (outcomes[0].value, outcomes[2].value, outcomes[0].deaths) == (2, 6, ())
    dead = outcomes[1]
    assert isinstance(dead.value, WorkerDied) and "exited with status 3" in str(dead.value)
    assert len(dead.deaths) == 1 and "exited with status 3" in dead.deaths[0]  # retried once, died again
    inline = {o.index: o.value for o in LocalExecutor(1).run(abs, [-2, "x"])}
    assert inline[0] == 2 and isinstance(inline[1], TypeError)
    with pytest.raises(ValueError, match="workers"):
        LocalExecutor(0)
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("ray")


def _tiny_job(tmp_path: Path, name: str, **changes) -> Job:
    config = TrainConfig(dataset="blobs", dataset_options={"num_samples": 120, "num_classes": 3, "dim": 4},
                         backbone_options={"hidden": [16, 16]}, latent_dim=4, epochs=2, progress=False,
                         out_dir=str(tmp_path / name))
    return Job(name, config.replace(**changes), {"cell": name})


def _die_for(job: Job, *, name: str) -> dict:
    if job.name == name:
        os._exit(5)
    return {"post": 1.0}


def test_run_jobs_records_a_dead_worker_and_goes_on(tmp_path):
    jobs = [_tiny_job(tmp_path, "a"), _tiny_job(tmp_path, "b")]
    records = run_jobs(jobs, workers=2, progress=False, postprocess=partial(_die_for, name="b"))
    assert records[1]["status"] == "failed" and "WorkerDied" in records[1]["error"]
    assert len(records[1]["retried_after"]) == 1
    assert json.loads((tmp_path / "b" / "record.json").read_text())["status"] == "failed"
    assert records[0]["status"] == "ok" and "retried_after" not in records[0]
    lines = failure_lines(records)
    assert lines[0].startswith("1 of 2 runs failed") and lines[1].startswith("  b: WorkerDied: worker process")
    assert exit_status(records) == 1 and exit_status(records[:1]) == 0


def test_submitit_executor_local_and_debug(tmp_path):
    pytest.importorskip("submitit", reason="submitit (the optional extra 'cluster') is not installed")
    # debug mode: in this process, through submitit's job objects
    debug = SubmititExecutor(tmp_path / "debug_logs", cluster="debug")
    records = run_jobs([_tiny_job(tmp_path, "d0"), _tiny_job(tmp_path, "d1", geometry="stiefel", latent_dim=32)],
                       progress=False, executor=debug)
    assert [r["status"] for r in records] == ["ok", "failed"]
    assert "latent_dim <= in_dim" in records[1]["error"]

    # local mode: real subprocesses, through the comparison's command line
    out = tmp_path / "cmp"
    result = compare.main([*TINY, "--geometries", "sphere", "--optimizers", "default", "--seeds", "0",
                           "--out", str(out), "--no-figures", "--executor", "submitit",
                           "--submitit-cluster", "local", "--timeout-min", "10"])
    assert [r["status"] for r in result.records] == ["ok"], [r.get("error") for r in result.records]
    assert any((out / "submitit").rglob("*_log.out"))
    assert (out / "table.md").is_file()


def test_submitit_missing_is_a_clear_error(monkeypatch):
    import lpc_geom.experiments.executors as executors

    monkeypatch.setattr(executors, "submitit_available", lambda: False)
    with pytest.raises(ImportError, match="pip install"):
        executors.SubmititExecutor("logs")


def test_finished_record_reuse_rules(tmp_path):
    from lpc_geom.experiments.sweep import finished_record

    job = _tiny_job(tmp_path, "r")
    job.run_dir.mkdir()
    assert finished_record(job) is None
    (job.run_dir / "record.json").write_text(json.dumps({"name": "r", "status": "failed"}))
    assert finished_record(job) is None  # failed runs are run again
    (job.run_dir / "record.json").write_text(json.dumps({"name": "r", "status": "ok"}))
    saved = job.config.to_dict()
    del saved["kfac_fisher"]  # a run saved before a config key existed: that key counts as its default
    saved["progress"] = True  # keys that may change on resume do not matter
    (job.run_dir / "config.json").write_text(json.dumps(saved))
    assert finished_record(job) == {"name": "r", "status": "ok"}
    saved["lr"] = 0.5
    (job.run_dir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="differing keys: lr"):
        finished_record(job)


def test_lpc_geom_compare_dry_run_lists_the_runs_and_trains_nothing(tmp_path, capsys):
    from lpc_geom.cli import main

    out = tmp_path / "grid"
    assert main(["compare", "--dry-run", "--geometries", "euclidean-LPC", "sphere", "--seeds", "0", "3",
                 "--epochs", "7", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"8 runs under {out} (dry run: nothing trained)"
    assert lines[0].startswith("euclidean-LPC__default__seed0 ") and "epochs=7" in lines[0]
    assert any(line.startswith("sphere__kfac__seed3 ") and "optimizer=kfac-riemannian" in line for line in lines)
    assert not out.exists()


def test_compare_takes_the_train_spellings(capsys):
    args = compare.build_parser().parse_args(["--dataset", "npz", "--data-root", "/data/x.npz", "--epochs", "3"])
    settings = compare.settings_from_args(args)
    assert settings.base.dataset_options == {"path": "/data/x.npz"} and settings.base.epochs == 3
    args = compare.build_parser().parse_args(["--dataset", "cifar10", "--data-root", "/data/cifar"])
    assert compare.settings_from_args(args).base.dataset_options == {"root": "/data/cifar"}
    with pytest.raises(SystemExit):
        compare.build_parser().parse_args(["--help"])
    assert "--data-root" in capsys.readouterr().out
