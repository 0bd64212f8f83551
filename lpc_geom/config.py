"""Run configuration: one flat dataclass, loaded from TOML or YAML and overridden by flags.

Unknown keys and invalid values are errors that list what is accepted, so that a typo in a config file
never silently trains something else.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpc_geom.ablation import ROWS, get_row
from lpc_geom.configs import resolve_config

GEOMETRIES = ("euclidean", "sphere", "poincare", "stiefel")
OPTIMIZERS = ("auto", "adamw", "sgd", "riemannian-adam", "riemannian-sgd", "kfac-sgd", "kfac-adam", "kfac-riemannian")
FISHER_TYPES = ("mc", "empirical", "exact")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json`` in the run directory)."""

    # data
    dataset: str = "mnist1d"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    # model
    backbone: str = "mlp"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    row: str = "LPC"
    latent_dim: int | None = None
    classifier_bias: bool = False
    geometry: str = "euclidean"
    geometry_options: dict[str, Any] = field(default_factory=dict)
    # loss
    gamma_schedule: str = "exponential"
    gamma_options: dict[str, Any] = field(default_factory=dict)
    supcon_weight: float = 1.0
    temperature: float = 0.05
    # optimisation
    optimizer: str = "auto"  # adamw, or riemannian-adam when the model has manifold parameters
    lr: float = 1e-3
    weight_decay: float = 5e-4
    lr_halve_from: int = 250
    lr_halve_every: int = 50
    lr_halve_classifier: bool = False  # the paper keeps the classifier's learning rate constant
    kfac_damping: float = 1e-3
    kfac_damping_late: float | None = None  # K-FAC damping from lr_halve_from on; None: kfac_damping throughout
    kfac_update_freq: int = 10
    kfac_factor_freq: int = 1
    kfac_fisher: str = "mc"
    kfac_start_epoch: int = 0  # K-FAC preconditions from this epoch on; before it the base optimiser alone steps
    epochs: int = 200
    batch_size: int = 128
    # run
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    out_dir: str = "runs/default"
    checkpoint_every: int = 10
    final_robustness_samples: int = 0  # > 0: DeepFool etc. on this many test inputs after training
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming every invalid value and what is accepted."""
        problems = []

        def choice(name: str, accepted: tuple[str, ...]) -> None:
            if getattr(self, name) not in accepted:
                problems.append(f"{name}={getattr(self, name)!r} (accepted: {', '.join(accepted)})")

        choice("geometry", GEOMETRIES)
        choice("optimizer", OPTIMIZERS)
        choice("kfac_fisher", FISHER_TYPES)
        choice("device", DEVICES)
        choice("dtype", DTYPES)
        try:
            self.row = get_row(self.row).name
        except ValueError:
            problems.append(f"row={self.row!r} (accepted: {', '.join(ROWS)})")
        for name in ("epochs", "batch_size", "checkpoint_every", "lr_halve_every", "kfac_update_freq",
                     "kfac_factor_freq"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name}={value!r} (must be an integer >= 1)")
        for name in ("lr_halve_from", "final_robustness_samples", "seed", "kfac_start_epoch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{name}={value!r} (must be an integer >= 0)")
        for name in ("lr", "weight_decay", "supcon_weight", "temperature", "kfac_damping"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                problems.append(f"{name}={value!r} (must be a finite number >= 0)")
        late = self.kfac_damping_late
        if late is not None and (isinstance(late, bool) or not isinstance(late, (int, float))
                                 or not math.isfinite(late) or late <= 0):
            problems.append(f"kfac_damping_late={late!r} (must be None or a finite number > 0)")
        if self.lr == 0 or self.temperature == 0:
            problems.append("lr and temperature must be > 0")
        if self.latent_dim is not None and (not isinstance(self.latent_dim, int) or self.latent_dim < 1):
            problems.append(f"latent_dim={self.latent_dim!r} (must be None or an integer >= 1)")
        for name in ("dataset_options", "backbone_options", "geometry_options", "gamma_options"):
            if not isinstance(getattr(self, name), dict):
                problems.append(f"{name} must be a table/mapping, got {type(getattr(self, name)).__name__}")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        check_keys(changes, source="overrides")
        return dataclasses.replace(self, **changes)


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def check_keys(mapping: dict[str, Any], *, source: str) -> None:
    unknown = sorted(set(mapping) - set(config_keys()))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {source}; accepted keys: {', '.join(config_keys())}")


def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON (``.json``) file into a TrainConfig."""
    path = resolve_config(path)  # a file, or the name of a packaged config
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    except ValueError:
        raise
    except Exception as exc:  # parser errors: name the file
        raise ValueError(f"could not parse config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values")
    check_keys(data, source=str(path))
    return TrainConfig(**data)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (value as JSON when it parses, else a string), e.g. ``gamma_options={"factor":1.1}``."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value
