import contextlib
import dataclasses
import io
import json
import tempfile
import typing
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lpc_geom.ablation import ROWS
from lpc_geom.cli import build_parser, config_from_args, main
from lpc_geom.config import ConfigError, TrainConfig, load_config, parse_override
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
        ({"epochs": 0}, r"epochs: 0 is out of range \(must be >= 1\)"),
        ({"lr": float("nan")}, "lr: must be a finite number, got NaN"),
        ({"latent_dim": -3}, r"latent_dim: -3 is out of range \(must be >= 1\)"),
        ({"final_robustness_samples": -1}, "final_robustness_samples: -1 is out of range"),
        ({"kfac_start_epoch": -2}, "kfac_start_epoch: -2 is out of range"),
        ({"kfac_damping_late": 0.0}, r"kfac_damping_late: 0.0 is out of range \(must be > 0\)"),
        ({"batch_size": 1}, r"batch_size: 1 is out of range \(must be >= 2\)"),
        ({"seed": 2**32}, "seed: 4294967296 is out of range"),
        ({"lr": True}, "lr: expected a number, got true"),
        ({"classifier_bias": "no"}, 'classifier_bias: expected a bool \\(true or false\\), got "no"'),
        ({"classifier_bias": 1}, "classifier_bias: expected a bool"),
        ({"latent_dim": True}, "latent_dim: expected an integer or null, got true"),
        ({"epochs": 3.0}, "epochs: expected an integer, got 3.0"),
        ({"lr": None}, "lr: expected a number, got null"),
        ({"out_dir": ""}, "out_dir: must not be empty"),
        ({"dataset": "cifar"}, "dataset: unknown value \"cifar\" \\(did you mean 'cifar10'\\?\\)"),
        ({"gamma_options": {"factor": 0}}, r"gamma_options: factor: 0 is out of range \(must be > 0\)"),
        ({"gamma_options": {"factor": True}}, "gamma_options: factor: expected a number or null, got true"),
        ({"gamma_options": {"start": 10.0, "gamma_max": 1.0}}, "needs 0 < start <= gamma_max"),
        ({"gamma_schedule": "threshold", "gamma_options": {"threshold": 1.5}}, "threshold: 1.5 is out of range"),
        ({"gamma_options": {"switch": 10.0}}, "unknown key.*'switch'.*accepted: start, factor, gamma_max, every"),
        ({"geometry": "sphere", "geometry_options": {"radiuss": 2.0}},
         "geometry_options: unknown key.*'radiuss'.*SphereHead.*did you mean 'radius'.*accepted: radius, radius_mode"),
        ({"geometry": "sphere", "geometry_options": {"radius_mode": "free"}},
         'radius_mode: expected one of "fixed", "learnable", "penalised", got "free"'),
        ({"geometry_options": {"radius": 2.0}}, "geometry 'euclidean' .* takes no options"),
        ({"backbone_options": {"hidden": "16"}}, "backbone_options: hidden: expected a list"),
        ({"backbone_options": {"widht": 8}}, "unknown key.*'widht'.*accepted: hidden, batch_norm"),
        ({"dataset": "npz"}, r"dataset 'npz' \(load_npz\) requires 'path'"),
        ({"dataset_options": {"num_sampels": 10}}, "did you mean 'num_samples'"),
        ({"dataset": "blobs", "dataset_options": {"dim": 2.5}}, "dim: expected an integer, got 2.5"),
        ({"dataset_options": {"x": object()}}, "dataset_options: values must be representable in config.json"),
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


# ------------------------------------------------------------------------------ values labelled with their source
def _cli_config(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "lr=true"], "--set lr: expected a number, got true"),
        (["--set", 'classifier_bias="no"'], '--set classifier_bias: expected a bool \\(true or false\\), got "no"'),
        (["--set", "latent_dim=true"], "--set latent_dim: expected an integer or null, got true"),
        (["--set", "epochs=2.5"], "--set epochs: expected an integer, got 2.5"),
        (["--batch-size", "1"], r"--batch-size: 1 is out of range \(must be >= 2\)"),
        (["--lr", "0"], r"--lr: 0.0 is out of range \(must be > 0\)"),
        (["--gamma-factor", "0"], r"gamma_options \(--gamma-factor\): factor: 0.0 is out of range \(must be > 0\)"),
        (["--dataset", "npz"], r"dataset_options: dataset 'npz' \(load_npz\) requires 'path'"),
        (["--set", 'geometry_options={"radiuss": 1}', "--geometry", "sphere"],
         "--set geometry_options: unknown key.*'radiuss'.*accepted: radius, radius_mode, within_class, bias, eps"),
    ],
)
def test_command_line_values_are_checked_and_labelled_with_their_option(argv, message):
    with pytest.raises(ConfigError, match=message):
        _cli_config(*argv)


