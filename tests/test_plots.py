"""The figures (lpc_geom.experiments.plots, the comparison's and the demo's), checked on the Figure objects.

Each test draws from small synthetic inputs and asserts a property a reader relies on: one colour and
one marker per group, legends outside the data, tick labels that do not collide, every text inside the
figure, class legends, axis labels in words, unit histograms that say which units are two-valued, and
the GW matrix's seed-vs-seed level.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba

from lpc_geom.ablation import ROWS
from lpc_geom.experiments import demo, plots
from lpc_geom.experiments.compare import figures
from lpc_geom.experiments.compare.summary import _LoadedRun

#: A record field name (snake case), as opposed to words; math such as ``$\\sigma_W$`` does not match.
FIELD_NAME = re.compile(r"\b[a-z]+_[a-z_]+\b")
GEOMETRIES = ("euclidean-LPC", "euclidean-NoPen", "sphere", "poincare", "stiefel")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _latents(rng, *, two_valued: bool, n: int = 400, k: int = 10, d: int = 12):
    """Class points on hypercube vertices (each unit two-valued) or on a comb of four levels per unit."""
    y = rng.integers(0, k, n)
    if two_valued:
        means = np.sign(rng.standard_normal((k, d)))
    else:  # every unit takes each of the four levels on some classes
        levels = np.array([-1.0, -0.4, 0.3, 1.0])
        means = levels[(np.arange(k)[:, None] + np.arange(d)[None, :]) % 4]
    return means[y] + 0.02 * rng.standard_normal((n, d)), y


def _loaded(rng, geometries=GEOMETRIES):
    runs, records = [], []
    for geometry, optimizer, seed in itertools.product(geometries, ("default", "kfac"), (0, 1)):
        z, y = _latents(rng, two_valued=geometry != "euclidean-NoPen")
        history = [{"epoch": e, "train_separation_ratio": 1.0 + e, "train_sigma_w_rel": 1.0 / (1 + e),
                    "test_acc": 0.5 + 0.02 * e, "gamma": 0.01 * 1.2**e} for e in range(12)]
        record = {"name": f"{geometry}__{optimizer}__seed{seed}", "geometry": geometry, "optimizer": optimizer,
                  "seed": seed, "status": "ok", "train_separation_ratio": float(10 ** rng.uniform(0.5, 1.9)),
                  "robust_deepfool_mean_relative_norm": float(rng.uniform(0.1, 2.0))}
        records.append(record)
        runs.append(_LoadedRun(record, z, y, history, None))
    return runs, records


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _texts_outside_figure(fig) -> list[str]:
    """Visible, non-empty texts whose drawn extent leaves the figure (1 px of slack)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bounds = fig.bbox
    hidden = set()  # labels of ticks outside the view: matplotlib keeps them but does not draw them
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if not lo - 1e-12 * abs(lo) <= tick.get_loc() <= hi + 1e-12 * abs(hi):
                    hidden.update((id(tick.label1), id(tick.label2)))
    outside = []
    for text in fig.findobj(matplotlib.text.Text):
        if not text.get_visible() or not text.get_text().strip() or id(text) in hidden:
            continue
        box = text.get_window_extent(renderer)
        if box.width == 0:
            continue
        if box.x0 < bounds.x0 - 1 or box.y0 < bounds.y0 - 1 or box.x1 > bounds.x1 + 1 or box.y1 > bounds.y1 + 1:
            outside.append(text.get_text())
    return outside


def _visible_tick_labels(axis):
    lo, hi = sorted(axis.get_view_interval())
    ticks = [*axis.get_major_ticks(), *axis.get_minor_ticks()]
    return [t.label1 for t in ticks
            if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]


def _assert_tick_labels_apart(fig, axis):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = _visible_tick_labels(axis)
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert len(boxes) >= 2
    for (a, ta), (b, tb) in itertools.combinations(zip(boxes, labels, strict=True), 2):
        assert not _boxes_overlap(a, b), f"tick labels {ta.get_text()!r} and {tb.get_text()!r} overlap"


