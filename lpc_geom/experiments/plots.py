r"""Figures of latent geometry: 2-D views of latents, per-unit histograms, collapse over training, and
separation against robustness.

Every ``plot_*`` function draws on a matplotlib ``Axes`` it is given (so figures compose); the
``figure_*`` functions make a whole figure. The non-interactive Agg backend is used. Conventions every
figure keeps (and the tests check): legends sit outside the data, axis labels are words (not record
field names), log-axis tick labels are plain numbers that keep apart (:func:`readable_log_axis`), an
axis whose data span more than a decade is logarithmic (:func:`log_scale_suits`), titles are wrapped to
the figure, and each group of a scatter has its own colour and its own marker.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = [
    "LOG_TICK_MULTIPLES",
    "MARKERS",
    "PALETTE",
    "TWO_VALUED",
    "class_colours",
    "distinct_styles",
    "figure_separation_robustness",
    "legend_outside",
    "log_scale_suits",
    "plot_history",
    "plot_latents_2d",
    "plot_unit_histograms",
    "quantity_label",
    "readable_log_axis",
    "save_figure",
    "suptitle",
    "unit_bimodality",
    "wrapped_title",
]

#: Colours of groups and classes: matplotlib's ``tab10``, then black and five darker or lighter tones
#: (16 colours, so the paper's 11 ablation rows never share one).
PALETTE = (*(plt.get_cmap("tab10")(i) for i in range(10)), "black", "#8b0000", "#006400", "#00008b",
           "#b8860b", "#708090")
#: Markers of groups, one per group (as many as :data:`PALETTE` has colours).
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*", "d", "H", "8", "1")

#: A unit counts as *two-valued* when its bimodality coefficient :math:`b = (g^2 + 1)/\kappa` is at
#: least this. Two equal Gaussian peaks at :math:`\pm 1` with standard deviation :math:`s` have
#: :math:`b = (1 + s^2)^2 / (1 + 6 s^2 + 3 s^4)`, which is 0.9 at :math:`s \approx 0.17`: peaks at least
#: about 12 of their standard deviations apart. A two-point law has :math:`b = 1`, a uniform one 5/9
#: (the analyzers' bimodality threshold), a Gaussian 1/3.
TWO_VALUED = 0.9

#: Words for the figures of a run's history and report (keys without their ``train_`` / ``test_`` prefix).
QUANTITY_LABELS = {
    "separation_ratio": "separation ratio",
    "sigma_w_rel": r"within-class / total spread $\sigma_W/\sigma_T$",
    "norm_cv": "coefficient of variation of latent norms",
    "acc": "accuracy",
    "acc_eval": "accuracy",
    "loss": "loss",
    "gamma": "penalty weight γ",
    "nc1": "NC1 (within-class variability)",
    "entropy": "latent entropy per dimension",
    "etf_distance": "distance to a simplex ETF",
    "deepfool_mean_relative_norm": "DeepFool distance ‖r‖/‖x‖",
}


def quantity_label(key: str) -> str:
    """A figure's name in words: ``train_separation_ratio`` -> "separation ratio, training".

    Keys :data:`QUANTITY_LABELS` does not know come back with their underscores as spaces.
    """
    split = ""
    for prefix, words in (("train_", "training"), ("test_", "test"), ("val_", "validation")):
        if key.startswith(prefix) and key[len(prefix):] in QUANTITY_LABELS:
            key, split = key[len(prefix):], words
            break
    words = QUANTITY_LABELS.get(key, key.replace("_", " "))
    return f"{words}, {split}" if split else words


def class_colours(classes: Sequence[Hashable]) -> dict[Hashable, tuple | str]:
    """One colour per class, in the order given (``tab20`` beyond the :data:`PALETTE`'s 16 colours, cycled
    beyond 20 classes)."""
    classes = list(dict.fromkeys(classes))
    if len(classes) <= len(PALETTE):
        return {c: PALETTE[i] for i, c in enumerate(classes)}
    cmap = plt.get_cmap("tab20")
    return {c: cmap(i % 20) for i, c in enumerate(classes)}


def distinct_styles(names: Sequence[str]) -> dict[str, tuple[tuple | str, str]]:
    """A (colour, marker) pair per name, no colour and no marker used twice.

    Raises
    ------
    ValueError
        More names than :data:`MARKERS` (16).
    """
    names = list(dict.fromkeys(names))
    if len(names) > len(MARKERS):
        raise ValueError(f"at most {len(MARKERS)} groups get a distinct colour and marker, got {len(names)}")
    return {name: (PALETTE[i], MARKERS[i]) for i, name in enumerate(names)}


def legend_outside(ax, handles=None, labels=None, *, title: str | None = None, **kwargs):
    """A legend to the right of ``ax``, outside its data area; returns it (None without labelled artists)."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    options = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0,
               "fontsize": "small", "frameon": False, **kwargs}
    return ax.legend(handles, labels, title=title, **options)


