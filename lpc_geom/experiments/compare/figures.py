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
    fig, axes = plt.subplots(len(optimizers), len(geometries), figsize=(3.8 * len(geometries) + 1.2,
                                                                        3.6 * len(optimizers)), squeeze=False,
                             layout="constrained")
    return fig, axes, geometries, optimizers


def _is_disk(run: _LoadedRun) -> bool:
    import geoopt

    return (run.latents.shape[1] == 2 and isinstance(run.manifold, geoopt.Stereographic)
            and float(run.manifold.k) < 0)


def figure_latents(loaded: Sequence[_LoadedRun]):
    """2-D views of the training latents, one panel per cell (its first seed): PCA, or the native Poincaré
    disk (scaled to the unit disk, :math:`\\sqrt c\\, z`) for 2-D ball latents. One class legend, to the
    right of the panels."""
    from lpc_geom.experiments.plots import plot_latents_2d, suptitle

    first = _first_runs(loaded)
    fig, axes, geometries, optimizers = _grid(first)
    for (geometry, optimizer), run in first.items():
        ax = axes[optimizers.index(optimizer), geometries.index(geometry)]
        sep = run.record.get("train_separation_ratio", math.nan)
        title = f"{geometry} / {optimizer}\nseed {run.record['seed']}, separation ratio {sep:.3g}"
        if _is_disk(run):
            scale = math.sqrt(-float(run.manifold.k))
            plot_latents_2d(ax, scale * run.latents, run.labels, disk=True, title=title + " (disk)", legend=False)
        else:
            plot_latents_2d(ax, run.latents, run.labels, title=title, legend=False)
        ax.xaxis.label.set_fontsize("small")
        ax.yaxis.label.set_fontsize("small")
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_axis_off()
    handles, labels = next(ax for ax in axes.flat if ax.has_data()).get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="class", markerscale=3, frameon=False,
               fontsize="small")
    suptitle(fig, "training latents (principal components; native disk for 2-D Poincaré), coloured by class")
    return fig