def _marker_key(collection: PathCollection) -> tuple:
    return tuple(np.round(collection.get_paths()[0].vertices, 3).ravel())


def _assert_legend_outside(fig, ax, legend):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert legend is not None
    box = legend.get_window_extent(renderer)
    assert not _boxes_overlap(box, ax.get_window_extent(renderer)), "the legend sits on the data area"
    assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1, "the legend leaves the figure"


# --------------------------------------------------------------------------------------------- styles
def test_every_ablation_row_gets_its_own_colour_and_marker_and_the_legend_stays_off_the_data():
    rng = np.random.default_rng(0)
    groups = {row: (10 ** rng.uniform(0.3, 2.0, 3), 10 ** rng.uniform(-1.0, 0.5, 3)) for row in ROWS}
    fig = plots.figure_separation_robustness(groups, title="ablation")
    ax = fig.axes[0]
    collections = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(collections) == len(ROWS) == 11
    colours = {tuple(np.round(c.get_facecolor()[0], 4)) for c in collections}
    markers = {_marker_key(c) for c in collections}
    assert len(colours) == len(markers) == len({(*a, *b) for a, b in zip(colours, markers, strict=False)}) == 11
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(ROWS)
    _assert_legend_outside(fig, ax, ax.get_legend())
    assert not _texts_outside_figure(fig)
    assert not FIELD_NAME.search(ax.get_xlabel() + ax.get_ylabel())


def test_distinct_styles_are_pairwise_distinct_and_bounded():
    styles = plots.distinct_styles([f"g{i}" for i in range(len(plots.MARKERS))])
    assert len({to_rgba(c) for c, _ in styles.values()}) == len(styles)
    assert len({m for _, m in styles.values()}) == len(styles)
    with pytest.raises(ValueError, match="at most 16 groups"):
        plots.distinct_styles([f"g{i}" for i in range(17)])


def test_log_tick_labels_of_a_separation_axis_do_not_collide():
    # the span of the main job's separation ratios (4 to 70): the default labels "3x10^1 4x10^1" collided
    groups = {"a": ([4.2, 4.5, 10.4, 21.9], [0.14, 0.15, 0.48, 0.55]), "b": ([28.8, 33.6, 70.0], [0.5, 1.5, 2.0])}
    fig = plots.figure_separation_robustness(groups, log_y=False)
    ax = fig.axes[0]
    _assert_tick_labels_apart(fig, ax.xaxis)
    texts = [t.get_text() for t in _visible_tick_labels(ax.xaxis)]
    assert {"5", "10", "20", "50"} <= set(texts)


#: The main job's separation and DeepFool figures (ResNet-18 on digits): the sphere head with K-FAC reaches
#: 5.2 while NoPen sits at 0.3, so on a linear axis all but the sphere runs crowd near zero.
SPREAD_OVER_DECADES = {"euclidean-NoPen": ([9.7, 10.3, 9.4], [0.33, 0.31, 0.30]),
                       "poincare": ([12.3, 31.4], [0.49, 0.87]), "euclidean-LPC": ([38.7, 71.5], [1.9, 2.9]),
                       "sphere": ([48.4, 149.0, 160.0], [3.1, 5.2, 5.6])}
PLAIN_NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?(e[+-][0-9]+)?$")


def test_robustness_axis_is_logarithmic_when_its_data_span_more_than_a_decade():
    fig = plots.figure_separation_robustness(SPREAD_OVER_DECADES)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
    for axis in (ax.xaxis, ax.yaxis):
        _assert_tick_labels_apart(fig, axis)
        texts = [t.get_text() for t in _visible_tick_labels(axis)]
        assert texts and all(PLAIN_NUMBER.match(t) for t in texts), texts  # no "3x10^1" mathtext
    assert {"0.5", "1", "2", "5"} <= {t.get_text() for t in _visible_tick_labels(ax.yaxis)}
    # every point is drawn (none lost to the log axis)
    assert sum(len(c.get_offsets()) for c in ax.collections) == 10


