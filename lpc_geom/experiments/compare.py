r"""Latent point collapse across geometries and optimisers: one sweep, its tables and its figures.

The grid is *geometry* x *optimiser* x *seed* on one dataset (default MNIST-1D):

- geometries (:data:`GEOMETRY_CELLS`): ``euclidean-LPC`` (the paper's linear penultimate layer with
  :math:`\gamma\|z\|^2`), ``euclidean-NoPen`` (the baseline without penultimate layer nor penalty),
  ``sphere``, ``poincare`` and ``stiefel`` (the manifold heads of :mod:`lpc_geom.models.geometry` with their
  own collapse energies and the same gamma schedule), and the optional ``poincare-2d`` (a 2-D Poincaré
  disk, drawn in its native coordinates);
- optimisers (:data:`OPTIMIZER_CELLS`): ``default`` (AdamW, or Riemannian Adam for heads with manifold
  parameters) and ``kfac`` (K-FAC natural gradient before AdamW, ``kfac-adam``; before Riemannian Adam,
  ``kfac-riemannian``, for manifold heads).

Every run is trained (:func:`lpc_geom.train.train`), its train and test latents analysed in the geometry
of its head (:func:`lpc_geom.experiments.runs.analyze_run`), and its robustness measured on a seeded
subsample of the test set (:func:`lpc_geom.experiments.runs.robustness_run`: DeepFool as in the paper,
the Fast Minimum-Norm attack, Lipschitz bounds, certified radii). Runs are independent jobs of
:func:`lpc_geom.experiments.sweep.run_jobs`: finished runs are reused on re-launch, a failed run is recorded
with its error, and the jobs run in local worker processes or on a cluster
(:mod:`lpc_geom.experiments.executors`) through the same code.

Written to the output directory:

- ``runs/<geometry>__<optimiser>__seed<k>/``: each run (config, history, checkpoint, latents, reports,
  ``record.json``);
- ``runs.csv`` / ``runs.json``: one row per run (``runs.json`` keeps the tracebacks of failed runs);
- ``cells.csv`` / ``cells.json``: one row per (geometry, optimiser) cell, mean and std over seeds;
- ``table.md``: the markdown table printed at the end, with the Euclidean LPC-vs-NoPen comparison;
- ``analysis.json``: the Gromov-Wasserstein matrices and the separation/robustness correlations (DeepFool,
  refined DeepFool and FMN, with and without the sphere cells);
- ``figures/``: ``latents_2d.png``, ``unit_histograms.png``, ``collapse_history.png``,
  ``separation_vs_robustness.png``, ``gw_matrix.png``.

The default settings (:func:`default_config`) are a compressed LPC recipe with a 1-D ResNet-18 under which
the default grid (5 geometries x 2 optimisers x 2 seeds, 20 runs) takes 8.5-9.5 minutes on two idle
cores, with peak memory about 0.85 GB per process (3 processes), and shows the paper's pattern (Euclidean
LPC against NoPen: separation ratio x5-6, DeepFool distance x3.4-3.9, accuracy kept). K-FAC runs are
started first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lpc_geom.config import TrainConfig, data_root_option, load_config, parse_override
from lpc_geom.experiments.executors import EXECUTORS, SweepExecutor, make_executor
from lpc_geom.experiments.sweep import Job, aggregate, default_workers, exit_status, failure_lines, run_jobs
from lpc_geom.experiments.tables import csv_text
from lpc_geom.train.checkpoint import write_json, write_text

__all__ = [
    "DEFAULT_GEOMETRIES",
    "DEFAULT_OPTIMIZERS",
    "GEOMETRY_CELLS",
    "OPTIMIZER_CELLS",
    "CompareResult",
    "CompareSettings",
    "build_jobs",
    "cell_rows",
    "correlations_by_attack",
    "default_config",
    "gw_matrices",
    "main",
    "markdown_table",
    "measure_robustness",
    "optimizer_for",
    "run_compare",
    "separation_robustness",
]

#: Geometry cells: the :class:`TrainConfig` fields each one sets.
GEOMETRY_CELLS: dict[str, dict[str, Any]] = {
    "euclidean-LPC": {"geometry": "euclidean", "row": "LPC"},
    "euclidean-NoPen": {"geometry": "euclidean", "row": "NoPen"},
    "sphere": {"geometry": "sphere", "row": "LPC"},
    "poincare": {"geometry": "poincare", "row": "LPC"},
    "stiefel": {"geometry": "stiefel", "row": "LPC"},
    "poincare-2d": {"geometry": "poincare", "row": "LPC", "latent_dim": 2},
}
DEFAULT_GEOMETRIES = ("euclidean-LPC", "euclidean-NoPen", "sphere", "poincare", "stiefel")
#: Optimiser cells: ``default`` is ``auto`` (AdamW / Riemannian Adam), ``kfac`` see :func:`optimizer_for`.
OPTIMIZER_CELLS = ("default", "kfac")
DEFAULT_OPTIMIZERS = OPTIMIZER_CELLS
DEFAULT_SEEDS = (0, 1)
DEFAULT_OUT = "results/compare_manifolds"
#: The reference cell of the relative seconds-per-epoch column.
REFERENCE_CELL = ("euclidean-LPC", "default")

#: The robustness figure of each attack: mean relative L2 distance of its adversarial points, per run.
ATTACKS = {
    "DeepFool": "robust_deepfool_mean_relative_norm",
    "DeepFool refined": "robust_deepfool_refined_mean_relative_norm",
    "FMN": "robust_fmn_mean_relative_norm",
}
#: Cells left out of the second separation-robustness correlation (their DeepFool figure overshoots most).
CORRELATION_EXCLUDED = ("sphere",)
#: Table columns: (title, record field, scale, format).
TABLE_COLUMNS = (
    ("test acc %", "final_test_acc", 100.0, ".1f"),
    ("sep. ratio (train)", "train_separation_ratio", 1.0, ".3g"),
    ("sep. ratio (test)", "test_separation_ratio", 1.0, ".3g"),
    ("σ_W/σ_T (train)", "train_sigma_w_rel", 1.0, ".2g"),
    ("norm CV (train)", "train_norm_cv", 1.0, ".2g"),
    *((f"{name} ‖r‖/‖x‖", key, 1.0, ".3g") for name, key in ATTACKS.items()),
    ("FMN median", "robust_fmn_median_relative_norm", 1.0, ".3g"),
    ("s/epoch", "epoch_seconds_median", 1.0, ".3g"),
)


def default_config() -> TrainConfig:
    """The base training config of the default comparison (every cell overrides geometry/row/optimiser).

    MNIST-1D with 4,000 samples (3,200 train), the LPC paper's backbone family, a ResNet-18 (batch norm,
    SiLU), built 1-D for the sequences (kernel 3) at an eighth of the standard width (stages of 8-64
    planes), 60 epochs of batch 128 at learning rate 4e-3; gamma grows x1.2 per epoch from 1e-2 up to 10
    (reached at epoch 38), and from epoch 30 every learning rate, the classifier's included, halves every
    6 epochs. K-FAC cells precondition with damping 1e-2 and 1e-3 once the learning rate decays, their
    curvature statistics taken every 10 steps, and a checkpoint written every 10 epochs (what a run
    stopped by a kill or a cluster time limit resumes from). Runs take about 40 s on one idle core (AdamW
    and K-FAC alike). Measured (README, "Geometries and optimisers in one command"), Euclidean LPC
    against NoPen, 2 seeds: separation ratio x5 (AdamW) and x6 (K-FAC), DeepFool distance x3.9 and x3.4, test accuracy
    +0.1 and +0.2 points, every cell at 97-98 %. With the MLP (``backbone="mlp"``, 8,000 samples) the
    same recipe keeps the accuracy and the collapse but not the robustness (DeepFool x0.9-1.0).
    """
    return TrainConfig(
        dataset="mnist1d",
        dataset_options={"num_samples": 4000, "seed": 0},
        backbone="resnet18",
        backbone_options={"width": 8},
        epochs=60,
        batch_size=128,
        lr=4e-3,
        weight_decay=5e-4,
        lr_halve_from=30,
        lr_halve_every=6,
        lr_halve_classifier=True,
        gamma_schedule="exponential",
        gamma_options={"start": 1e-2, "factor": 1.2, "gamma_max": 10.0},
        kfac_damping=1e-2,
        kfac_damping_late=1e-3,
        kfac_factor_freq=10,
        checkpoint_every=10,  # a run stopped by a time limit or a kill resumes from at most 10 epochs back
        progress=False,
        out_dir="runs/compare",
    )


def optimizer_for(choice: str, geometry: str) -> str:
    """The :class:`TrainConfig` optimiser of an optimiser cell in a geometry.

    Parameters
    ----------
    choice : {"default", "kfac"}
    geometry : str
        A :data:`lpc_geom.config.GEOMETRIES` name.

    Returns
    -------
    str
        ``"auto"`` for ``default`` (AdamW, or Riemannian Adam when the head has manifold parameters);
        ``"kfac-adam"`` (Euclidean) or ``"kfac-riemannian"`` (sphere, Poincaré, Stiefel) for ``kfac``.
    """
    if choice == "default":
        return "auto"
    if choice == "kfac":
        return "kfac-adam" if geometry == "euclidean" else "kfac-riemannian"
    raise ValueError(f"unknown optimiser cell {choice!r}; accepted: {', '.join(OPTIMIZER_CELLS)}")


@dataclass
class CompareSettings:
    """What one comparison runs.

    Attributes
    ----------
    base : TrainConfig
        Everything but geometry, row, latent width (for ``poincare-2d``), optimiser, seed and run
        directory, which the cells set.
    out : Path
        Output directory.
    geometries, optimizers : sequence of str
        Keys of :data:`GEOMETRY_CELLS` and :data:`OPTIMIZER_CELLS`.
    seeds : sequence of int
        Training seeds (initialisation and data order; the dataset is the same for every run).
    robustness_samples : int
        Test inputs of each robustness measurement (a seeded subsample, the same for every run).
    fmn_steps : int
        Steps of the Fast Minimum-Norm attack in each robustness measurement (0: none). It costs several
        times DeepFool: 100 steps from two starts are 200 forward and backward passes of the subsample.
    figures : bool
        Draw the PNG figures.
    """

    base: TrainConfig = field(default_factory=default_config)
    out: Path = Path(DEFAULT_OUT)
    geometries: Sequence[str] = DEFAULT_GEOMETRIES
    optimizers: Sequence[str] = DEFAULT_OPTIMIZERS
    seeds: Sequence[int] = DEFAULT_SEEDS
    robustness_samples: int = 500
    figures: bool = True
    fmn_steps: int = 100

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        problems = []
        unknown = [g for g in self.geometries if g not in GEOMETRY_CELLS]
        if unknown:
            problems.append(f"unknown geometries {unknown} (accepted: {', '.join(GEOMETRY_CELLS)})")
        unknown = [o for o in self.optimizers if o not in OPTIMIZER_CELLS]
        if unknown:
            problems.append(f"unknown optimisers {unknown} (accepted: {', '.join(OPTIMIZER_CELLS)})")
        for name, values in (("geometries", self.geometries), ("optimizers", self.optimizers),
                             ("seeds", self.seeds)):
            if not values:
                problems.append(f"{name} must not be empty")
            elif len(set(values)) != len(values):
                problems.append(f"{name} has duplicates: {list(values)}")
        if not isinstance(self.robustness_samples, int) or self.robustness_samples < 1:
            problems.append(f"robustness_samples must be an integer >= 1, got {self.robustness_samples!r}")
        if isinstance(self.fmn_steps, bool) or not isinstance(self.fmn_steps, int) or self.fmn_steps < 0:
            problems.append(f"fmn_steps must be an integer >= 0, got {self.fmn_steps!r}")
        if problems:
            raise ValueError("invalid comparison settings: " + "; ".join(problems))


def run_name(geometry: str, optimizer: str, seed: int) -> str:
    """Directory name of one run: ``<geometry>__<optimiser>__seed<k>``."""
    return f"{geometry}__{optimizer}__seed{seed}"


def build_jobs(settings: CompareSettings) -> list[Job]:
    """One :class:`~lpc_geom.experiments.sweep.Job` per (geometry, optimiser, seed), in that order.

    The record of each job carries the cell keys ``geometry`` (the cell name), ``optimizer`` (the cell
    name) and ``optimizer_name`` (what trained it, see :func:`optimizer_for`). Rows without a penultimate
    layer (NoPen) ignore the base config's ``latent_dim``: their latents are the backbone's features.
    """
    from lpc_geom.ablation import get_row

    jobs = []
    for geometry in settings.geometries:
        fields = dict(GEOMETRY_CELLS[geometry])
        if get_row(fields["row"]).penultimate == "none":  # NoPen: the latents are the backbone's features
            fields["latent_dim"] = None
        for optimizer in settings.optimizers:
            name_of_optimizer = optimizer_for(optimizer, fields["geometry"])
            for seed in settings.seeds:
                name = run_name(geometry, optimizer, seed)
                config = settings.base.replace(**fields, optimizer=name_of_optimizer, seed=int(seed),
                                               out_dir=str(settings.out / "runs" / name), progress=False)
                jobs.append(Job(name, config, {"geometry": geometry, "optimizer": optimizer,
                                               "optimizer_name": name_of_optimizer}))
    return jobs


def measure_robustness(job: Job, *, samples: int, fmn_steps: int = 100) -> dict[str, Any]:
    """Sweep post-processing: :func:`~lpc_geom.experiments.runs.robustness_run` with ``robust_`` keys.

    Its warnings (no finite Lipschitz bound for a cosine or hyperbolic head, ...) end up in the run's
    record with the others (:func:`lpc_geom.experiments.sweep.run_job`).
    """
    from lpc_geom.experiments.runs import robustness_run

    report = robustness_run(job.run_dir, samples=samples, seed=0, fmn_steps=fmn_steps,
                            backbone=job.config.backbone)
    return {f"robust_{key}": value for key, value in report.items()}


def warning_summary(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Distinct warnings of the runs, each with how many runs raised it (first 200 characters)."""
    counts: dict[str, int] = {}
    for record in records:
        for message in dict.fromkeys(m[:200] for m in record.get("warnings", [])):
            counts[message] = counts.get(message, 0) + 1
    return [f"{n} run(s): {message}" for message, n in counts.items()]