def figure_histograms(loaded: Sequence[_LoadedRun]):
    """Per-unit histograms of the training latents, one row per unit, each unit marked two-valued or not
    (:func:`~lpc_geom.experiments.plots.plot_unit_histograms`; binary encoding shows as two-valued units
    with spikes at ±1)."""
    from lpc_geom.experiments.plots import plot_unit_histograms, suptitle

    first = _first_runs(loaded)
    fig, axes, geometries, optimizers = _grid(first)
    for (geometry, optimizer), run in first.items():
        ax = axes[optimizers.index(optimizer), geometries.index(geometry)]
        plot_unit_histograms(ax, run.latents, title=f"{geometry} / {optimizer}\n")
        ax.title.set_fontsize("medium")
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_axis_off()
    suptitle(fig, "first 8 latent units of the training latents, each scaled to its max |value|; "
                  "b: bimodality coefficient (1 for two values)")
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
    accuracy; mean over seeds), one row per optimiser, one legend of the geometries per row."""
    import matplotlib.pyplot as plt

    from lpc_geom.experiments.plots import legend_outside, plot_history, quantity_label

    means = mean_histories(loaded)
    optimizers = list(dict.fromkeys(o for _, o in means))
    fig, axes = plt.subplots(len(optimizers), len(HISTORY_KEYS), figsize=(5 * len(HISTORY_KEYS) + 1.5,
                                                                           3.6 * len(optimizers)), squeeze=False,
                             layout="constrained")
    for i, optimizer in enumerate(optimizers):
        histories = {g: rows for (g, o), rows in means.items() if o == optimizer}
        for j, (key, log) in enumerate(HISTORY_KEYS):
            plot_history(axes[i, j], histories, key, log=log, title=f"{quantity_label(key)}\n{optimizer}",
                         legend=j == len(HISTORY_KEYS) - 1)
            axes[i, j].title.set_fontsize("medium")
            axes[i, j].yaxis.label.set_fontsize("small")
        legend_outside(axes[i, -1], title="geometry")
    return fig


def figure_scatter(records: Sequence[Mapping[str, Any]], correlation: Mapping[str, Any]):
    """Training separation ratio against DeepFool robustness, one point per run, with the correlation.

    :func:`lpc_geom.experiments.plots.figure_separation_robustness` with one group per (geometry,
    optimiser) cell: colour by geometry, marker by optimiser.
    """
    from lpc_geom.experiments.plots import MARKERS, class_colours, figure_separation_robustness

    geometries = list(dict.fromkeys(r["geometry"] for r in records))
    optimizers = list(dict.fromkeys(r["optimizer"] for r in records))
    colours = class_colours(geometries)
    groups: dict[str, tuple[list[float], list[float]]] = {}
    styles = {}
    for r in records:
        x, y = r.get("train_separation_ratio"), r.get("robust_deepfool_mean_relative_norm")
        if r.get("status") != "ok" or not (_number(x) and _number(y)):
            continue
        name = f"{r['geometry']} / {r['optimizer']}"
        styles[name] = (colours[r["geometry"]], MARKERS[optimizers.index(r["optimizer"])])
        xs, ys = groups.setdefault(name, ([], []))
        xs.append(x)
        ys.append(y)
    return figure_separation_robustness(
        groups, styles=styles,
        title=(f"Pearson r = {correlation['pearson']:.2f} (log10 ratio: {correlation['pearson_log']:.2f}), "
               f"n = {correlation['n']} runs"),
        xlabel="separation ratio of the training latents (between- / within-class spread)")


def seed_noise_levels(entry: Mapping[str, Any]) -> np.ndarray:
    """The seed-vs-seed levels of a GW matrix of :func:`~lpc_geom.experiments.compare.gw_matrices`: its
    diagonal, each geometry's seeds against each other (NaN for a geometry with one seed).

    An entry between geometries ``a`` and ``b`` at or below ``max(level[a], level[b])`` is within the
    variation of retraining one of them: it does not tell the two geometries apart.
    """
    return np.diag(np.array(entry["matrix"], dtype=float)).copy()


def figure_gw(gw: Mapping[str, Mapping[str, Any]]):
    """Heat maps of the GW matrices of :func:`gw_matrices`, one per optimiser, values annotated, with the
    seed-vs-seed levels (:func:`seed_noise_levels`) marked: red lines on each colour bar at the smallest
    and largest of them, and entries between geometries within the level of their two geometries printed
    in brackets."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(gw), figsize=(6.4 * len(gw), 5.4), squeeze=False, layout="constrained")
    for ax, (optimizer, entry) in zip(axes[0], gw.items(), strict=True):
        matrix = np.array(entry["matrix"], dtype=float)
        names = entry["geometries"]
        levels = seed_noise_levels(entry)
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize="small")
        ax.set_yticks(range(len(names)), names, fontsize="small")
        finite = matrix[np.isfinite(matrix)]
        middle = (finite.max() + finite.min()) / 2 if finite.size else 0.0
        for (i, j), value in np.ndenumerate(matrix):
            text = "n/a" if not math.isfinite(value) else f"{value:.2g}"
            with np.errstate(invalid="ignore"):
                level = np.nanmax([levels[i], levels[j]]) if np.isfinite([levels[i], levels[j]]).any() else math.nan
            if i != j and math.isfinite(value) and value <= level:
                text = f"({text})"
            ax.text(j, i, text, ha="center", va="center", fontsize="x-small",
                    color="w" if math.isfinite(value) and value < middle else "k")
        bar = fig.colorbar(image, ax=ax, fraction=0.046)
        known = levels[np.isfinite(levels)]
        if known.size:
            for value in sorted({float(known.min()), float(known.max())}):
                bar.ax.axhline(value, color="red", lw=2)
            bar.set_label("GW discrepancy (red: seed-vs-seed levels)", fontsize="small")
            span = (f"{known.min():.2g}" if known.min() == known.max()
                    else f"{known.min():.2g} to {known.max():.2g}")
            caption = (f"seed vs seed: {span}; in brackets: within the seed-vs-seed\n"
                       "level of its two geometries (not told apart)")
        else:
            caption = "one seed per geometry: no seed-vs-seed level"
        ax.set_title(f"GW between class-centre configurations, {optimizer}\n(diagonal: seed vs seed)",
                     fontsize="medium")
        ax.set_xlabel(caption, fontsize="small")
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