def test_values_from_a_config_file_are_labelled_with_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("batch_size = 1\n[gamma_options]\nfactor = 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: batch_size: 1 is out of range.*; gamma_options: factor: 0 is"):
        load_config(path)
    path.write_text("lr = 0.1\n")
    with pytest.raises(ConfigError, match=r"^--lr: -1.0 is out of range"):
        _cli_config(str(path), "--lr", "-1")
    path.write_text('geometry = "sphere"\n[geometry_options]\nradius = 2.0\n')
    # the file's geometry_options do not fit the geometry chosen on the command line
    with pytest.raises(ConfigError, match=rf"{path}: geometry_options: unknown key.*'radius'.*PoincareHead"):
        _cli_config(str(path), "--geometry", "poincare")


def test_config_errors_survive_pickling():  # they cross process boundaries in sweeps
    import pickle

    with pytest.raises(ConfigError) as info:
        _cli_config("--lr", "-1", "--epochs", "0")
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.problems == info.value.problems
    assert str(again).startswith("--lr: -1.0 is out of range") and "; --epochs: 0 is out of range" in str(again)


def test_yaml_numbers_in_exponent_form_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5E-4\ntemperature: 1.5e-1\nkfac_damping: +2e-2\n"
                    "gamma_options: {gamma_max: 1e6, start: 1.0e-2}\nout_dir: '1e3'\n")
    config = load_config(path)
    assert (config.lr, config.weight_decay, config.temperature, config.kfac_damping) == (1e-3, 5e-4, 0.15, 0.02)
    assert config.gamma_options == {"gamma_max": 1e6, "start": 1e-2} and config.out_dir == "1e3"
    path.write_text("epochs: 1e2\n")  # a float, so not an epoch count
    with pytest.raises(ConfigError, match=r"epochs: expected an integer, got 100\.0"):
        load_config(path)
    path.write_text("lr: '1e-3'\n")  # quoted: the user asked for a string
    with pytest.raises(ConfigError, match='lr: expected a number, got "1e-3"'):
        load_config(path)


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("c.toml", 'row = "LPC"\nepochs = = 3\n', r"at line 2, column 10"),
        ("c.toml", "[gamma_options\nfactor = 1\n", r"line 1"),
        ("c.json", '{"row": "LPC",\n  "epochs": 3,,\n}', r"line 2, column 15: invalid JSON"),
        ("c.yaml", "row: LPC\nepochs: [3\nlr: 1\n", r"line \d+, column \d+: invalid YAML"),
        ("c.yaml", "row: LPC\n  epochs: 3\n", r"line 2, column 9: invalid YAML"),
    ],
)
def test_syntax_errors_name_file_line_and_column(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"^{path}: .*{where}"):
        load_config(path)


@pytest.mark.parametrize("name", ["c.toml", "c.yaml", "c.json"])
def test_non_utf8_files_name_file_line_and_column(tmp_path, name):
    path = tmp_path / name
    contents = {"c.toml": b'row = "LPC"\nout_dir = "caf\xe9"\n', "c.json": b'{"row": "LPC",\n "out_dir": "caf\xe9"}',
                "c.yaml": b"row: LPC\nout_dir: caf\xe9\n"}
    path.write_bytes(contents[name])
    column = {"c.toml": 15, "c.json": 17, "c.yaml": 13}[name]  # of the byte 0xe9 (the é of "café")
    with pytest.raises(ValueError, match=rf"^{path}: line 2, column {column}: not UTF-8 text \(byte 0xe9"):
        load_config(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"row": "LPC", "epoch": 3}', r"unknown key\(s\) \['epoch'\] \(did you mean 'epochs'\?\)"),
        ('{"row": "LPC", "lr": null}', "lr: expected a number, got null"),
        ('{"row": null}', "row: expected a string, got null"),
        ('["row", "LPC"]', "must hold a mapping of keys to values, got list"),
        ("{1: 2}", "invalid JSON"),
    ],
)
def test_a_damaged_config_json_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"^{path}: .*{message}"):
        load_config(path)