def test_robustness_axis_stays_linear_within_a_decade_and_on_request():
    within = {name: (x, [0.08 + 0.01 * v for v in y]) for name, (x, y) in SPREAD_OVER_DECADES.items()}
    assert plots.figure_separation_robustness(within).axes[0].get_yscale() == "linear"
    forced = plots.figure_separation_robustness(SPREAD_OVER_DECADES, log_y=False).axes[0]
    assert forced.get_yscale() == "linear"
    assert plots.figure_separation_robustness(within, log_y=True).axes[0].get_yscale() == "log"
    with pytest.raises(ValueError, match="log_y must be True, False or 'auto'"):
        plots.figure_separation_robustness(within, log_y="yes")
    with pytest.raises(ValueError, match="group 'a': 2 separation ratios but 1 robustness figures"):
        plots.figure_separation_robustness({"a": ([1.0, 2.0], [0.1])})


@given(values=st.lists(st.floats(1e-6, 1e6), min_size=2, max_size=20), scale=st.floats(1e-3, 1e3))
@settings(max_examples=30, deadline=None)
def test_log_scale_suits_is_the_span_in_decades_and_scale_free(values, scale):
    span = math.log10(max(values) / min(values))
    assert plots.log_scale_suits(values) == (span > 1.0)
    if abs(span - 1.0) > 1e-6:  # away from the boundary, rescaling the data keeps the verdict
        assert plots.log_scale_suits([scale * v for v in values]) == plots.log_scale_suits(values)
    assert not plots.log_scale_suits([*values, 0.0])  # a zero cannot be drawn on a log axis
    assert plots.log_scale_suits([*values, math.nan, math.inf]) == plots.log_scale_suits(values)


def test_a_long_title_is_wrapped_inside_the_figure():
    title = "Pearson r = 0.95 (between the logarithms: 0.94), 33 runs of eleven ablation rows, three seeds each"
    fig = plots.figure_separation_robustness(SPREAD_OVER_DECADES, title=title)
    ax = fig.axes[0]
    assert "\n" in ax.get_title()
    assert not _texts_outside_figure(fig)
    renderer = fig.canvas.get_renderer()
    assert ax.title.get_window_extent(renderer).width <= ax.get_window_extent(renderer).width
    short = plots.figure_separation_robustness(SPREAD_OVER_DECADES, title="Pearson r = 0.95, 10 runs")
    assert short.axes[0].get_title() == "Pearson r = 0.95, 10 runs"  # what fits stays on one line