# --------------------------------------------------------------------------------------------- tables
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cell_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-cell mean and std over seeds (:func:`~lpc_geom.experiments.sweep.aggregate`), plus

    ``optimizer_name``, ``collapsed_to_origin`` (runs that ended with every class on the origin) and
    ``epoch_seconds_relative`` (median seconds per epoch over the :data:`REFERENCE_CELL`'s, NaN when that
    cell is not in the grid or has no finished run).
    """
    rows = aggregate(records, by=["geometry", "optimizer"])
    names = {(r["geometry"], r["optimizer"]): r.get("optimizer_name") for r in records}
    reference = next((r for r in rows if (r["geometry"], r["optimizer"]) == REFERENCE_CELL), None)
    ref_seconds = reference.get("epoch_seconds_median_mean", math.nan) if reference else math.nan
    for row in rows:
        key = (row["geometry"], row["optimizer"])
        row["optimizer_name"] = names[key]
        row["collapsed_to_origin"] = sum(
            1 for r in records if (r["geometry"], r["optimizer"]) == key and r.get("status") == "ok"
            and r.get("final_collapsed_to_origin"))
        seconds = row.get("epoch_seconds_median_mean", math.nan)
        row["epoch_seconds_relative"] = seconds / ref_seconds if ref_seconds and ref_seconds > 0 else math.nan
    return rows


def _cell_text(row: Mapping[str, Any], key: str, scale: float, fmt: str) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None or math.isnan(mean):  # no finished run, or a figure undefined in that geometry
        return "n/a"
    if math.isinf(mean):
        return f"{mean}"
    return f"{scale * mean:{fmt}} ± {scale * std:.2g}"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-cell markdown table (mean ± std over seeds)."""
    header = ["geometry", "optimiser", "runs", *(t for t, *_ in TABLE_COLUMNS), "s/epoch ÷ Eucl. LPC"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        runs = str(row["runs"])
        if row["failed"]:
            runs += f" ({row['failed']} failed)"
        if row["collapsed_to_origin"]:
            runs += f" ({row['collapsed_to_origin']} at origin)"
        cells = [row["geometry"], f"{row['optimizer']} ({row['optimizer_name']})", runs]
        cells += [_cell_text(row, key, scale, fmt) for _, key, scale, fmt in TABLE_COLUMNS]
        relative = row["epoch_seconds_relative"]
        cells.append(f"{relative:.2f}" if math.isfinite(relative) else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lpc_vs_nopen(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Euclidean LPC against NoPen per optimiser: the paper's pattern, in words (ratios of cell means)."""
    by_key = {(r["geometry"], r["optimizer"]): r for r in rows}
    lines = []
    for optimizer in dict.fromkeys(r["optimizer"] for r in rows):
        lpc, nopen = by_key.get(("euclidean-LPC", optimizer)), by_key.get(("euclidean-NoPen", optimizer))
        if not lpc or not nopen or not lpc["runs"] or not nopen["runs"]:
            continue
        sep = lpc["train_separation_ratio_mean"] / nopen["train_separation_ratio_mean"]
        rob, refined, minimum = (lpc.get(f"{key}_mean", math.nan) / nopen.get(f"{key}_mean", math.nan)
                                 for key in ATTACKS.values())
        acc = 100 * (lpc["final_test_acc_mean"] - nopen["final_test_acc_mean"])
        lines.append(f"- {optimizer}: Euclidean LPC vs NoPen: separation ratio (train) x{sep:.3g}, "
                     f"DeepFool robustness x{rob:.3g} (refined x{refined:.3g}, FMN x{minimum:.3g}), "
                     f"test accuracy {acc:+.1f} points")
    return lines


# --------------------------------------------------------------------------------------------- analyses
@dataclass
class _LoadedRun:
    record: dict[str, Any]
    latents: np.ndarray
    labels: np.ndarray
    history: list[dict[str, Any]]
    manifold: Any


def _load_runs(records: Sequence[Mapping[str, Any]], split: str = "train",
               trust_backbone: bool | str = False) -> list[_LoadedRun]:
    """Latents, history and head manifold of every finished run (datasets loaded once per config)."""
    from lpc_geom.data import load_dataset
    from lpc_geom.experiments.runs import load_run

    datasets: dict[str, Any] = {}
    loaded = []
    for record in records:
        if record.get("status") != "ok":
            continue
        run = load_run(record["run_dir"], trust_backbone=trust_backbone)
        key = json.dumps([run.config.dataset, run.config.dataset_options], sort_keys=True)
        if key not in datasets:
            datasets[key] = load_dataset(run.config.dataset, **run.config.dataset_options)
        manifold = getattr(run.model(datasets[key]).head, "manifold", None)
        loaded.append(_LoadedRun(dict(record), run.arrays[f"{split}_latents"], run.arrays[f"{split}_labels"],
                                 run.history, manifold))
    return loaded


def gw_matrices(loaded: Sequence[_LoadedRun], *, restarts: int = 5) -> dict[str, dict[str, Any]]:
    """Gromov-Wasserstein discrepancies between the geometries' class-centre configurations.

    For each optimiser cell, entry ``(a, b)`` is the mean of
    :func:`lpc_geom.analysis.transport.compare` (class centres of the training latents, each in the
    geometry of its head, distances normalised by their mean) over every pair of distinct runs, one of
    geometry ``a`` and one of ``b``; the diagonal compares the seeds of one geometry with each other (the
    noise floor), and is NaN with a single seed. Pairs that cannot be compared (every class centre on one
    point) are left out and listed in ``errors``.

    Returns
    -------
    dict
        ``{optimiser: {"geometries": [...], "matrix": [[...]], "pairs": [[...]], "errors": [...]}}``.
    """
    from lpc_geom.analysis.transport import compare

    result: dict[str, dict[str, Any]] = {}
    for optimizer in dict.fromkeys(r.record["optimizer"] for r in loaded):
        runs = [r for r in loaded if r.record["optimizer"] == optimizer]
        geometries = list(dict.fromkeys(r.record["geometry"] for r in runs))
        index = {g: i for i, g in enumerate(geometries)}
        sums = np.zeros((len(geometries),) * 2)
        counts = np.zeros_like(sums, dtype=int)
        errors = []
        for i, a in enumerate(runs):
            for b in runs[i + 1:]:
                try:
                    value = compare(a.latents, a.labels, b.latents, b.labels, manifold_a=a.manifold,
                                    manifold_b=b.manifold, restarts=restarts)
                except ValueError as exc:
                    errors.append(f"{a.record['name']} vs {b.record['name']}: {exc}")
                    continue
                ia, ib = index[a.record["geometry"]], index[b.record["geometry"]]
                for p, q in {(ia, ib), (ib, ia)}:
                    sums[p, q] += value
                    counts[p, q] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            matrix = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        result[optimizer] = {"geometries": geometries, "matrix": matrix.tolist(), "pairs": counts.tolist(),
                             "errors": errors}
    return result


def separation_robustness(records: Sequence[Mapping[str, Any]], key: str = ATTACKS["DeepFool"],
                          exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Pearson correlation, over finished runs, of the training separation ratio and a robustness figure.

    Parameters
    ----------
    records : sequence of dict
        Run records.
    key : str, default DeepFool's mean relative distance
        The robustness field (one of :data:`ATTACKS`' values, or any other).
    exclude : sequence of str
        Geometry cells left out.

    Returns
    -------
    dict
        ``n`` (runs with both figures finite), ``pearson`` (separation ratio vs robustness, as the
        paper reports it), ``pearson_log`` (log10 separation ratio vs robustness: the ratio spans
        decades); NaN when fewer than 3 runs or a constant variable.
    """
    pairs = [(r["train_separation_ratio"], r[key]) for r in records
             if r.get("status") == "ok" and r.get("geometry") not in exclude
             and _number(r.get("train_separation_ratio")) and _number(r.get(key))
             and math.isfinite(r["train_separation_ratio"]) and r["train_separation_ratio"] > 0
             and math.isfinite(r[key])]
    out: dict[str, Any] = {"n": len(pairs), "pearson": math.nan, "pearson_log": math.nan}
    if len(pairs) >= 3:
        sep, rob = np.array(pairs).T
        for name, x in (("pearson", sep), ("pearson_log", np.log10(sep))):
            if np.std(x) > 0 and np.std(rob) > 0:
                out[name] = float(np.corrcoef(x, rob)[0, 1])
    return out


def correlations_by_attack(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`separation_robustness` for every attack of :data:`ATTACKS`, over all runs and without the
    :data:`CORRELATION_EXCLUDED` cells.

    Returns
    -------
    dict
        ``{attack: {"all": {...}, "without sphere": {...}}}``.
    """
    without = "without " + "/".join(CORRELATION_EXCLUDED)
    return {name: {"all": separation_robustness(records, key),
                   without: separation_robustness(records, key, exclude=CORRELATION_EXCLUDED)}
            for name, key in ATTACKS.items()}


def correlation_lines(by_attack: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """The correlations of :func:`correlations_by_attack`, one markdown bullet per attack."""
    lines = []
    for name, subsets in by_attack.items():
        parts = [f"{subset}: r = {c['pearson']:.3f} (log10 ratio {c['pearson_log']:.3f}, {c['n']} runs)"
                 for subset, c in subsets.items()]
        lines.append(f"- separation ratio vs {name} robustness, Pearson " + "; ".join(parts))
    return lines


# --------------------------------------------------------------------------------------------- figures
def _first_runs(loaded: Sequence[_LoadedRun]) -> dict[tuple[str, str], _LoadedRun]:
    """The run with the smallest seed of each (geometry, optimiser) cell, in grid order."""
    first: dict[tuple[str, str], _LoadedRun] = {}
    for run in sorted(loaded, key=lambda r: r.record["seed"]):
        first.setdefault((run.record["geometry"], run.record["optimizer"]), run)
    order = {key: i for i, key in enumerate(dict.fromkeys((r.record["geometry"], r.record["optimizer"])
                                                          for r in loaded))}
    return dict(sorted(first.items(), key=lambda item: order[item[0]]))


def _grid(first: Mapping[tuple[str, str], Any]):
    import matplotlib.pyplot as plt

    geometries = list(dict.fromkeys(g for g, _ in first))
    optimizers = list(dict.fromkeys(o for _, o in first))
    fig, axes = plt.subplots(len(optimizers), len(geometries), figsize=(3.6 * len(geometries),
                                                                        3.4 * len(optimizers)), squeeze=False)
    return fig, axes, geometries, optimizers


def _is_disk(run: _LoadedRun) -> bool:
    import geoopt

    return (run.latents.shape[1] == 2 and isinstance(run.manifold, geoopt.Stereographic)
            and float(run.manifold.k) < 0)


def figure_latents(loaded: Sequence[_LoadedRun]):
    """2-D views of the training latents, one panel per cell (its first seed): PCA, or the native Poincaré
    disk (scaled to the unit disk, :math:`\\sqrt c\\, z`) for 2-D ball latents."""
    from lpc_geom.experiments.plots import plot_latents_2d

    first = _first_runs(loaded)
    fig, axes, geometries, optimizers = _grid(first)
    for (geometry, optimizer), run in first.items():
        ax = axes[optimizers.index(optimizer), geometries.index(geometry)]
        sep = run.record.get("train_separation_ratio", math.nan)
        title = f"{geometry} / {optimizer}\nseed {run.record['seed']}, sep. ratio {sep:.3g}"
        if _is_disk(run):
            scale = math.sqrt(-float(run.manifold.k))
            plot_latents_2d(ax, scale * run.latents, run.labels, disk=True, title=title + " (disk)")
        else:
            plot_latents_2d(ax, run.latents, run.labels, title=title)
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_axis_off()
    fig.suptitle("training latents (PCA; native disk for 2-D Poincaré), coloured by class")
    return fig


def figure_histograms(loaded: Sequence[_LoadedRun]):
    """Per-unit histograms of the training latents (binary encoding shows as two spikes at ±1)."""
    from lpc_geom.experiments.plots import plot_unit_histograms

    first = _first_runs(loaded)
    fig, axes, geometries, optimizers = _grid(first)
    for (geometry, optimizer), run in first.items():
        ax = axes[optimizers.index(optimizer), geometries.index(geometry)]
        plot_unit_histograms(ax, run.latents, title=f"{geometry} / {optimizer}")
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_axis_off()
    fig.suptitle("first 8 latent units, each scaled to its max |value| (training latents)")
    return fig


HISTORY_KEYS = (("train_separation_ratio", True), ("train_sigma_w_rel", True), ("test_acc", False))


def mean_histories(loaded: Sequence[_LoadedRun]) -> dict[tuple[str, str], list[dict[str, float]]]:
    """Per cell, the per-epoch mean over seeds of the history figures in :data:`HISTORY_KEYS` (and gamma)."""
    cells: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
    for run in loaded:
        cells.setdefault((run.record["geometry"], run.record["optimizer"]), []).append(run.history)
    means = {}
    for key, histories in cells.items():
        epochs = min(len(h) for h in histories)
        rows = []
        for e in range(epochs):
            row: dict[str, float] = {"epoch": histories[0][e]["epoch"]}
            for name in [k for k, _ in HISTORY_KEYS] + ["gamma"]:
                values = [h[e].get(name) for h in histories]
                finite = [float(v) for v in values if _number(v) and math.isfinite(v)]
                if finite:
                    row[name] = float(np.mean(finite))
            rows.append(row)
        means[key] = rows
    return means


def figure_history(loaded: Sequence[_LoadedRun]):
    """Collapse over training (``history.json``: figures of the trainer's fixed training subsample, and test
    accuracy; mean over seeds), one row per optimiser."""
    import matplotlib.pyplot as plt

    from lpc_geom.experiments.plots import plot_history

    means = mean_histories(loaded)
    optimizers = list(dict.fromkeys(o for _, o in means))
    fig, axes = plt.subplots(len(optimizers), len(HISTORY_KEYS), figsize=(5 * len(HISTORY_KEYS),
                                                                           3.6 * len(optimizers)), squeeze=False)
    for i, optimizer in enumerate(optimizers):
        histories = {g: rows for (g, o), rows in means.items() if o == optimizer}
        for j, (key, log) in enumerate(HISTORY_KEYS):
            plot_history(axes[i, j], histories, key, log=log, title=f"{key}, {optimizer}")
    return fig


def figure_scatter(records: Sequence[Mapping[str, Any]], correlation: Mapping[str, Any]):
    """Training separation ratio against DeepFool robustness, one point per run, with the correlation."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    geometries = list(dict.fromkeys(r["geometry"] for r in records))
    markers = {"default": "o", "kfac": "^"}
    colours = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(geometries)}
    for r in records:
        x, y = r.get("train_separation_ratio"), r.get("robust_deepfool_mean_relative_norm")
        if r.get("status") != "ok" or not (_number(x) and _number(y) and x > 0):
            continue
        ax.scatter(x, y, color=colours[r["geometry"]], marker=markers.get(r["optimizer"], "s"), s=36,
                   edgecolors="k", linewidths=0.4)
    for g in geometries:
        ax.scatter([], [], color=colours[g], marker="o", label=g)
    for name, marker in markers.items():
        ax.scatter([], [], color="0.6", marker=marker, label=f"optimiser: {name}")
    ax.set_xscale("log")
    ax.set_xlabel("separation ratio (training latents)")
    ax.set_ylabel("DeepFool ‖r‖/‖x‖ (test inputs)")
    ax.set_title(f"Pearson r = {correlation['pearson']:.2f} (log10 ratio: {correlation['pearson_log']:.2f}), "
                 f"n = {correlation['n']} runs", fontsize="medium")
    ax.legend(fontsize="x-small")
    return fig


def figure_gw(gw: Mapping[str, Mapping[str, Any]]):
    """Heat maps of the GW matrices of :func:`gw_matrices`, one per optimiser, values annotated."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(gw), figsize=(5.6 * len(gw), 4.8), squeeze=False)
    for ax, (optimizer, entry) in zip(axes[0], gw.items(), strict=True):
        matrix = np.array(entry["matrix"], dtype=float)
        names = entry["geometries"]
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize="small")
        ax.set_yticks(range(len(names)), names, fontsize="small")
        finite = matrix[np.isfinite(matrix)]
        middle = (finite.max() + finite.min()) / 2 if finite.size else 0.0
        for (i, j), value in np.ndenumerate(matrix):
            text = "n/a" if not math.isfinite(value) else f"{value:.2g}"
            ax.text(j, i, text, ha="center", va="center", fontsize="x-small",
                    color="w" if math.isfinite(value) and value < middle else "k")
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title(f"GW between class-centre configurations\n({optimizer}; diagonal: seed vs seed)",
                     fontsize="medium")
    return fig


def draw_figures(records: Sequence[Mapping[str, Any]], loaded: Sequence[_LoadedRun],
                 gw: Mapping[str, Any], correlation: Mapping[str, Any], folder: Path) -> list[Path]:
    """Write the five figures to ``folder``; returns their paths (none without a finished run)."""
    from lpc_geom.experiments.plots import save_figure

    if not loaded:
        return []
    figures = [
        ("latents_2d.png", figure_latents(loaded)),
        ("unit_histograms.png", figure_histograms(loaded)),
        ("collapse_history.png", figure_history(loaded)),
        ("separation_vs_robustness.png", figure_scatter(records, correlation)),
    ]
    if any(np.isfinite(np.array(e["matrix"], dtype=float)).any() for e in gw.values()):
        figures.append(("gw_matrix.png", figure_gw(gw)))
    return [save_figure(fig, folder / name) for name, fig in figures]


# --------------------------------------------------------------------------------------------- driver
@dataclass
class CompareResult:
    """What :func:`run_compare` returns (everything is also written to ``out``)."""

    out: Path
    records: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    table: str
    gw: dict[str, Any]
    correlation: dict[str, Any]
    figures: list[Path]
    seconds: float
    correlations_by_attack: dict[str, Any] = field(default_factory=dict)


def run_compare(settings: CompareSettings, *, executor: SweepExecutor | None = None,
                progress: bool = True, log=print) -> CompareResult:
    """Run (or resume) the comparison and write its tables, analyses and figures.

    Parameters
    ----------
    settings : CompareSettings
    executor : SweepExecutor, optional
        Where the runs execute; default: one local worker process per CPU core.
    progress : bool, default True
        Progress bar over the runs.
    log : callable, default print
        Receives the progress messages (where results go, failures, the table).

    Returns
    -------
    CompareResult
    """
    start = time.perf_counter()
    out = settings.out
    executor = executor if executor is not None else make_executor("local", workers=default_workers())
    jobs = build_jobs(settings)
    base = settings.base
    log(f"compare_manifolds: {len(jobs)} runs = {len(settings.geometries)} geometries x "
        f"{len(settings.optimizers)} optimisers x {len(settings.seeds)} seeds; {base.dataset} "
        f"{json.dumps(base.dataset_options)}, {base.backbone} {json.dumps(base.backbone_options)}, "
        f"{base.epochs} epochs; runs on {executor.describe()}")
    log(f"results go to {out.resolve()}")
    # K-FAC runs cost several AdamW runs: start them first, so that no long run starts last (the records
    # come back in grid order).
    order = sorted(jobs, key=lambda job: job.cell["optimizer"] != "kfac")
    by_name = {r["name"]: r for r in run_jobs(
        order, progress=progress, executor=executor,
        postprocess=partial(measure_robustness, samples=settings.robustness_samples,
                            fmn_steps=settings.fmn_steps))}
    records = [by_name[job.name] for job in jobs]
    for line in warning_summary(records):
        log(f"warning in {line}")
    cells = cell_rows(records)
    loaded = _load_runs(records, trust_backbone=settings.base.backbone)  # the runs this command trained
    gw = gw_matrices(loaded)
    for entry in gw.values():
        for error in entry["errors"]:
            log(f"GW left out: {error}")
    correlation = separation_robustness(records)
    by_attack = correlations_by_attack(records)
    table = markdown_table(cells)
    pattern = lpc_vs_nopen(cells)
    reference = " / ".join(REFERENCE_CELL)
    text = "\n".join([
        f"{base.dataset} {json.dumps(base.dataset_options)}, {base.backbone} {json.dumps(base.backbone_options)}, "
        f"{base.epochs} epochs, seeds "
        f"{list(settings.seeds)}; mean ± std over seeds; collapse figures of the training latents, each in the "
        f"geometry of its head; DeepFool and FMN on {settings.robustness_samples} test inputs; s/epoch ÷ the "
        f"{reference} cell (runs share the machine: a rough cost ratio).",
        "", table, "",
        *pattern,
        *correlation_lines(by_attack),
    ])
    write_json(records, out / "runs.json")
    write_text(csv_text(records), out / "runs.csv")
    write_json(cells, out / "cells.json")
    write_text(csv_text(cells), out / "cells.csv")
    write_text(text + "\n", out / "table.md")
    write_json({"gw": gw, "separation_vs_robustness": correlation, "separation_vs_robustness_by_attack": by_attack},
               out / "analysis.json")
    figures = draw_figures(records, loaded, gw, correlation, out / "figures") if settings.figures else []
    seconds = time.perf_counter() - start
    log("\n" + text)
    log(f"\nwritten to {out.resolve()}: table.md, runs.csv/json (one row per run), cells.csv/json (per cell), "
        f"analysis.json; figures in {(out / 'figures').resolve()}"
        + (f" ({', '.join(p.name for p in figures)})" if figures else " (none)")
        + f"; one directory per run in {(out / 'runs').resolve()}. Took {seconds:.0f} s.")
    failures = failure_lines(records)
    if failures:  # last, where they are seen; the exit status says the same (cli)
        log("\n" + "\n".join(failures) + "\nlaunch the same command again to retry them")
    return CompareResult(out, records, cells, table, gw, correlation, figures, seconds, by_attack)


# --------------------------------------------------------------------------------------------- CLI
def _key_values(pairs: Iterable[str], what: str) -> dict[str, Any]:
    out = {}
    for text in pairs:
        try:
            key, value = parse_override(text)
        except ValueError as exc:
            raise SystemExit(f"{what}: {exc}") from None
        out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``compare_manifolds`` command line (also ``python benchmarks/compare_manifolds.py --help``)."""
    parser = argparse.ArgumentParser(
        prog="lpc-geom compare",
        description="Compare latent point collapse across geometries (Euclidean LPC, the NoPen baseline, "
                    "sphere, Poincaré ball, Stiefel) and optimisers (AdamW / Riemannian Adam, K-FAC), over "
                    "seeds: train every run, analyse its latents in its own geometry, measure its "
                    "robustness, then write per-run and per-cell tables (CSV, JSON, markdown) and figures "
                    "(PNG). Finished runs are reused when the same command is launched again; a failed run "
                    "is recorded with its error and the others go on.",
        epilog="Examples:\n"
               "  lpc-geom compare                        # the default grid, ~9 min "
               "on 2 idle cores\n"
               "  lpc-geom compare --geometries euclidean-LPC sphere --optimizers "
               "default --seeds 0\n"
               "  lpc-geom compare --dataset digits --epochs 40 --out results/digits\n"
               "  lpc-geom compare --dry-run --seeds 0 1 2                      # list the runs it would start\n"
               "  lpc-geom compare --dataset cifar10 --data-root ~/data/cifar \\\n"
               "      --backbone resnet18 --set epochs=200 --executor submitit --slurm-partition gpu "
               "--gpus-per-node 1\n"
               "Outputs (under --out): table.md, runs.csv/json, cells.csv/json, analysis.json, figures/*.png, "
               "runs/<geometry>__<optimiser>__seed<k>/.\n"
               "Exit status: 0 when every run finished, 1 when any failed (listed at the end; the same command "
               "retries them), 130 on Ctrl-C. Half-trained runs resume from their checkpoints; a run whose "
               "worker process died is retried once; with --executor submitit a run that reaches "
               "--timeout-min is requeued and resumes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    grid = parser.add_argument_group("grid")
    grid.add_argument("--geometries", nargs="+", default=list(DEFAULT_GEOMETRIES), choices=list(GEOMETRY_CELLS),
                      metavar="G", help=f"geometry cells, from {', '.join(GEOMETRY_CELLS)} "
                                        f"(default: {' '.join(DEFAULT_GEOMETRIES)})")
    grid.add_argument("--optimizers", nargs="+", default=list(DEFAULT_OPTIMIZERS), choices=list(OPTIMIZER_CELLS),
                      metavar="O", help="optimiser cells: default (AdamW, Riemannian Adam for manifold heads), "
                                        "kfac (K-FAC + AdamW / Riemannian Adam) (default: both)")
    grid.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS),
                      help="training seeds (default: 0 1)")
    training = parser.add_argument_group(
        "training (defaults: a 60-epoch compressed LPC recipe, 1-D ResNet-18 on MNIST-1D)")
    training.add_argument("--config", metavar="FILE",
                          help="base TrainConfig file (TOML/YAML/JSON) instead of the built-in default")
    training.add_argument("--dataset", help="dataset of lpc_geom.data (mnist1d, digits, blobs, cifar10, "
                                            "cifar100, npz); its options reset to the loader's defaults")
    training.add_argument("--data-root", help="CIFAR directory (cifar10/cifar100) or .npz file (npz), as for "
                                              "lpc-geom train")
    training.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                          help="dataset option, VALUE as JSON where it parses (repeatable), e.g. num_samples=8000")
    training.add_argument("--backbone", help="a backbone name (lpc-geom backbones) or an import path "
                                             "package.module:factory (options reset)")
    training.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                          help="backbone option (repeatable), e.g. hidden=[256,256]")
    training.add_argument("--epochs", type=int, help="epochs of every run (default: the base config's, 60)")
    training.add_argument("--latent-dim", type=int, help="penultimate width (default: the LPC row's, 64 for "
                                                         "<= 10 classes; poincare-2d always uses 2)")
    training.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="any other TrainConfig field (repeatable), e.g. lr=1e-3 or "
                               "gamma_options='{\"start\":0.01,\"factor\":1.1,\"gamma_max\":10}'")
    training.add_argument("--robustness-samples", type=int, default=500,
                          help="test inputs of each robustness measurement (default 500)")
    training.add_argument("--fmn-steps", type=int, default=100,
                          help="steps of the Fast Minimum-Norm attack of each robustness measurement (default 100, "
                               "from 0 and from DeepFool's point; 0: none)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    output.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    output.add_argument("--dry-run", action="store_true",
                        help="list the runs the command would start (name, config, directory) and exit")
    execution = parser.add_argument_group("execution")
    execution.add_argument("--executor", choices=EXECUTORS, default="local",
                           help="local: worker processes on this machine; submitit: Slurm through submitit "
                                "(pip install 'lpc_geom[cluster]'), or its local/debug modes")
    execution.add_argument("--workers", type=int, default=default_workers(),
                           help="local worker processes, one thread each (default: one per core)")
    execution.add_argument("--submitit-cluster", choices=["auto", "slurm", "local", "debug"], default="auto",
                           help="submitit: auto (Slurm if sbatch is found, else local subprocesses), slurm, "
                                "local, or debug (jobs one by one in this process)")
    execution.add_argument("--submitit-folder", help="submitit logs (default: OUT/submitit)")
    execution.add_argument("--max-in-flight", type=int,
                           help="submitit: at most this many unfinished jobs (default: all at once on Slurm, "
                                "one per core locally)")
    execution.add_argument("--timeout-min", type=int, default=60, help="submitit: time limit per run (minutes)")
    execution.add_argument("--slurm-partition", help="submitit: Slurm partition")
    execution.add_argument("--cpus-per-task", type=int, help="submitit: CPUs per run")
    execution.add_argument("--gpus-per-node", type=int, help="submitit: GPUs per run")
    execution.add_argument("--mem-gb", type=float, help="submitit: memory per run (GB)")
    execution.add_argument("--submitit-param", action="append", default=[], metavar="KEY=VALUE",
                           help="any other AutoExecutor.update_parameters argument (repeatable), e.g. "
                                "slurm_account=myproject")
    return parser


def settings_from_args(args: argparse.Namespace) -> CompareSettings:
    """The :class:`CompareSettings` a parsed command line describes (errors name the bad flag)."""
    base = load_config(args.config, trust_backbone=args.backbone or False) if args.config else default_config()
    changes: dict[str, Any] = {}
    if args.dataset is not None:
        changes["dataset"], changes["dataset_options"] = args.dataset, {}
    if args.dataset_option:
        changes["dataset_options"] = {**changes.get("dataset_options", base.dataset_options),
                                      **_key_values(args.dataset_option, "--dataset-option")}
    if args.data_root is not None:
        dataset = changes.get("dataset", base.dataset)
        changes["dataset_options"] = {**changes.get("dataset_options", base.dataset_options),
                                      data_root_option(dataset): args.data_root}
    if args.backbone is not None:
        changes["backbone"], changes["backbone_options"] = args.backbone, {}
    if args.backbone_option:
        changes["backbone_options"] = {**changes.get("backbone_options", base.backbone_options),
                                       **_key_values(args.backbone_option, "--backbone-option")}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.latent_dim is not None:
        changes["latent_dim"] = args.latent_dim
    changes.update(_key_values(args.set, "--set"))
    cell_keys = sorted({"geometry", "row", "optimizer", "seed", "out_dir"} & set(changes))
    if cell_keys:
        raise SystemExit(f"--set {', '.join(cell_keys)}: the grid sets these (use --geometries, --optimizers, "
                         f"--seeds, --out)")
    try:
        base = base.replace(**changes)
        return CompareSettings(base=base, out=Path(args.out), geometries=args.geometries,
                               optimizers=args.optimizers, seeds=args.seeds,
                               robustness_samples=args.robustness_samples, figures=not args.no_figures,
                               fmn_steps=args.fmn_steps)
    except (TypeError, ValueError) as exc:
        raise SystemExit(str(exc)) from None


def executor_from_args(args: argparse.Namespace) -> SweepExecutor:
    """The executor a parsed command line asks for."""
    if args.executor == "local":
        return make_executor("local", workers=args.workers)
    parameters = {"timeout_min": args.timeout_min, "slurm_partition": args.slurm_partition,
                  "cpus_per_task": args.cpus_per_task, "gpus_per_node": args.gpus_per_node,
                  "mem_gb": args.mem_gb, **_key_values(args.submitit_param, "--submitit-param")}
    parameters = {k: v for k, v in parameters.items() if v is not None}
    cluster = None if args.submitit_cluster == "auto" else args.submitit_cluster
    folder = Path(args.submitit_folder) if args.submitit_folder else Path(args.out) / "submitit" / "%j"
    try:
        return make_executor("submitit", folder=folder, cluster=cluster, max_in_flight=args.max_in_flight,
                             parameters=parameters)
    except ImportError as exc:
        raise SystemExit(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> CompareResult | None:
    """Run the comparison a command line describes; returns its result (:func:`cli` adds the exit status),
    or None after ``--dry-run`` listed the runs."""
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    if args.dry_run:
        return dry_run(settings)
    executor = executor_from_args(args)
    return run_compare(settings, executor=executor, progress=not args.no_progress,
                       log=partial(print, flush=True))


def dry_run(settings: CompareSettings) -> None:
    """Print the runs :func:`run_compare` would start: one line each (name, cell, seed, epochs, directory)."""
    jobs = build_jobs(settings)
    width = max(len(job.name) for job in jobs)
    for job in jobs:
        c = job.config
        print(f"{job.name:<{width}}  geometry={c.geometry} row={c.row} optimizer={c.optimizer} seed={c.seed} "
              f"epochs={c.epochs} dataset={c.dataset} backbone={c.backbone}  -> {c.out_dir}")
    print(f"{len(jobs)} runs under {settings.out} (dry run: nothing trained)")


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``lpc-geom compare``, ``benchmarks/compare_manifolds.py``); returns the exit
    status.

    0 when every run finished (or ``--dry-run`` listed them), 1 when any failed (they are listed at the
    end), 130 on Ctrl-C (the workers are stopped; the same command resumes).
    """
    try:
        result = main(argv)
        if result is None:  # --dry-run
            return 0
    except KeyboardInterrupt:
        print("\ninterrupted; launch the same command again to go on (finished runs are reused, half-trained "
              "ones resume from their checkpoints)", file=sys.stderr, flush=True)
        return 130
    return exit_status(result.records)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli(sys.argv[1:]))
