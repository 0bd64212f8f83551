"""Reading finished runs back: config, history, latents, model; and analysing them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpc_geom.config import TrainConfig, load_config
from lpc_geom.paths import check_writable_directory
from lpc_geom.train import run_dir
from lpc_geom.train.checkpoint import RunFileError, load_arrays, load_checkpoint, read_json, write_json
from lpc_geom.train.run_dir import CHECKPOINT, CONFIG, HISTORY, LATENTS, REPORT_FILES, ROBUSTNESS_FILES, RunLock

#: The arrays the trainer writes to ``latents.npz`` (``classifier_weight``/``classifier_bias`` when it has them).
LATENT_ARRAYS = tuple(f"{split}_{kind}" for split in ("train", "test")
                      for kind in ("latents", "labels", "predictions", "logits"))


@dataclass
class Run:
    """A finished run directory, loaded."""

    path: Path
    config: TrainConfig
    history: list[dict[str, Any]]
    arrays: dict[str, np.ndarray]

    def dataset(self):
        """The run's dataset, loaded again from its config (generators are seeded: same samples)."""
        from lpc_geom.data import load_dataset

        return load_dataset(self.config.dataset, **self.config.dataset_options)

    def model(self, dataset=None, backbone=None) -> torch.nn.Module:
        """The trained model (rebuilt from the config, weights from ``checkpoint.pt``), in eval mode.

        ``backbone`` (a module, factory or import path) rebuilds a run trained with a backbone passed as
        a Python object (its config records ``<python object ...>``); by default ``config.backbone``.
        """
        from lpc_geom.train.trainer import model_from_config

        model = model_from_config(self.config, dataset if dataset is not None else self.dataset(), backbone)
        file = self.path / CHECKPOINT
        state = load_checkpoint(file).get("model")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise RunFileError(f"{file}: not loaded: it holds no model state dict (key 'model')")
        model.to(dtype=next(iter(v for v in state.values() if v.is_floating_point())).dtype)
        model.load_state_dict(state)
        return model.eval()


def load_run(path: str | Path, *, trust_backbone: bool | str = False) -> Run:
    """Load a finished run directory written by :func:`lpc_geom.train.train`, executing no code from it.

    A run whose ``config.json`` names a backbone import path loads only when ``trust_backbone`` is True
    or that same path (see :func:`lpc_geom.config.load_config`): importing it runs the module's code.

    Raises
    ------
    FileNotFoundError
        A file of a finished run is missing (they are named).
    RunDirError
        The run's manifest says it did not finish (it is training, was stopped or failed).
    RunFileError
        A file is corrupt, holds anything but plain data (it is named; it was not loaded), or is not what a run
        writes: a ``config.json`` that is not a valid configuration, a ``latents.npz`` lacking one of
        :data:`LATENT_ARRAYS` or holding a member that is not a NumPy array.
    """
    path = Path(path)
    missing = [name for name in run_dir.TRAINED_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a finished lpc_geom run: missing {', '.join(missing)} "
                                f"(expected {', '.join(run_dir.TRAINED_FILES)})")
    run_dir.check_finished(path)
    config = load_config(path / CONFIG, trust_backbone=trust_backbone)
    history = read_json(path / HISTORY)
    return Run(path, config, history, _load_latents(path / LATENTS))


def _load_latents(file: Path) -> dict[str, np.ndarray]:
    arrays = load_arrays(file)
    not_arrays = sorted(key for key, value in arrays.items() if not isinstance(value, np.ndarray))
    if not_arrays:
        raise RunFileError(f"{file}: not loaded: member(s) {not_arrays} are not NumPy arrays (.npy)")
    missing = [key for key in LATENT_ARRAYS if key not in arrays]
    if missing:
        raise RunFileError(f"{file}: missing array(s) {missing}; a finished run holds {list(LATENT_ARRAYS)}")
    return arrays


