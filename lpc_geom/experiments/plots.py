"""Figures of latent geometry: 2-D views of latents, per-unit histograms, collapse over training.

Every function draws on a matplotlib ``Axes`` it is given (so figures compose) and uses the
non-interactive Agg backend when it has to create a figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_history", "plot_latents_2d", "plot_unit_histograms", "save_figure"]


def _pca_2d(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection of centred latents on their two leading principal axes, and the explained fractions."""
    centred = latents - latents.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    if coords.shape[1] == 1:
        coords = np.column_stack([coords[:, 0], np.zeros(len(coords))])
    explained = s[:2] ** 2 / max(float((s**2).sum()), np.finfo(float).tiny)
    return coords, explained


def plot_latents_2d(ax, latents: np.ndarray, labels: np.ndarray, *, title: str = "",
                    disk: bool = False, max_points: int = 4000, seed: int = 0) -> None:
    """Scatter of latents coloured by class.

    ``disk=False``: the two leading principal components (axis labels give the explained variance).
    ``disk=True``: the latents' own 2-D coordinates inside the unit circle (the Poincaré disk; for
    ``d = 2`` ball or circle latents).
    """
    latents = np.asarray(latents, dtype=np.float64)
    labels = np.asarray(labels)
    if len(latents) > max_points:
        keep = np.random.default_rng(seed).choice(len(latents), max_points, replace=False)
        latents, labels = latents[keep], labels[keep]
    if disk:
        if latents.shape[1] != 2:
            raise ValueError(f"disk view needs 2-D latents, got d = {latents.shape[1]}")
        coords = latents
        ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.5", lw=0.8))
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
        ax.set_aspect("equal")
    else:
        coords, explained = _pca_2d(latents)
        ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f} %)")
        ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f} %)" if len(explained) > 1 else "PC2")
    ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap="tab10", s=4, alpha=0.6, linewidths=0)
    ax.set_title(title)


def plot_unit_histograms(ax, latents: np.ndarray, *, units: int = 8, bins: int = 60, title: str = "") -> None:
    """Overlaid histograms of the first ``units`` latent coordinates, each scaled to its max |value|.

    Binary encoding (class points on hypercube vertices) shows as two spikes at +-1.
    """
    latents = np.asarray(latents, dtype=np.float64)
    for j in range(min(units, latents.shape[1])):
        column = latents[:, j]
        scale = np.abs(column).max()
        if scale > 0:
            ax.hist(column / scale, bins=bins, range=(-1.05, 1.05), histtype="step", lw=0.9)
    ax.set_xlabel("unit value / max |value|")
    ax.set_ylabel("count")
    ax.set_title(title)


def plot_history(ax, histories: Mapping[str, Sequence[Mapping[str, float]]], key: str, *,
                 log: bool = True, title: str | None = None) -> None:
    """One line per run of ``history[key]`` against the epoch (runs missing the key are skipped)."""
    for name, history in histories.items():
        points = [(row["epoch"], row[key]) for row in history if key in row and row[key] is not None]
        values = [v for _, v in points if np.isfinite(v) and (v > 0 or not log)]
        if not values:
            continue
        epochs, series = zip(*points, strict=True)
        ax.plot(epochs, series, label=name)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(title if title is not None else key)
    ax.legend(fontsize="small")


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
