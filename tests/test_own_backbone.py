"""Your own backbone in the trainer: ``train(config, backbone=...)``, ``lpc-geom train --backbone module:factory``,
``register_backbone`` / ``lpc-geom backbones``, and rebuilding such a run for ``lpc-geom analyze``.

The backbone is :mod:`own_backbone` (this directory; functional style: ``F.relu``, ``torch.flatten``, a residual
add, no ``out_dim``), imported as a user's module would be.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import own_backbone
import pytest
import torch
from processes import wait_for_epochs
from torch import nn

from lpc_geom.ablation import ROWS
from lpc_geom.analysis.robustness import lipschitz_lower_bound, lipschitz_upper_bound
from lpc_geom.cli import main
from lpc_geom.config import ConfigError, TrainConfig, load_config
from lpc_geom.data import load_dataset
from lpc_geom.experiments.runs import analyze_run, load_run
from lpc_geom.models import BACKBONES, build_model, feature_dim, register_backbone
from lpc_geom.models.backbones import make_backbone
from lpc_geom.train import train
from lpc_geom.train.trainer import model_from_config

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
DATA = {"num_classes": 4, "dim": 8, "num_samples": 256}
FLAGS = ["--backbone", "own_backbone:make", "--dataset", "blobs", "--set", f"dataset_options={json.dumps(DATA)}",
         "--set", 'backbone_options={"width": 16}', "--latent-dim", "8", "--batch-size", "64", "--no-progress"]


def _config(out, **changes) -> dict:
    return {"dataset": "blobs", "dataset_options": DATA, "batch_size": 64, "epochs": 1, "progress": False,
            "out_dir": str(out), **changes}


@pytest.mark.slow
@pytest.mark.parametrize(("geometry", "optimizer"), [("euclidean", "auto"), ("sphere", "auto"),
                                                     ("poincare", "auto"), ("stiefel", "auto"),
                                                     ("euclidean", "kfac-adam")])
def test_cli_trains_and_analyses_an_own_backbone(tmp_path, capsys, geometry, optimizer):
    out = tmp_path / "run"
    assert main(["train", *FLAGS, "--geometry", geometry, "--optimizer", optimizer, "--epochs", "2",
                 "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == "own_backbone:make" and config["backbone_options"] == {"width": 16}
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and all(math.isfinite(row["train_loss"]) for row in history)
    capsys.readouterr()
    # the run's config.json names an import path: analyze imports it only when asked to
    assert main(["analyze", str(out)]) == 2
    assert "--trust-backbone" in capsys.readouterr().err
    assert main(["analyze", str(out), "--backbone", "own_backbone:other"]) == 2
    assert "not the 'own_backbone:other' given" in capsys.readouterr().err
    assert main(["analyze", str(out), "--backbone", "own_backbone:make"]) == 0
    latent_geometry = "euclidean" if geometry == "stiefel" else geometry  # Stiefel weights, Euclidean latents
    assert f"geometry: {latent_geometry}" in capsys.readouterr().out
    report = json.loads((out / "report_test.json").read_text())
    assert report["K"] == DATA["num_classes"]


def test_every_row_and_geometry_builds_on_an_own_backbone():
    data = load_dataset("blobs", **DATA)
    x = data.x_train[:5]
    width = max(row.latent_dim(DATA["num_classes"]) or 0 for row in ROWS.values())  # Stiefel: latent_dim <= width
    for row in ROWS.values():
        geometries = ("euclidean", "sphere", "poincare", "stiefel") if row.penultimate == "linear" else ("euclidean",)
        for geometry in geometries:
            config = TrainConfig(dataset="blobs", dataset_options=DATA, backbone="own_backbone:make", row=row.name,
                                 backbone_options={"width": width}, geometry=geometry)
            model = model_from_config(config, data)
            assert model.backbone.out_dim == width  # measured by the dry forward: the factory declares none
            out = model(x)
            assert out.logits.shape == (5, DATA["num_classes"]) and out.energy.shape == (5,)


def test_feature_dim_dry_forward_restores_the_mode_and_changes_no_statistics():
    net = nn.Sequential(nn.Linear(6, 7), nn.BatchNorm1d(7), nn.ReLU())
    before = net[1].running_mean.clone()
    assert feature_dim(net, (6,)) == 7 and net.out_dim == 7
    assert net.training and torch.equal(net[1].running_mean, before) and net[1].num_batches_tracked == 0
    net.eval()
    assert feature_dim(nn.Sequential(nn.Linear(6, 3)), 6) == 3
    with pytest.raises(ValueError, match=r"must return flat features of shape \(N, D\).*\(2, 3, 4\)"):
        feature_dim(nn.Conv1d(2, 3, 1), (2, 4))


def test_train_with_a_python_object_records_it_and_analyze_asks_for_it(tmp_path):
    def local_factory(input_shape, width=8):
        return own_backbone.make(input_shape, width=width)

    out = tmp_path / "object"
    result = train(_config(out, backbone_options={"width": 8}), backbone=local_factory)
    record = json.loads((out / "config.json").read_text())["backbone"]
    assert record.startswith("<python object ") and "local_factory" in record
    assert result.model.backbone.out_dim == 8
    with pytest.raises(ValueError, match=r"as a Python object: pass it again.*--backbone package\.module:factory"):
        analyze_run(out, write=False)
    # passed again (or through an import path): the weights load into it
    assert analyze_run(out, write=False, backbone=local_factory)["K"] == DATA["num_classes"]
    assert analyze_run(out, write=False, backbone="own_backbone:make")["K"] == DATA["num_classes"]
    # an importable factory is recorded as its import path; a module instance by its class
    train(_config(tmp_path / "factory"), backbone=own_backbone.make)
    assert json.loads((tmp_path / "factory" / "config.json").read_text())["backbone"] == "own_backbone:make"
    train(_config(tmp_path / "module"), backbone=own_backbone.make((8,), width=4))
    assert (json.loads((tmp_path / "module" / "config.json").read_text())["backbone"]
            == "<python object own_backbone.Residual>")
    with pytest.raises(ValueError, match=r"unknown option.*'depth'.*accepted options: width"):
        train(_config(tmp_path / "bad", backbone_options={"depth": 2}), backbone=local_factory)


def test_config_checks_an_import_path_and_its_options():
    assert TrainConfig(backbone="own_backbone:make").backbone == "own_backbone:make"
    for path, message in [("own_backbone:nope", "own_backbone has no attribute 'nope'"),
                          ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
                          ("own_backbone:NOT_CALLABLE", "not callable")]:
        with pytest.raises(ConfigError, match=message) as info:
            TrainConfig(backbone=path)
        assert "\n" not in str(info.value).strip()
    with pytest.raises(ConfigError, match=r"unknown key.*'widht'.*did you mean 'width'"):
        TrainConfig(backbone="own_backbone:make", backbone_options={"widht": 3})
    with pytest.raises(ConfigError, match=r"or an import path package\.module:factory"):
        TrainConfig(backbone="mlpp")
    with pytest.raises(TypeError, match=r"returned a str, not an nn\.Module"):
        make_backbone("own_backbone:not_a_factory", (4,))


def test_a_config_file_naming_an_import_path_imports_it_only_when_trusted(tmp_path):
    file = tmp_path / "mine.toml"
    file.write_text('backbone = "own_backbone:make"\ndataset = "blobs"\n')
    with pytest.raises(ValueError, match="is an import path; importing it runs that module's code"):
        load_config(file)
    with pytest.raises(ValueError, match="not the 'own_backbone:other' given"):
        load_config(file, trust_backbone="own_backbone:other")
    assert load_config(file, trust_backbone="own_backbone:make").backbone == "own_backbone:make"
    assert load_config(file, trust_backbone=True).backbone == "own_backbone:make"


def test_register_backbone_and_list_it(capsys):
    register_backbone("residual-test", own_backbone.make)
    try:
        model = build_model("Residual-Test", "LPC", (8,), 4, width=4)
        assert model.backbone.out_dim == 4
        assert TrainConfig(backbone="residual-test", backbone_options={"width": 4}).backbone == "residual-test"
        with pytest.raises(ConfigError, match=r"unknown key.*'hidden'.*accepted: width"):
            TrainConfig(backbone="residual-test", backbone_options={"hidden": [3]})
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("residual-test", own_backbone.not_a_factory)
        assert main(["backbones"]) == 0
        listing = capsys.readouterr().out
        assert "residual-test  own_backbone.make  options: width" in listing
        assert "mlp" in listing and "resnet18" in listing
    finally:
        del BACKBONES["residual-test"]
    with pytest.raises(ValueError, match="built-in"):
        register_backbone("mlp", own_backbone.make)
    with pytest.raises(ValueError, match="without ':'"):
        register_backbone("a:b", own_backbone.make)
    with pytest.raises(TypeError, match="first positional parameter"):
        register_backbone("kw", lambda *, width=1: nn.Identity())


def test_lipschitz_upper_bound_of_an_own_backbone_model_is_finite_and_above_the_lower_bound():
    torch.manual_seed(0)
    model = build_model(own_backbone.make, "LPC", (8,), 4, width=16).double()
    upper = lipschitz_upper_bound(model, (8,)).value
    lower = lipschitz_lower_bound(model, torch.randn(64, 8, dtype=torch.float64), candidates=None).value
    assert math.isfinite(upper) and 0 < lower <= upper



@pytest.mark.slow
def test_own_backbone_run_resumes_after_sigterm_and_analyses(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "lpc_geom", "train", *FLAGS, "--set",
               f"dataset_options={json.dumps({**DATA, 'num_samples': 1024})}", "--epochs", "5",
               "--checkpoint-every", "100", "--out", str(out)]
    proc = subprocess.Popen(command, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_epochs(proc, out, 1)
    proc.send_signal(signal.SIGSTOP)  # paused wherever it is in epoch 1 or 2: the signal lands mid-run
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 143, stderr
    assert json.loads((out / "run.json").read_text())["status"] == "stopped"
    resumed = subprocess.run([*command, "--resume"], env=ENV, cwd=tmp_path, capture_output=True, text=True,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "finished" and manifest["resumed_from"]["epochs_done"] >= 1
    assert [row["epoch"] for row in json.loads((out / "history.json").read_text())] == list(range(5))
    analysed = subprocess.run([sys.executable, "-m", "lpc_geom", "analyze", str(out), "--trust-backbone"],
                              env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert analysed.returncode == 0, analysed.stderr
    assert "Collapse report" in analysed.stdout
    assert load_run(out, trust_backbone=True).config.backbone == "own_backbone:make"


def test_building_blocks_for_your_own_loop_are_exported_and_documented():
    import lpc_geom
    from lpc_geom.losses import compression_term
    from lpc_geom.models.geometry import ManifoldHead
    from lpc_geom.train.schedules import ExponentialGamma

    assert lpc_geom.ManifoldHead is ManifoldHead and lpc_geom.compression_term is compression_term
    assert lpc_geom.ExponentialGamma is ExponentialGamma and lpc_geom.register_backbone is register_backbone
    for name in ("EuclideanHead", "ManifoldHead", "build_head", "build_geometry_head", "compression_term",
                 "build_gamma_schedule", "Classifier", "train", "analyze"):
        assert name in dir(lpc_geom) and (getattr(lpc_geom, name).__doc__ or "").strip(), name
    energy = torch.tensor([1.0, 3.0])
    assert float(lpc_geom.compression_term(energy, lpc_geom.ExponentialGamma(start=0.5, factor=2.0)(1))) == 2.0


@pytest.mark.slow
def test_own_backbone_trains_under_ddp_as_in_one_process(tmp_path):
    """Real DDP (torch.distributed.run, gloo, 2 CPU processes) with the imported backbone, against one process."""
    args = [*FLAGS, "--optimizer", "adamw", "--epochs", "2"]
    assert main(["train", *args, "--out", str(tmp_path / "single")]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "lpc_geom", "train", *args, "--out", str(tmp_path / "ddp")]
    ddp = subprocess.run(torchrun, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = (json.loads((tmp_path / run / "history.json").read_text()) for run in ("single", "ddp"))
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)


@pytest.mark.slow
def test_the_main_job_runs_an_own_backbone(tmp_path):
    from lpc_geom.experiments import compare

    result = compare.main(["--dataset", "blobs", "--dataset-option", "num_samples=160", "--dataset-option", "dim=8",
                           "--backbone", "own_backbone:make", "--backbone-option", "width=8", "--latent-dim", "4",
                           "--epochs", "1", "--robustness-samples", "8", "--no-progress", "--no-figures",
                           "--workers", "1", "--geometries", "euclidean-LPC", "sphere", "--optimizers", "default",
                           "--seeds", "0", "--out", str(tmp_path / "grid")])
    assert [r["status"] for r in result.records] == ["ok", "ok"], [r.get("error") for r in result.records]
    euclidean = next(r for r in result.records if r["geometry"] == "euclidean-LPC")
    assert math.isfinite(euclidean["robust_lipschitz_upper"])  # traced through the functional forward
    assert all(r["robust_deepfool_mean_relative_norm"] > 0 for r in result.records)