#: Tick multiples :func:`readable_log_axis` tries, densest first.
LOG_TICK_MULTIPLES = (tuple(float(k) for k in range(1, 10)), (1.0, 2.0, 3.0, 5.0), (1.0, 2.0, 5.0), (1.0, 3.0),
                      (1.0,))


def _log_ticks(lo: float, hi: float, subs: Sequence[float]) -> list[float]:
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = (m * 10.0**k for k in range(first, last + 1) for m in subs)
    return sorted(t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9))


def readable_log_axis(axis) -> None:
    """Label a log ``axis`` (``ax.xaxis`` / ``ax.yaxis``) with plain numbers (``20``, ``0.5``, ``1e-08``) at
    the densest of the :data:`LOG_TICK_MULTIPLES` of the powers of ten whose labels keep apart on the
    axis's length (or at every few powers of ten when even those would not), minor ticks unlabelled.
    Call it once the data (or the limits) are set: it reads the view and the axes' size.
    """
    lo, hi = sorted(abs(float(v)) for v in axis.get_view_interval())
    ax = axis.axes
    position = ax.get_position()
    # a layout engine may still shrink the axes (legends outside): plan for a third less room
    length = (position.width * ax.figure.get_figwidth() if axis.axis_name == "x"
              else position.height * ax.figure.get_figheight()) / 1.5
    points = matplotlib.font_manager.FontProperties(size=matplotlib.rcParams[f"{axis.axis_name}tick.labelsize"]
                                                    ).get_size_in_points()
    formatter = FuncFormatter(lambda value, _: f"{value:g}")
    locator = None
    if lo > 0 and math.isfinite(hi / lo) and hi > lo and len(_log_ticks(lo, hi, LOG_TICK_MULTIPLES[0])) < 2:
        locator = MaxNLocator(nbins=4)  # a view narrower than two successive digits: evenly spaced values
    elif lo > 0 and math.isfinite(hi / lo) and hi > lo:
        per_decade = length / math.log10(hi / lo)  # inches
        for subs in LOG_TICK_MULTIPLES:
            ticks = _log_ticks(lo, hi, subs)
            gaps = [per_decade * math.log10(b / a) for a, b in itertools.pairwise(ticks)]
            if axis.axis_name == "x":
                needed = [0.6 * points / 72 * (len(f"{a:g}") + len(f"{b:g}")) / 2 + 0.08
                          for a, b in itertools.pairwise(ticks)]
            else:
                needed = [1.4 * points / 72] * len(gaps)
            if len(ticks) >= 2 and all(g >= n for g, n in zip(gaps, needed, strict=True)):
                locator = LogLocator(base=10, subs=subs)
                break
        if locator is None:  # powers of ten, thinned to as many labels as fit
            width = 0.6 * points / 72 * 6 + 0.08 if axis.axis_name == "x" else 1.4 * points / 72
            locator = LogLocator(base=10, numticks=max(2, int(length / width)))
    axis.set_major_locator(locator if locator is not None else LogLocator(base=10))
    axis.set_major_formatter(formatter)
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(1, 10)))
    axis.set_minor_formatter(NullFormatter())


