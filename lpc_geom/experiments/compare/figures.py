"""The comparison's figures: latents in 2-D, per-unit histograms, collapse over training, separation
against robustness, and the GW matrices."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lpc_geom.experiments.compare.summary import _LoadedRun, _number


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