def test_yaml_non_string_keys_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("1: 2\nrow: LPC\n")
    with pytest.raises(ValueError, match=rf"^{path}: keys must be strings, got 1"):
        load_config(path)


def test_option_lists_come_from_the_registries():
    from lpc_geom.data import DATASETS
    from lpc_geom.models.backbones import BACKBONES
    from lpc_geom.models.geometry import GEOMETRY_HEADS
    from lpc_geom.optim import OPTIMIZERS
    from lpc_geom.train.schedules import GAMMA_SCHEDULES

    for key, names in (("dataset", DATASETS), ("backbone", BACKBONES), ("gamma_schedule", GAMMA_SCHEDULES),
                       ("geometry", ["euclidean", *GEOMETRY_HEADS]), ("optimizer", ["auto", *OPTIMIZERS])):
        with pytest.raises(ConfigError) as info:
            TrainConfig(**{key: "nonexistent"})
        accepted = str(info.value).split("(accepted: ")[1].rstrip(")").split(", ")
        assert set(names) <= set(accepted), key


def test_help_shows_the_defaults(capsys):
    for command in ("train", "robustness", "demo"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS epochs (default: 200)" in text and "(default: 128)" in text
    assert "--lr LR learning rate (default: 0.001)" in text and "(default: runs/default)" in text
    assert "DeepFool iterations (default: 50)" in text and "(default: runs/demo)" in text


# ------------------------------------------------------------------------------------------- property-based
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)
_ANY_JSON = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                      st.text(max_size=8), st.lists(st.integers(), max_size=3),
                      st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _kind(hint):
    """The JSON kinds a field accepts, independently of lpc_geom.config's checker."""
    kinds = {int: {"int"}, float: {"int", "float"}, bool: {"bool"}, str: {"str"}}
    if typing.get_origin(hint) is dict:
        return {"dict"}
    accepted = set()
    for arg in typing.get_args(hint) or (hint,):
        accepted |= {"none"} if arg is type(None) else kinds[arg]
    return accepted


def _json_kind(value):
    if value is None:
        return "none"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}[type(value)]


def _refused_before_training(key, value):
    """Run `lpc-geom train --set KEY=VALUE` with a trainer that fails the test if it is ever built."""
    stderr = io.StringIO()
    with mock.patch("lpc_geom.train.trainer.Trainer", side_effect=AssertionError("training started")), \
            contextlib.redirect_stderr(stderr):
        code = main(["train", "--set", f"{key}={json.dumps(value)}", "--out", "unused-out"])
    lines = stderr.getvalue().splitlines()
    return code, lines


@given(key=st.sampled_from(sorted(_FIELDS)), value=_ANY_JSON)
def test_values_of_a_wrong_type_are_refused_before_training(key, value):
    assume(_json_kind(value) not in _kind(_HINTS[key]))
    with pytest.raises(ConfigError, match=rf"(^|; ){key}: expected "):
        TrainConfig(**{key: value})
    code, lines = _refused_before_training(key, value)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"lpc-geom train: error: --set {key}: expected")


_BOUNDED = sorted(name for name, f in _FIELDS.items()
                  if any(f.metadata.get(b) is not None for b in ("ge", "gt", "le")) or f.metadata.get("finite"))


@st.composite
def _out_of_range(draw):
    key = draw(st.sampled_from(_BOUNDED))
    spec = _FIELDS[key].metadata
    is_int = int in (*typing.get_args(_HINTS[key]), _HINTS[key])
    options = []
    low = spec["ge"] if spec["ge"] is not None else spec["gt"]
    if low is not None:
        below = (st.integers(max_value=low - (1 if spec["ge"] is not None else 0)) if is_int else
                 st.floats(max_value=low, exclude_max=spec["ge"] is not None, allow_nan=False))
        options.append(below)
    if spec["le"] is not None:
        options.append(st.integers(min_value=spec["le"] + 1))
    if spec["finite"]:
        options.append(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    return key, draw(st.one_of(options))


@given(case=_out_of_range())
def test_values_out_of_range_are_refused_before_training(case):
    key, value = case
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        TrainConfig(**{key: value})
    code, lines = _refused_before_training(key, value)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"lpc-geom train: error: --set {key}: ")


