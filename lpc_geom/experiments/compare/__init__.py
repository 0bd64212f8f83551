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

The default settings (:func:`default_config`) are a compressed LPC recipe with a 1-D ResNet-18 on
which the default grid (5 geometries x 2 optimisers x 2 seeds, 20 runs) shows the paper's pattern
(Euclidean LPC against NoPen: higher separation ratio and DeepFool distance, accuracy kept); the
measured figures and run time are in the generated results (``docs/results/compare_manifolds``).

The package is split along its seams:

- :mod:`~lpc_geom.experiments.compare.grid`: the cells, the default config, the settings and the jobs;
- :mod:`~lpc_geom.experiments.compare.summary`: per-cell tables, the GW matrices and the
  separation-robustness correlations;
- :mod:`~lpc_geom.experiments.compare.figures`: the five figures;
- :mod:`~lpc_geom.experiments.compare.driver`: :func:`run_compare`, which runs the grid and writes
  everything;
- :mod:`~lpc_geom.experiments.compare.command`: the command line (``lpc-geom compare``,
  ``benchmarks/compare_manifolds.py``) and the results fragment of the documentation.
"""

from __future__ import annotations

from lpc_geom.experiments.compare.command import (
    build_parser,
    cli,
    dry_run,
    executor_from_args,
    main,
    run_args,
    settings_from_args,
)
from lpc_geom.experiments.compare.driver import FRAGMENT_FIGURES, CompareResult, fragment_markdown, run_compare
from lpc_geom.experiments.compare.figures import (
    HISTORY_KEYS,
    draw_figures,
    figure_gw,
    figure_histograms,
    figure_history,
    figure_latents,
    figure_scatter,
    mean_histories,
)
from lpc_geom.experiments.compare.grid import (
    DEFAULT_GEOMETRIES,
    DEFAULT_OPTIMIZERS,
    DEFAULT_OUT,
    DEFAULT_SEEDS,
    GEOMETRY_CELLS,
    OPTIMIZER_CELLS,
    REFERENCE_CELL,
    CompareSettings,
    build_jobs,
    default_config,
    measure_robustness,
    optimizer_for,
    run_name,
    warning_summary,
)
from lpc_geom.experiments.compare.summary import (
    ATTACKS,
    CORRELATION_EXCLUDED,
    TABLE_COLUMNS,
    cell_rows,
    correlation_lines,
    correlations_by_attack,
    gw_matrices,
    lpc_vs_nopen,
    markdown_table,
    separation_robustness,
)
from lpc_geom.experiments.sweep import exit_status

__all__ = [
    "ATTACKS",
    "CORRELATION_EXCLUDED",
    "DEFAULT_GEOMETRIES",
    "DEFAULT_OPTIMIZERS",
    "DEFAULT_OUT",
    "DEFAULT_SEEDS",
    "FRAGMENT_FIGURES",
    "GEOMETRY_CELLS",
    "HISTORY_KEYS",
    "OPTIMIZER_CELLS",
    "REFERENCE_CELL",
    "TABLE_COLUMNS",
    "CompareResult",
    "CompareSettings",
    "build_jobs",
    "build_parser",
    "cell_rows",
    "cli",
    "correlation_lines",
    "correlations_by_attack",
    "default_config",
    "draw_figures",
    "dry_run",
    "executor_from_args",
    "exit_status",
    "figure_gw",
    "figure_histograms",
    "figure_history",
    "figure_latents",
    "figure_scatter",
    "fragment_markdown",
    "gw_matrices",
    "lpc_vs_nopen",
    "main",
    "markdown_table",
    "mean_histories",
    "measure_robustness",
    "optimizer_for",
    "run_args",
    "run_compare",
    "run_name",
    "separation_robustness",
    "settings_from_args",
    "warning_summary",
]