def _readable_linear_axis(axis) -> None:
    """Thin the ticks of a linear ``axis`` (``ax.xaxis`` / ``ax.yaxis``) to the most whose labels keep
    apart on its length (the default locator counts ticks, not the width of labels like ``-0.075``).
    Call it once the data are drawn: it reads the view and the axes' size."""
    lo, hi = sorted(float(v) for v in axis.get_view_interval())
    ax = axis.axes
    position = ax.get_position()
    length = (position.width * ax.figure.get_figwidth() if axis.axis_name == "x"
              else position.height * ax.figure.get_figheight()) / 1.5  # as readable_log_axis: room to shrink
    points = matplotlib.font_manager.FontProperties(size=matplotlib.rcParams[f"{axis.axis_name}tick.labelsize"]
                                                    ).get_size_in_points()
    for nbins in (9, 7, 5, 4, 3, 2):
        locator = MaxNLocator(nbins=nbins)
        ticks = [t for t in locator.tick_values(lo, hi) if lo <= t <= hi]
        if len(ticks) < 2:
            continue
        gap = length * (ticks[1] - ticks[0]) / (hi - lo)
        if axis.axis_name == "x":
            chars = max(len(np.format_float_positional(t, precision=6, trim="-")) for t in ticks)
            needed = 0.6 * points / 72 * chars + 0.08
        else:
            needed = 1.4 * points / 72
        if gap >= needed:
            break
    axis.set_major_locator(locator)


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
                    disk: bool = False, max_points: int = 4000, seed: int = 0, legend: bool = True) -> None:
    """Scatter of latents coloured by class (:func:`class_colours` of the sorted classes).

    ``disk=False``: the two leading principal components (axis labels give the explained variance).
    ``disk=True``: the latents' own 2-D coordinates inside the unit circle (the Poincaré disk; for
    ``d = 2`` ball or circle latents). ``legend=True`` puts a class legend to the right of the axes;
    a grid of panels passes ``legend=False`` and draws one legend for all of them.
    """
    latents = np.asarray(latents, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
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
        ax.set_xlabel("disk coordinate 1")
        ax.set_ylabel("disk coordinate 2")
    else:
        coords, explained = _pca_2d(latents)
        ax.set_xlabel(f"principal component 1 ({100 * explained[0]:.1f} % of variance)")
        ax.set_ylabel(f"principal component 2 ({100 * explained[1]:.1f} %)" if len(explained) > 1
                      else "principal component 2")
    colours = class_colours(classes)
    for c in classes:
        member = labels == c
        ax.scatter(coords[member, 0], coords[member, 1], color=colours[c], s=4, alpha=0.6, linewidths=0,
                   label=f"class {c}")
    if not disk:
        _readable_linear_axis(ax.xaxis)
        _readable_linear_axis(ax.yaxis)
    ax.set_title(title)
    if legend:
        legend_outside(ax, title="class", markerscale=3)


def unit_bimodality(latents: np.ndarray) -> np.ndarray:
    r"""Bimodality coefficient :math:`b_j = (g_j^2 + 1)/\kappa_j` of every unit over the samples (the
    analyzers' :func:`~lpc_geom.analysis.hypercube.bimodality_coefficients`; NaN for a constant unit)."""
    from lpc_geom.analysis.collapse import as_statistics
    from lpc_geom.analysis.hypercube import bimodality_coefficients

    latents = np.asarray(latents, dtype=np.float64)
    if latents.ndim == 2 and latents.shape[1] == 1:  # the analyzers take d >= 2; a constant unit is NaN
        return unit_bimodality(np.column_stack([latents, np.zeros(len(latents))]))[:1]
    # the unit moments are over all samples: any labelling with two classes gives the same b
    halves = np.arange(len(latents)) % 2
    return bimodality_coefficients(as_statistics(latents, halves, None)).numpy()


def plot_unit_histograms(ax, latents: np.ndarray, *, units: int = 8, bins: int = 60, title: str = "") -> np.ndarray:
    r"""Histograms of the first ``units`` latent coordinates, one row per unit, each over its largest magnitude.

    Each row is annotated with the unit's bimodality coefficient :math:`b` (:func:`unit_bimodality`) and
    whether it is two-valued (:math:`b \ge` :data:`TWO_VALUED`): binary encoding (class points on
    hypercube vertices) shows as two-valued rows with spikes at :math:`\pm 1`; combs of several class
    levels, or a one-sided spike, show as what they are. The title gets ``(k of n units two-valued)``.

    Returns
    -------
    numpy.ndarray
        :math:`b` of each drawn unit.
    """
    latents = np.asarray(latents, dtype=np.float64)
    shown = min(units, latents.shape[1])
    b = unit_bimodality(latents[:, :shown])
    edges = np.linspace(-1.05, 1.05, bins + 1)
    verdicts = []
    for j in range(shown):
        column = latents[:, j]
        scale = np.abs(column).max()
        counts = np.histogram(column / scale if scale > 0 else column, bins=edges)[0].astype(float)
        height = 0.85 * counts / max(counts.max(), 1.0)
        colour = "0.35"  # one colour: the rows are units, not the classes the latent panels colour
        ax.fill_between(edges[:-1], j, j + height, step="post", color=colour, alpha=0.35, lw=0)
        ax.step(edges[:-1], j + height, where="post", color=colour, lw=0.8)
        verdicts.append("constant" if not np.isfinite(b[j]) else
                        f"b={b[j]:.2f} " + ("two-valued" if b[j] >= TWO_VALUED else "not two-valued"))
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-0.1, shown)
    ticks = np.arange(shown) + 0.4
    ax.set_yticks(ticks, [f"unit {j}" for j in range(shown)], fontsize="small")
    # the verdicts as the right-hand tick labels: laid out with the axes, never over a neighbour
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    right.set_yticks(ticks, verdicts, fontsize="x-small")
    for j, label in enumerate(right.get_yticklabels()):
        label.set_color("black" if np.isfinite(b[j]) and b[j] >= TWO_VALUED else "firebrick")
    right.tick_params(axis="y", length=0)
    ax.set_xlabel("unit value / max |value|")
    two = int(np.sum(b >= TWO_VALUED))
    ax.set_title(f"{title} ({two} of {shown} units two-valued)" if title else f"{two} of {shown} units two-valued")
    return b