_POSITIVE = st.floats(min_value=1e-6, max_value=1e6)
_DATASETS = st.one_of(
    st.tuples(st.just("mnist1d"), st.fixed_dictionaries({}, optional={"num_samples": st.integers(10, 10**5),
                                                                       "seed": st.integers(0, 99)})),
    st.tuples(st.just("blobs"), st.fixed_dictionaries({"num_classes": st.integers(2, 20),
                                                        "separation": _POSITIVE})),
    st.tuples(st.just("npz"), st.fixed_dictionaries({"path": st.text(min_size=1, max_size=10)})),
    st.tuples(st.just("cifar10"), st.fixed_dictionaries({"root": st.text(min_size=1, max_size=10),
                                                          "augment": st.booleans()})),
)
_BACKBONES = st.one_of(
    st.tuples(st.just("mlp"), st.fixed_dictionaries({}, optional={"hidden": st.lists(st.integers(1, 512), max_size=3),
                                                                   "batch_norm": st.booleans()})),
    st.tuples(st.just("cnn1d"), st.fixed_dictionaries({}, optional={"channels": st.lists(st.integers(1, 64),
                                                                                          min_size=1, max_size=3)})),
    st.tuples(st.just("resnet18"), st.fixed_dictionaries({}, optional={"width": st.integers(1, 64)})),
)
_GEOMETRIES = st.one_of(
    st.tuples(st.just("euclidean"), st.just({})),
    st.tuples(st.just("sphere"), st.fixed_dictionaries({}, optional={
        "radius": _POSITIVE, "radius_mode": st.sampled_from(["fixed", "learnable", "penalised"])})),
    st.tuples(st.just("poincare"), st.fixed_dictionaries({}, optional={
        "c": st.one_of(st.none(), _POSITIVE), "classifier": st.sampled_from(["mlr", "prototype"])})),
    st.tuples(st.just("stiefel"), st.fixed_dictionaries({}, optional={"bias": st.booleans()})),
)


@st.composite
def _valid_config(draw):
    values = {}
    for name, f in _FIELDS.items():
        spec, hint = f.metadata, _HINTS[name]
        if spec.get("choices") is not None or name.endswith("_options"):
            continue
        if hint is bool:
            values[name] = draw(st.booleans())
        elif hint is str:
            values[name] = draw(st.text(min_size=1, max_size=12).filter(str.strip))
        else:
            is_int = int in (*typing.get_args(hint), hint)
            low = spec["ge"] if spec["ge"] is not None else spec["gt"]
            high = spec["le"] if spec["le"] is not None else 10**6
            number = (st.integers(min_value=int(low) + (spec["ge"] is None), max_value=high) if is_int else
                      st.floats(min_value=low, max_value=high, exclude_min=spec["ge"] is None))
            values[name] = draw(st.one_of(st.none(), number) if type(None) in typing.get_args(hint) else number)
    values["row"] = draw(st.sampled_from(sorted(ROWS)))
    values["dataset"], values["dataset_options"] = draw(_DATASETS)
    values["backbone"], values["backbone_options"] = draw(_BACKBONES)
    values["geometry"], values["geometry_options"] = draw(_GEOMETRIES)
    values["gamma_schedule"] = draw(st.sampled_from(["exponential", "two-regime", "threshold", "constant"]))
    values["gamma_options"] = draw(st.fixed_dictionaries({}, optional={
        "start": st.floats(1e-6, 1.0), "factor": st.floats(0.5, 3.0), "gamma_max": st.floats(1.0, 1e6),
        "every": st.integers(1, 10)}))
    for name in ("optimizer", "kfac_fisher", "device", "dtype"):
        values[name] = draw(st.sampled_from(_FIELDS[name].metadata["choices"]()))
    return values


@given(values=_valid_config())
@settings(max_examples=60)
def test_valid_configs_round_trip_through_config_json(values):
    config = TrainConfig(**values)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.json"
        write_json(config.to_dict(), path)
        again = load_config(path)
    assert again == config and again.to_dict() == config.to_dict()
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()


def test_kfac_optimizers_name_a_base_optimizer_of_the_factory():
    from lpc_geom.optim import KFAC_OPTIMIZERS, OPTIMIZERS

    assert set(KFAC_OPTIMIZERS.values()) <= set(OPTIMIZERS)
    assert TrainConfig(optimizer="kfac-riemannian").optimizer == "kfac-riemannian"