def _bench_ablation(monkeypatch):
    """benchmarks/bench_ablation.py as a module (it imports its sibling ``_results``)."""
    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench_dir))
    spec = importlib.util.spec_from_file_location("bench_ablation", bench_dir / "bench_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_benchmark_draws_its_figure_through_the_shared_one(monkeypatch):
    bench = _bench_ablation(monkeypatch)
    rng = np.random.default_rng(9)
    records = [{"row": row, "seed": seed, "status": "ok", "train_separation_ratio": float(10 ** rng.uniform(0, 2.5)),
                bench.ROBUSTNESS: float(10 ** rng.uniform(-2.0, 0.0))} for row in ROWS for seed in range(3)]
    records.append({"row": "LPC", "seed": 3, "status": "failed"})
    fig, stats = bench.separation_robustness_figure(records)
    assert stats["runs"] == 33
    x = np.log([r["train_separation_ratio"] for r in records[:33]])
    y = np.log([r[bench.ROBUSTNESS] for r in records[:33]])
    assert stats["pearson_r_log"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    ax = fig.axes[0]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len({(tuple(np.round(c.get_facecolor()[0], 4)), _marker_key(c)) for c in points}) == 11
    assert ax.get_yscale() == "log"  # robustness over a decade
    assert ax.get_xlabel() == "separation ratio of the training latents"
    _assert_legend_outside(fig, ax, ax.get_legend())
    _assert_tick_labels_apart(fig, ax.yaxis)
    assert not _texts_outside_figure(fig)
    assert bench.separation_robustness_figure(records[:2]) == (None, {})


@given(low=st.floats(1e-9, 50.0), decades=st.floats(0.1, 9.0))
@settings(max_examples=10, deadline=None)
def test_readable_log_axis_never_collides(low, decades):
    fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
    ax.set_xscale("log")
    ax.set_xlim(low, low * 10**decades)
    plots.readable_log_axis(ax.xaxis)
    fig.canvas.draw()
    labels = _visible_tick_labels(ax.xaxis)
    renderer = fig.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert labels, "no labelled tick"
    assert all(not _boxes_overlap(a, b) for a, b in itertools.combinations(boxes, 2)), [t.get_text() for t in labels]
    plt.close(fig)


# --------------------------------------------------------------------------------------------- latents
def test_latent_scatter_has_a_class_legend_outside_and_words_on_its_axes():
    rng = np.random.default_rng(1)
    z, y = _latents(rng, two_valued=True, k=4)
    fig, ax = plt.subplots(layout="constrained")
    plots.plot_latents_2d(ax, z, y, title="latents")
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [f"class {c}" for c in range(4)]
    assert legend.get_title().get_text() == "class"
    _assert_legend_outside(fig, ax, legend)
    assert ax.get_xlabel().startswith("principal component 1 (") and "%" in ax.get_xlabel()
    # the same class keeps its colour in every panel
    colours = {c.get_label(): tuple(c.get_facecolor()[0]) for c in ax.collections}
    assert len(set(colours.values())) == 4


def test_comparison_latents_grid_has_one_class_legend_and_keeps_its_text_inside():
    runs, _ = _loaded(np.random.default_rng(2))
    fig = figures.figure_latents(runs)
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 10
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend_box = fig.legends[0].get_window_extent(renderer)
    assert all(not _boxes_overlap(legend_box, ax.get_window_extent(renderer)) for ax in fig.axes)
    assert not _texts_outside_figure(fig)
    assert not any(FIELD_NAME.search(ax.get_xlabel() + ax.get_ylabel()) for ax in fig.axes)


# --------------------------------------------------------------------------------------------- units
def test_unit_histograms_say_which_units_are_two_valued():
    rng = np.random.default_rng(3)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    z, _ = _latents(rng, two_valued=True)
    b = plots.plot_unit_histograms(left, z, title="cube")
    assert b.shape == (8,) and np.all(b >= plots.TWO_VALUED)
    assert left.get_title() == "cube (8 of 8 units two-valued)"
    comb, _ = _latents(rng, two_valued=False)
    b = plots.plot_unit_histograms(right, comb, title="comb")
    assert np.all(b < plots.TWO_VALUED)
    assert right.get_title() == "comb (0 of 8 units two-valued)"
    verdicts = [t.get_text() for t in fig.axes[-1].get_yticklabels()]  # the twin axis of the comb panel
    assert len(verdicts) == 8 and all(v.endswith("not two-valued") for v in verdicts)
    assert [t.get_text() for t in right.get_yticklabels()] == [f"unit {j}" for j in range(8)]
    assert not _texts_outside_figure(fig)


@given(s=st.floats(0.02, 0.6))
@settings(max_examples=10, deadline=None)
def test_unit_bimodality_matches_two_gaussian_peaks_in_closed_form(s):
    # two equal Gaussian peaks at +-1 with sd s: b = (1 + s^2)^2 / (1 + 6 s^2 + 3 s^4)
    rng = np.random.default_rng(4)
    n = 50_000
    z = (rng.integers(0, 2, n) * 2.0 - 1.0) + s * rng.standard_normal(n)
    expected = (1 + s**2) ** 2 / (1 + 6 * s**2 + 3 * s**4)
    assert plots.unit_bimodality(z[:, None])[0] == pytest.approx(expected, abs=0.02)


def test_two_valued_threshold_is_where_the_docstring_says():
    s = 0.17
    assert (1 + s**2) ** 2 / (1 + 6 * s**2 + 3 * s**4) == pytest.approx(plots.TWO_VALUED, abs=0.002)


def test_comparison_unit_histograms_count_two_valued_units_per_cell():
    runs, _ = _loaded(np.random.default_rng(5), GEOMETRIES[:2])
    fig = figures.figure_histograms(runs)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert sum("(0 of 8 units two-valued)" in t for t in titles) == 2  # the two NoPen cells
    assert sum("(8 of 8 units two-valued)" in t for t in titles) == 2
    assert "binary encoding" not in fig.get_suptitle()
    assert not _texts_outside_figure(fig)


# --------------------------------------------------------------------------------------------- history
def test_history_panels_use_words_and_keep_legends_outside():
    runs, _ = _loaded(np.random.default_rng(6), GEOMETRIES[:2])
    fig = figures.figure_history(runs)
    data_axes = [ax for ax in fig.axes if ax.lines]
    assert not any(FIELD_NAME.search(ax.get_ylabel()) for ax in data_axes)
    assert {ax.get_ylabel() for ax in data_axes} >= {"separation ratio, training", "accuracy, test"}
    legends = [ax.get_legend() for ax in data_axes if ax.get_legend() is not None]
    assert len(legends) == 2  # one per optimiser row
    for ax in data_axes:
        if ax.get_legend() is not None:
            _assert_legend_outside(fig, ax, ax.get_legend())
    assert not _texts_outside_figure(fig)


def test_quantity_labels():
    assert plots.quantity_label("train_separation_ratio") == "separation ratio, training"
    assert plots.quantity_label("test_acc") == "accuracy, test"
    assert plots.quantity_label("epoch_seconds") == "epoch seconds"  # unknown keys: words from the key
    assert plots.quantity_label("train_unknown_thing") == "train unknown thing"


# --------------------------------------------------------------------------------------------- scatter
def test_comparison_scatter_marks_geometry_and_optimiser_and_reads_its_ticks():
    _, records = _loaded(np.random.default_rng(7))
    fig = figures.figure_scatter(records, {"pearson": 0.5, "pearson_log": 0.4, "n": 20})
    ax = fig.axes[0]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    styles = {(tuple(np.round(c.get_facecolor()[0], 4)), _marker_key(c)) for c in points}
    assert len(styles) == len(GEOMETRIES) * 2  # one (colour, marker) per (geometry, optimiser) cell
    _assert_legend_outside(fig, ax, ax.get_legend())
    _assert_tick_labels_apart(fig, ax.xaxis)
    assert not _texts_outside_figure(fig)
    assert not FIELD_NAME.search(ax.get_xlabel() + ax.get_ylabel())


# --------------------------------------------------------------------------------------------- GW
def _gw_entry(diagonal: float):
    matrix = np.full((3, 3), 0.3)
    matrix[0, 1] = matrix[1, 0] = 0.05  # between two collapsed heads, below the seed-vs-seed level
    np.fill_diagonal(matrix, diagonal)
    return {"geometries": ["euclidean-LPC", "sphere", "euclidean-NoPen"], "matrix": matrix.tolist()}


def test_gw_matrix_marks_the_seed_vs_seed_level():
    fig = figures.figure_gw({"default": _gw_entry(0.1), "kfac": _gw_entry(math.nan)})
    assert figures.seed_noise_levels(_gw_entry(0.1)).tolist() == pytest.approx([0.1, 0.1, 0.1])
    heat, bar = fig.axes[0], fig.axes[2]  # matplotlib adds each colour bar's axes after the heat maps
    level_lines = [line for line in bar.lines if np.allclose(line.get_ydata(), 0.1)]
    assert len(level_lines) == 1
    assert "seed vs seed: 0.1;" in heat.get_xlabel()
    cells = {t.get_text() for t in heat.texts}
    assert "(0.05)" in cells and "0.3" in cells and "0.1" in cells  # below the level: in brackets
    assert "seed-vs-seed" in bar.get_ylabel()
    # one seed per geometry: no level, and the figure says so
    assert "no seed-vs-seed level" in fig.axes[1].get_xlabel()
    assert not _texts_outside_figure(fig)


def test_gw_brackets_use_the_level_of_the_two_geometries_compared():
    # a collapsed head repeats itself (tiny diagonal), a noisy one does not: their distance is within the
    # noisy head's seed-vs-seed level, and two collapsed heads far apart are told apart
    matrix = [[1e-4, 4e-3, 2e-2], [4e-3, 5e-3, 3e-2], [2e-2, 3e-2, 2e-4]]
    fig = figures.figure_gw({"kfac": {"geometries": ["euclidean-LPC", "euclidean-NoPen", "sphere"],
                                      "matrix": matrix}})
    heat, bar = fig.axes
    cells = {t.get_text() for t in heat.texts}
    assert "(0.004)" in cells and "0.02" in cells and "0.03" in cells
    assert sorted(round(float(line.get_ydata()[0]), 6) for line in bar.lines) == [1e-4, 5e-3]
    assert "seed vs seed: 0.0001 to 0.005" in heat.get_xlabel()


# --------------------------------------------------------------------------------------------- demo
def test_demo_figure_keeps_every_title_inside_and_promises_nothing():
    rng = np.random.default_rng(8)
    histories = {name: [{"epoch": e, "train_separation_ratio": 1.0 + e * (name == "LPC"),
                         "train_sigma_w_rel": 1.0 / (1 + e)} for e in range(20)] for name in ("NoPen", "LPC")}
    latents = {"NoPen": _latents(rng, two_valued=False), "LPC": _latents(rng, two_valued=True)}
    fig = demo.demo_figure(histories, latents)
    assert not _texts_outside_figure(fig)
    titles = [ax.get_title() for ax in fig.axes]
    assert not any("binary encoding" in t for t in titles)
    assert "LPC: per-unit values (8 of 8 units two-valued)" in titles
    assert sum(ax.get_legend() is not None for ax in fig.axes) == 4  # two latent panels, two history panels
    # the unit rows share one colour: they are units, not the classes of the latent panels
    fills = {tuple(np.round(c.get_facecolor()[0], 4)) for c in fig.axes[1].collections}
    assert len(fills) == 1


@pytest.mark.parametrize("scale", [0.04, 1.0, 60.0])
def test_latent_panels_keep_their_tick_labels_apart(scale):
    # LPC's latents span about -0.08..0.1: the default ticks every 0.025 gave "-0.075-0.050-0.025"
    rng = np.random.default_rng(10)
    histories = {name: [{"epoch": e, "train_separation_ratio": 2.0, "train_sigma_w_rel": 0.5} for e in range(3)]
                 for name in ("NoPen", "LPC")}
    latents = {name: (scale * z, y) for name, (z, y) in
               (("NoPen", _latents(rng, two_valued=False)), ("LPC", _latents(rng, two_valued=True)))}
    fig = demo.demo_figure(histories, latents)
    for ax in (fig.axes[0], fig.axes[3]):  # the two latent panels
        assert ax.get_xlabel().startswith("principal component 1")
        _assert_tick_labels_apart(fig, ax.xaxis)
        _assert_tick_labels_apart(fig, ax.yaxis)
    for ax in fig.axes:
        if ax.get_legend() is not None:
            _assert_legend_outside(fig, ax, ax.get_legend())
