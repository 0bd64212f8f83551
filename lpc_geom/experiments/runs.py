"""Reading finished runs back: config, history, latents, model; and analysing them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpc_geom.config import TrainConfig
from lpc_geom.train.checkpoint import load_checkpoint, write_json

REQUIRED_FILES = ("config.json", "history.json", "latents.npz", "checkpoint.pt")


@dataclass
class Run:
    """A finished run directory, loaded."""

    path: Path
    config: TrainConfig
    history: list[dict[str, Any]]
    arrays: dict[str, np.ndarray]

    def model(self) -> torch.nn.Module:
        """The trained model (rebuilt from the config, weights from ``checkpoint.pt``), in eval mode."""
        from lpc_geom.data import load_dataset
        from lpc_geom.train.trainer import model_from_config

        data = load_dataset(self.config.dataset, **self.config.dataset_options)
        model = model_from_config(self.config, data)
        model.load_state_dict(load_checkpoint(self.path / "checkpoint.pt")["model"])
        return model.eval()


def load_run(path: str | Path) -> Run:
    """Load a run directory written by :func:`lpc_geom.train.train`; missing files are named."""
    path = Path(path)
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a finished lpc_geom run: missing {', '.join(missing)} "
                                f"(expected {', '.join(REQUIRED_FILES)})")
    config = TrainConfig(**json.loads((path / "config.json").read_text()))
    history = json.loads((path / "history.json").read_text())
    with np.load(path / "latents.npz") as archive:
        arrays = {key: archive[key] for key in archive.files}
    return Run(path, config, history, arrays)


def analyze_run(path: str | Path, *, split: str = "test", write: bool = True, **analyze_options):
    """:func:`lpc_geom.analyze` on a run's ``<split>`` latents, in the geometry of its head.

    The manifold and the classifier come from the trained model, so that spherical and hyperbolic runs
    are measured in their own geometry. Writes ``report_<split>.json`` next to the run when ``write``.
    """
    from lpc_geom.analysis import analyze

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    run = load_run(path)
    model = run.model()
    head = model.head
    report = analyze(
        run.arrays[f"{split}_latents"], run.arrays[f"{split}_labels"],
        manifold=getattr(head, "manifold", None),
        classifier=head.classifier if _is_linear(head.classifier) else None,
        logits=run.arrays[f"{split}_logits"], **analyze_options,
    )
    if write:
        write_json(report.to_dict(), run.path / f"report_{split}.json")
    return report


def _is_linear(module: torch.nn.Module) -> bool:
    """A plain ``W z + b`` classifier (NC3 and the Fisher figures need one)."""
    return isinstance(module, torch.nn.Linear)
