"""Reading finished runs back: config, history, latents, model; and analysing them."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpc_geom.config import TrainConfig, load_config
from lpc_geom.paths import check_writable_directory
from lpc_geom.train.checkpoint import load_checkpoint, write_json

REQUIRED_FILES = ("config.json", "history.json", "latents.npz", "checkpoint.pt")
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

    def model(self, dataset=None) -> torch.nn.Module:
        """The trained model (rebuilt from the config, weights from ``checkpoint.pt``), in eval mode."""
        from lpc_geom.train.trainer import model_from_config

        model = model_from_config(self.config, dataset if dataset is not None else self.dataset())
        state = load_checkpoint(self.path / "checkpoint.pt")["model"]
        model.to(dtype=next(iter(v for v in state.values() if v.is_floating_point())).dtype)
        model.load_state_dict(state)
        return model.eval()


def load_run(path: str | Path) -> Run:
    """Load a run directory written by :func:`lpc_geom.train.train`.

    Raises
    ------
    FileNotFoundError
        Naming the missing files.
    ValueError
        Naming the file: a ``config.json`` that is not a valid configuration (unknown key, null, wrong
        type), a ``history.json`` that is not JSON, a ``latents.npz`` that is not a readable archive, lacks
        one of :data:`LATENT_ARRAYS` or holds a member that is not a NumPy array.
    """
    path = Path(path)
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a finished lpc_geom run: missing {', '.join(missing)} "
                                f"(expected {', '.join(REQUIRED_FILES)})")
    config = load_config(path / "config.json")
    try:
        history = json.loads((path / "history.json").read_bytes())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path / 'history.json'}: not valid JSON ({exc})") from None
    return Run(path, config, history, _load_latents(path / "latents.npz"))


def _load_latents(file: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
        raise ValueError(f"{file}: not a readable .npz archive ({exc})") from None
    not_arrays = sorted(key for key, value in arrays.items() if not isinstance(value, np.ndarray))
    if not_arrays:
        raise ValueError(f"{file}: member(s) {not_arrays} are not NumPy arrays (.npy)")
    missing = [key for key in LATENT_ARRAYS if key not in arrays]
    if missing:
        raise ValueError(f"{file}: missing array(s) {missing}; a finished run holds {list(LATENT_ARRAYS)}")
    return arrays


def analyze_run(path: str | Path, *, split: str = "test", write: bool = True, **analyze_options):
    """:func:`lpc_geom.analyze` on a run's ``<split>`` latents, in the geometry of its head.

    The manifold and the classifier come from the trained model, so that spherical and hyperbolic runs
    are measured in their own geometry. Writes ``report_<split>.json`` next to the run when ``write``.
    """
    from lpc_geom.analysis import analyze

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    run = load_run(path)
    if write:  # before any work: a report computed for a directory that cannot take it is lost
        check_writable_directory(path, create=False)
    model = run.model()
    head = model.head
    report = analyze(
        run.arrays[f"{split}_latents"], run.arrays[f"{split}_labels"],
        manifold=getattr(head, "manifold", None), classifier=analysis_classifier(head),
        logits=run.arrays[f"{split}_logits"], **analyze_options,
    )
    if write:
        write_json(report.to_dict(), run.path / f"report_{split}.json")
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


#: Splits whose inputs a robustness measurement can attack, and the file each one's report goes to.
ROBUSTNESS_FILES = {"test": "robustness.json", "train": "robustness_train.json"}


def robustness_file(split: str) -> str:
    """The file name of a robustness report on ``split``; a ValueError names the accepted splits."""
    if split not in ROBUSTNESS_FILES:
        raise ValueError(f"split must be one of {', '.join(map(repr, ROBUSTNESS_FILES))}, got {split!r}")
    return ROBUSTNESS_FILES[split]


def robustness_of(model: torch.nn.Module, data, *, samples: int = 1000, seed: int = 0, split: str = "test",
                  **report_options) -> dict[str, float]:
    """:func:`~lpc_geom.analysis.robustness.robustness_report` on a seeded subsample of one of ``data``'s splits.

    ``samples`` inputs of ``split`` (``"test"``, as the LPC paper measures it, or ``"train"``: the inputs
    whose latents the training collapsed) are drawn without replacement with ``seed`` (all of them when
    there are fewer).
    """
    from lpc_geom.analysis.robustness import robustness_report

    robustness_file(split)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
    index = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[: min(samples, len(y))]
    parameter = next(model.parameters())
    inputs = x[index].to(device=parameter.device, dtype=parameter.dtype)
    return robustness_report(model, inputs, y[index].to(parameter.device), **report_options)


def robustness_run(path: str | Path, *, samples: int = 1000, seed: int = 0, split: str = "test",
                   write: bool = True, **report_options) -> dict[str, float]:
    """DeepFool, Lipschitz bounds and certified radii of a finished run (see :func:`robustness_of`).

    Writes ``robustness.json`` (test inputs) or ``robustness_train.json`` (training inputs) next to the
    run when ``write``.
    """
    from lpc_geom.analysis.robustness import write_robustness_json

    file = robustness_file(split)  # before loading the run: a bad split fails at once
    run = load_run(path)
    if write:  # before any work: a report computed for a directory that cannot take it is lost
        check_writable_directory(path, create=False)
    data = run.dataset()
    report = robustness_of(run.model(data), data, samples=samples, seed=seed, split=split, **report_options)
    if write:
        write_robustness_json(report, run.path / file)
    return report


def run_table(path: str | Path) -> str:
    """One markdown table per run joining its summary, analyzer reports and robustness record."""
    path = Path(path)
    sources = [("summary", path / "summary.json"), ("test", path / "report_test.json"),
               ("train", path / "report_train.json"), ("robustness", path / ROBUSTNESS_FILES["test"]),
               ("robustness (train)", path / ROBUSTNESS_FILES["train"])]
    lines = [f"**{path}**", "", "| source | figure | value |", "|---|---|---|"]
    for source, file in sources:
        if not file.is_file():
            continue
        for key, value in json.loads(file.read_text()).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f"| {source} | `{key}` | {value:.6g} |")
    return "\n".join(lines)
