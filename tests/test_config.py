import json

import pytest

from lpc_geom.cli import build_parser, config_from_args
from lpc_geom.config import TrainConfig, load_config, parse_override
from lpc_geom.train.checkpoint import load_checkpoint, save_checkpoint, write_json


def test_defaults_are_valid_and_row_names_normalised():
    assert TrainConfig().row == "LPC"
    assert TrainConfig(row="lpc-wide").row == "LPC-Wide"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"row": "LPCX"}, "accepted: NoPen"),
        ({"geometry": "hyperbolic"}, "accepted: euclidean, sphere, poincare, stiefel"),
        ({"optimizer": "adam"}, "accepted: auto, adamw"),
        ({"epochs": 0}, "epochs=0"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"latent_dim": -3}, "latent_dim=-3"),
        ({"final_robustness_samples": -1}, "final_robustness_samples=-1"),
        ({"kfac_start_epoch": -2}, "kfac_start_epoch=-2"),
        ({"kfac_damping_late": 0.0}, "kfac_damping_late=0.0"),
    ],
)
def test_invalid_values_name_the_problem(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


@pytest.mark.parametrize(("name", "epochs"), [("mnist1d_lpc.toml", 300), ("mnist1d_lpc_kfac.toml", 360)])
def test_shipped_configs_load(name, epochs):
    from importlib import resources

    with resources.as_file(resources.files("lpc_geom") / "configs" / name) as path:
        cfg = load_config(path)
    assert cfg.dataset == "mnist1d" and cfg.row == "LPC" and cfg.epochs == epochs


def test_config_files_toml_yaml_json(tmp_path):
    (tmp_path / "c.toml").write_text('row = "NoPen"\nepochs = 3\n[gamma_options]\nfactor = 1.2\n')
    (tmp_path / "c.yaml").write_text("row: NoPen\nepochs: 3\ngamma_options: {factor: 1.2}\n")
    (tmp_path / "c.json").write_text(json.dumps({"row": "NoPen", "epochs": 3, "gamma_options": {"factor": 1.2}}))
    configs = [load_config(tmp_path / f"c.{ext}") for ext in ("toml", "yaml", "json")]
    assert configs[0] == configs[1] == configs[2]
    assert configs[0].gamma_options == {"factor": 1.2} and configs[0].epochs == 3


def test_unknown_keys_list_accepted_ones(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("epoch = 3\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epoch'\].*accepted keys: dataset"):
        load_config(path)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "c.ini").write_text("x")
    with pytest.raises(ValueError, match=r"\.toml, \.yaml"):
        load_config(tmp_path / "c.ini")


def test_flags_override_config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('row = "NoPen"\nepochs = 3\n[gamma_options]\nfactor = 1.2\n')
    args = build_parser().parse_args(
        ["train", str(path), "--row", "LPC", "--gamma-max", "100", "--seed", "7",
         "--dataset", "npz", "--data-root", "d.npz", "--set", "batch_size=64", "--out", str(tmp_path / "r")]
    )
    config = config_from_args(args)
    assert (config.row, config.epochs, config.seed, config.batch_size) == ("LPC", 3, 7, 64)
    assert config.gamma_options == {"factor": 1.2, "gamma_max": 100.0}
    assert config.dataset_options == {"path": "d.npz"}
    bad = build_parser().parse_args(["train", "--set", "bogus=1"])
    with pytest.raises(ValueError, match="bogus"):
        config_from_args(bad)


def test_parse_override():
    assert parse_override("epochs=5") == ("epochs", 5)
    assert parse_override("gamma-options={\"factor\": 2}") == ("gamma_options", {"factor": 2})
    assert parse_override("dataset=digits") == ("dataset", "digits")
    with pytest.raises(ValueError, match="key=value"):
        parse_override("epochs")


def test_checkpoint_is_atomic_and_keeps_last_good(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"epoch": 1}, path)

    import torch

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "none.pt")
    write_json({"a": 1.5}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1.5}
