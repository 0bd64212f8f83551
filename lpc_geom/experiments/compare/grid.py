"""The comparison's grid: its geometry and optimiser cells, the default config, the settings and the jobs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpc_geom.config import TrainConfig
from lpc_geom.experiments.sweep import Job

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


def default_config() -> TrainConfig:
    """The base training config of the default comparison (every cell overrides geometry/row/optimiser).

    MNIST-1D with 4,000 samples (3,200 train), the LPC paper's backbone family, a ResNet-18 (batch norm,
    SiLU), built 1-D for the sequences (kernel 3) at an eighth of the standard width (stages of 8-64
    planes), 60 epochs of batch 128 at learning rate 4e-3; gamma grows x1.2 per epoch from 1e-2 up to 10
    (reached at epoch 38), and from epoch 30 every learning rate, the classifier's included, halves every
    6 epochs. K-FAC cells precondition with damping 1e-2 and 1e-3 once the learning rate decays, their
    curvature statistics taken every 10 steps, and a checkpoint written every 10 epochs (what a run
    stopped by a kill or a cluster time limit resumes from). On it Euclidean LPC against NoPen shows the
    paper's pattern: a higher separation ratio and DeepFool distance at the same test accuracy. With the
    MLP (``backbone="mlp"``, 8,000 samples) the same recipe keeps the accuracy and the collapse but not
    the robustness.
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

