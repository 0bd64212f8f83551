"""Packaging for users outside the checkout: configs by name, --version, py.typed, LICENSE, CITATION.cff."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from lpc_geom.cli import main
from lpc_geom.config import load_config
from lpc_geom.configs import list_configs, resolve_config

REPO = Path(__file__).resolve().parents[1]
PACKAGED = REPO / "lpc_geom" / "configs"


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m lpc_geom ARGS`` from ``cwd`` (outside the checkout), importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lpc_geom", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_packaged_configs_are_listed_and_resolved_by_name(tmp_path, monkeypatch):
    on_disk = sorted(p.stem for p in PACKAGED.glob("*.toml"))
    assert list(list_configs()) == on_disk and "mnist1d_lpc" in on_disk
    monkeypatch.chdir(tmp_path)  # no lpc_geom/ below the working directory
    expected = (PACKAGED / "mnist1d_lpc.toml").resolve()
    for spelling in ("mnist1d_lpc", "mnist1d_lpc.toml", "lpc_geom/configs/mnist1d_lpc.toml"):
        assert resolve_config(spelling).resolve() == expected, spelling
    assert load_config("mnist1d_lpc") == load_config(expected)
    # A file of the same name in the working directory wins over the packaged one.
    (tmp_path / "mnist1d_lpc.toml").write_text("epochs = 3\n")
    assert resolve_config("mnist1d_lpc.toml") == Path("mnist1d_lpc.toml")
    assert load_config("mnist1d_lpc.toml").epochs == 3
    with pytest.raises(FileNotFoundError, match=r"'mnist2d' is neither a file nor a packaged config; packaged "
                                                r"configs: mnist1d_lpc, mnist1d_lpc_kfac"):
        resolve_config("mnist2d")
    with pytest.raises(FileNotFoundError, match="neither a file"):
        load_config(tmp_path / "sub" / "mnist1d_lpc.toml")  # a path is a path, not a name


def test_cli_configs_and_version_from_another_directory(tmp_path, capsys):
    listing = _cli(["configs"], tmp_path)  # a real process started outside the checkout
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == list(list_configs())
    assert lines[0].split(maxsplit=1)[1].startswith("LPC on MNIST-1D")
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"lpc-geom {version('lpc_geom')}"


def test_train_by_name_from_another_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # The packaged config by name, on a tiny data set (flags override the file's data and sizes).
    assert main(["train", "mnist1d_lpc", "--dataset", "blobs", "--set",
                 'dataset_options={"num_classes": 3, "dim": 8, "num_samples": 150}', "--set",
                 'backbone_options={"hidden": [8]}', "--latent-dim", "4", "--epochs", "1", "--out", "run",
                 "--no-progress"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    packaged = load_config("mnist1d_lpc")
    assert config["epochs"] == 1 and config["lr_halve_from"] == packaged.lr_halve_from == 120
    assert config["weight_decay"] == packaged.weight_decay and config["gamma_options"] == packaged.gamma_options
    assert main(["train", "mnist2d"]) == 2
    assert "packaged configs: mnist1d_lpc" in capsys.readouterr().err


def test_py_typed_ships_in_the_package():
    assert (REPO / "lpc_geom" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["lpc_geom"]


def test_license_is_the_mit_text_the_metadata_names():
    text = (REPO / "LICENSE").read_text()
    assert _pyproject()["project"]["license"] == {"text": "MIT"}
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 lpc_geom developers" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text


def test_citation_cites_lpc_geom_and_the_lpc_paper():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):  # required by the CFF 1.2.0 schema
        assert cff[key]
    assert cff["version"] == _pyproject()["project"]["version"] and cff["license"] == "MIT"
    assert "lpc_geom" in cff["title"]
    (paper,) = [r for r in cff["references"] if "Latent Point Collapse" in r["title"]]
    assert paper["title"] == "Latent Point Collapse on a Low Dimensional Embedding in Deep Neural Network Classifiers"
    assert [a["family-names"] for a in paper["authors"]] == ["Sbailò", "Ghiringhelli"]
    assert {i["value"] for i in paper["identifiers"]} >= {"10.48550/arXiv.2310.08224",
                                                          "https://arxiv.org/abs/2310.08224"}


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    """Build the wheel, install it (not editable) into a fresh venv that reuses the installed torch, and run
    ``lpc-geom train mnist1d_lpc`` and ``lpc-geom compare --help`` from a directory outside the checkout."""
    # built from a copy of the sources: setuptools writes build/ and *.egg-info next to them
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "runs",
                                                                "results", "__pycache__", ".*cache", ".hypothesis"))
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), "-q"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("lpc_geom-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q",
                                str(wheel)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import lpc_geom; print(lpc_geom.__file__)"], env=env, cwd=work,
                           capture_output=True, text=True, timeout=60)
    assert str(venv) in where.stdout and str(REPO) not in where.stdout, where
    lpc_geom_bin = str(venv / "bin" / "lpc-geom")
    data = json.dumps({"num_samples": 300, "seed": 0})
    trained = subprocess.run([lpc_geom_bin, "train", "mnist1d_lpc", "--epochs", "1", "--set",
                              f"dataset_options={data}", "--batch-size", "64", "--out", "run", "--no-progress"],
                             env=env, cwd=work, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    assert json.loads((work / "run" / "config.json").read_text())["epochs"] == 1
    helped = subprocess.run([lpc_geom_bin, "compare", "--help"], env=env, cwd=work, capture_output=True, text=True,
                            timeout=60)
    assert helped.returncode == 0 and "usage: lpc-geom compare" in helped.stdout and "--dry-run" in helped.stdout