def analyze_run(path: str | Path, *, split: str = "test", write: bool = True, backbone=None,
                trust_backbone: bool = False, **analyze_options):
    """:func:`lpc_geom.analyze` on a run's ``<split>`` latents, in the geometry of its head.

    The manifold and the classifier come from the trained model, so that spherical and hyperbolic runs
    are measured in their own geometry. Writes ``report_<split>.json`` next to the run when ``write``.
    A run with its own backbone needs it: ``backbone`` (its import path, which is then trusted, a
    factory or a module) or ``trust_backbone=True`` to import the path its ``config.json`` records.
    """
    from lpc_geom.analysis import analyze

    if split not in REPORT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with RunLock(path, shared=True):
        run = load_run(path, trust_backbone=_trusted(backbone, trust_backbone))
        if write:  # before any work: a report computed for a directory that cannot take it is lost
            check_writable_directory(path, create=False)
        model = run.model(backbone=backbone)
        head = model.head
        report = analyze(
            run.arrays[f"{split}_latents"], run.arrays[f"{split}_labels"],
            manifold=getattr(head, "manifold", None), classifier=analysis_classifier(head),
            logits=run.arrays[f"{split}_logits"], **analyze_options,
        )
        if write:
            write_json(run_dir.stamp(report.to_dict(reasons=True), run.path, LATENTS), run.path / REPORT_FILES[split])
    return report


def analysis_classifier(head: torch.nn.Module) -> torch.nn.Module | None:
    """The module mapping a head's latents to its logits, for NC3/NC4 and the Fisher figures.

    Linear and Poincaré (MLR / prototype) classifiers map latents to logits as they are. The sphere and
    cosine heads' classifiers return cosines, to which the training loss applies a scale (the sphere's
    radius, the margin schedule's scale): their Fisher metric would be that of another softmax, so they
    are left out (NC4 still comes from the stored logits).
    """
    from lpc_geom.models.heads import CosineClassifier

    if getattr(head, "geometry", None) == "sphere" or isinstance(head.classifier, CosineClassifier):
        return None
    return head.classifier


def robustness_file(split: str) -> str:
    """The file name of a robustness report on ``split``; a ValueError names the accepted splits."""
    if split not in ROBUSTNESS_FILES:
        raise ValueError(f"split must be one of {', '.join(map(repr, ROBUSTNESS_FILES))}, got {split!r}")
    return ROBUSTNESS_FILES[split]


def _trusted(backbone, trust_backbone: bool) -> bool | str:
    """What :func:`load_run` may import: everything, or the import path the caller passed."""
    return True if trust_backbone else backbone if isinstance(backbone, str) else False


def robustness_run(path: str | Path, *, samples: int = 1000, seed: int = 0, split: str = "test",
                   write: bool = True, backbone=None, trust_backbone: bool = False,
                   **report_options) -> dict[str, float]:
    """DeepFool, Lipschitz bounds and certified radii of a finished run (see
    :func:`~lpc_geom.analysis.robustness.robustness_of`); ``backbone`` and ``trust_backbone`` as in
    :func:`analyze_run`.

    Writes ``robustness.json`` (test inputs) or ``robustness_train.json`` (training inputs) next to the
    run when ``write``.
    """
    from lpc_geom.analysis.robustness import robustness_of, write_robustness_json

    file = robustness_file(split)  # before loading the run: a bad split fails at once
    with RunLock(path, shared=True):
        run = load_run(path, trust_backbone=_trusted(backbone, trust_backbone))
        if write:  # before any work: a report computed for a directory that cannot take it is lost
            check_writable_directory(path, create=False)
        data = run.dataset()
        report = robustness_of(run.model(data, backbone=backbone), data, samples=samples, seed=seed, split=split,
                               **report_options)
        if write:
            write_robustness_json(report, run.path / file, source=run_dir.stamp({}, run.path, CHECKPOINT)["source"])
    return report


def run_table(path: str | Path) -> str:
    """One markdown table per run joining its summary, analyzer reports and robustness record.

    Cached reports computed from other latents or weights than the run's present ones (a run trained
    again into the same directory) are left out and named below the table.
    """
    path = Path(path)
    sources = [("summary", path / run_dir.SUMMARY), ("test", path / REPORT_FILES["test"]),
               ("train", path / REPORT_FILES["train"]), ("robustness", path / ROBUSTNESS_FILES["test"]),
               ("robustness (train)", path / ROBUSTNESS_FILES["train"])]
    lines = [f"**{path}**", "", "| source | figure | value |", "|---|---|---|"]
    stale, hashes = [], {}
    for source, file in sources:
        if not file.is_file():
            continue
        if source != "summary" and not run_dir.is_fresh(file, _hashes=hashes):
            stale.append(file.name)
            continue
        for key, value in read_json(file).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f"| {source} | `{key}` | {value:.6g} |")
    if stale:
        lines += ["", f"Not shown, computed from other latents or weights than this run's: {', '.join(stale)} "
                      f"(recompute with lpc-geom analyze / lpc-geom robustness)."]
    return "\n".join(lines)