def plot_history(ax, histories: Mapping[str, Sequence[Mapping[str, float]]], key: str, *,
                 log: bool = True, title: str | None = None, legend: bool = True) -> None:
    """One line per run of ``history[key]`` against the epoch (runs missing the key are skipped).

    The y label is the figure in words (:func:`quantity_label`); ``legend=True`` puts the runs' legend to
    the right of the axes.
    """
    for name, history in histories.items():
        points = [(row["epoch"], row[key]) for row in history if key in row and row[key] is not None]
        values = [v for _, v in points if np.isfinite(v) and (v > 0 or not log)]
        if not values:
            continue
        epochs, series = zip(*points, strict=True)
        ax.plot(epochs, series, label=name)
    if log:
        ax.set_yscale("log")
        if ax.lines:
            readable_log_axis(ax.yaxis)
    ax.set_xlabel("epoch")
    ax.set_ylabel(quantity_label(key))
    ax.set_title(title if title is not None else quantity_label(key))
    if legend:
        legend_outside(ax)


def log_scale_suits(values: Sequence[float], *, decades: float = 1.0) -> bool:
    r"""Whether an axis of ``values`` reads better on a log scale: its positive finite values span more
    than ``decades`` powers of ten, :math:`\log_{10}(\max v / \min v) > \text{decades}`.

    On a linear axis such data put everything but the largest few values in a sliver near zero (one
    strongly robust head squashing all other runs). Non-positive values rule a log axis out (they could not
    be drawn); non-finite ones are ignored.
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2 or np.any(v <= 0):
        return False
    return bool(math.log10(v.max() / v.min()) > decades)


def figure_separation_robustness(groups: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                                 title: str = "",
                                 xlabel: str = "separation ratio of the training latents",
                                 ylabel: str = "DeepFool distance ‖r‖/‖x‖ on test inputs",
                                 log_y: bool | str = "auto",
                                 styles: Mapping[str, tuple[Any, str]] | None = None):
    """Separation against robustness, one point per run, one (colour, marker) per group
    (:func:`distinct_styles` unless given), a log separation axis with readable ticks, the legend outside.

    Parameters
    ----------
    groups : mapping
        ``{group name (an ablation row, a cell): (separation ratios, robustness figures)}``; points with
        a non-positive or non-finite separation ratio, or a non-finite robustness figure, are left out
        (and a non-positive robustness figure on a log robustness axis).
    title : str
        Wrapped to the axes' width (:func:`wrapped_title`).
    xlabel, ylabel : str
    log_y : bool or "auto", default "auto"
        Logarithmic robustness axis; ``"auto"``: when the drawn robustness figures span more than a
        decade (:func:`log_scale_suits`).
    styles : mapping, optional
        ``{group name: (colour, marker)}`` for every group, e.g. colour by one factor of a grid and marker
        by the other; default: :func:`distinct_styles` of the group names.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        ``log_y`` neither a bool nor ``"auto"``, more groups than :func:`distinct_styles` can tell apart,
        or ``styles`` missing a group.
    """
    if not (isinstance(log_y, bool) or log_y == "auto"):
        raise ValueError(f"log_y must be True, False or 'auto', got {log_y!r}")
    points = {}
    for name, (xs, ys) in groups.items():
        x, y = np.asarray(xs, dtype=float).ravel(), np.asarray(ys, dtype=float).ravel()
        if x.shape != y.shape:
            raise ValueError(f"group {name!r}: {x.size} separation ratios but {y.size} robustness figures")
        keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
        points[name] = (x[keep], y[keep])
    if log_y == "auto":
        drawn = [y for _, y in points.values()]
        log_y = log_scale_suits(np.concatenate(drawn) if drawn else [])
    fig, ax = plt.subplots(figsize=(7.2, 4.6), layout="constrained")
    if styles is None:
        styles = distinct_styles(list(groups))
    elif missing := [name for name in groups if name not in styles]:
        raise ValueError(f"styles has no (colour, marker) for the groups {missing}")
    for name, (x, y) in points.items():
        keep = y > 0 if log_y else np.ones(len(y), dtype=bool)
        colour, marker = styles[name]
        ax.scatter(x[keep], y[keep], color=colour, marker=marker, s=30, edgecolors="k", linewidths=0.3,
                   label=name)
    ax.set_xscale("log")
    readable_log_axis(ax.xaxis)
    if log_y:
        ax.set_yscale("log")
        readable_log_axis(ax.yaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="major")
    legend_outside(ax)
    if title:
        wrapped_title(ax, title, fontsize="medium")
    return fig


def wrapped_title(ax, text: str, **kwargs):
    """Set ``text`` as the title of ``ax``, wrapped at word boundaries into as few lines as keep it within
    the axes' drawn width (measured once the figure is laid out, legends outside included); returns the
    title's ``Text``. ``kwargs`` go to ``ax.set_title``."""
    title = ax.set_title(text, **kwargs)
    renderer = ax.figure.canvas.get_renderer()
    ax.figure.canvas.draw()
    width = ax.get_window_extent(renderer).width
    per_line = len(text)
    while per_line > 10 and title.get_window_extent(renderer).width > width:
        per_line = int(per_line * min(0.95, width / title.get_window_extent(renderer).width))
        title.set_text(textwrap.fill(text, per_line))
        ax.figure.canvas.draw()
    return title


def suptitle(fig, text: str, *, fontsize: float = 12.0):
    """A figure title wrapped to the figure's width (about 0.6 em per character), so that a grid of few
    panels does not cut it off; returns the title's ``Text``."""
    per_line = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    return fig.suptitle(textwrap.fill(text, per_line), fontsize=fontsize)


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as a PNG at ``path`` (folders made) and close it.

    A figure without a layout engine is laid out with ``tight_layout`` first; the saved image is cropped
    to everything drawn (``bbox_inches="tight"``), legends outside the axes included.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
