"""CollapseReport: exact keys, serialisation, the extension mechanism, lazy top-level export."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import lpc_geom
from lpc_geom.analysis import CollapseReport, UndefinedMetricError, analyze, register_metric_group
from lpc_geom.analysis._registry import _GROUPS
from lpc_geom.analysis._validation import SmallSubsetWarning

BASE_KEYS = [
    "N", "K", "d",
    "sigma_w", "sigma_w_rel", "norm_cv", "nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "etf_distance",
    "separation_ratio", "separation_ratio_median", "separation_ratio_excluded",
    "entropy", "entropy_floored", "entropy_scale_free",
    "hypercube_bimodality_fraction", "hypercube_sign_agreement", "hypercube_vertex_residual",
    "hypercube_min_hamming", "hypercube_distinct_codes",
    "gw_etf", "gw_hypercube",
]  # fmt: skip
FISHER_KEYS = [
    "fisher_logvol_mean", "fisher_trace_mean", "fisher_scalar_curvature", "fisher_scalar_curvature_std",
    "fisher_masked_fraction", "fisher_rank", "fisher_samples", "fisher_rao_classmean_min", "fisher_rao_classmean_mean",
]  # fmt: skip
INT_KEYS = {"N", "K", "d", "separation_ratio_excluded", "hypercube_min_hamming", "hypercube_distinct_codes",
            "fisher_rank", "fisher_samples"}  # fmt: skip


@pytest.fixture
def data(rng):
    y = np.arange(200) % 4
    return rng.normal(size=(200, 5)) + 2 * np.eye(5)[y], y


def test_exact_keys_and_types(data, rng):
    z, y = data
    rep = analyze(z, y)
    assert list(rep.to_dict()) == BASE_KEYS
    full = analyze(z, y, classifier=(rng.normal(size=(4, 5)), None), gmm=True)
    keys = list(full.to_dict())
    assert keys[:11] == BASE_KEYS[:11] and keys[11:13] == ["nc3", "nc4"]
    gmm = ["hypercube_gmm_score", "hypercube_gmm_std", "hypercube_gmm_peak_ratio"]
    assert keys[13:] == BASE_KEYS[11:-2] + gmm + FISHER_KEYS + BASE_KEYS[-2:]
    for k, v in full.to_dict().items():
        assert type(v) is (int if k in INT_KEYS else float), k
    assert (full.N, full.K, full.d) == (200, 4, 5)
    assert analyze(z, y, logits=rng.normal(size=(200, 4))).to_dict().keys() >= {"nc4"}


def test_serialisation_and_access(data):
    z, y = data
    rep = analyze(z[:40], y[:40], k=30)
    d = json.loads(rep.to_json())
    assert d.keys() == rep.to_dict().keys()
    assert rep.nc1 == rep["nc1"] == d["nc1"]
    assert "nc1" in rep and "N" in rep and "nope" not in rep
    with pytest.raises(AttributeError):
        _ = rep.nope
    md = rep.to_markdown()
    assert "| `etf_distance` |" in md and "N = 40" in md
    text = repr(rep)
    assert text.startswith("CollapseReport(N=40, K=4, d=5") and "separation_ratio=" in text
    # NaN (undefined) becomes null in strict JSON, with the reason kept on the report
    undefined = analyze(z[:12], y[:12])
    assert json.loads(undefined.to_json())["entropy"] is None
    assert "entropy" in undefined.undefined and "undefined entropy" in repr(undefined)
    assert "`entropy` undefined" in undefined.to_markdown()


def test_extension_group(data):
    z, y = data

    def extra(ctx, out):
        if ctx.classifier is None:
            return
        out.put("fisher_demo_trace", float(ctx.classifier[0].pow(2).sum()))
        out.attempt("fisher_demo_undefined", lambda: (_ for _ in ()).throw(UndefinedMetricError("because")))

    register_metric_group("fisher_demo", extra)
    try:
        plain = analyze(z, y)
        assert "fisher_demo" not in plain.groups
        rep = analyze(z, y, classifier=(np.ones((4, 5)), None))
        assert rep["fisher_demo_trace"] == 20.0 and math.isnan(rep["fisher_demo_undefined"])
        assert rep.undefined["fisher_demo_undefined"] == "because"
        only = analyze(z, y, classifier=(np.ones((4, 5)), None), groups=["fisher_demo"])
        assert list(only.to_dict()) == ["N", "K", "d", "fisher_demo_trace", "fisher_demo_undefined"]
        with pytest.raises(ValueError, match="already registered"):
            register_metric_group("fisher_demo", extra)
    finally:
        _GROUPS.pop("fisher_demo", None)
    with pytest.raises(ValueError, match="unknown metric group"):
        analyze(z, y, groups=["nope"])


def test_report_add_refuses_overwrite():
    rep = CollapseReport(N=3, K=2, d=2)
    rep.add("g", {"a": 1.0})
    with pytest.raises(ValueError, match="already has"):
        rep.add("h", {"a": 2.0})


def test_top_level_exports_are_lazy():
    assert lpc_geom.analyze is analyze
    assert lpc_geom.__version__
    code = "import sys, lpc_geom; print('lpc_geom.analysis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]


def test_reasons_are_kept_in_the_record():
    # all but two samples sit on their class centre (a note), and N <= k makes the entropy undefined
    y = np.repeat(np.arange(3), 30)
    z = np.eye(3)[y] * 5.0
    z[0, 1], z[1, 1] = 0.5, -0.5
    with pytest.warns(SmallSubsetWarning):
        rep = analyze(z, y, groups=["separation", "entropy"], k=100)
    assert set(rep.notes) == {"separation_ratio", "separation_ratio_median"} and "entropy" in rep.undefined
    assert "notes" not in rep.to_dict() and "undefined" not in rep.to_dict()  # the figures stay flat
    record = rep.to_dict(reasons=True)
    assert record["notes"] == rep.notes and record["undefined"] == rep.undefined
    assert list(record)[:-2] == list(rep.to_dict())
    strict = json.loads(rep.to_json(reasons=True))
    assert strict["entropy"] is None and strict["undefined"]["entropy"] == rep.undefined["entropy"]
    assert strict["notes"]["separation_ratio"] == rep.notes["separation_ratio"]
    assert json.loads(rep.to_json()).keys() == rep.to_dict().keys()


def test_analyze_options_hold_every_default_once(data):
    import inspect
    from dataclasses import FrozenInstanceError, fields

    from lpc_geom import AnalyzeOptions

    z, y = data
    signature = inspect.signature(analyze).parameters
    for f in fields(AnalyzeOptions):
        assert signature[f.name].default == getattr(AnalyzeOptions(), f.name), f.name
    with pytest.raises(FrozenInstanceError):
        AnalyzeOptions().k = 3
    with pytest.raises(TypeError, match="gmm must be True or False"):
        AnalyzeOptions(gmm="no")
    with pytest.raises(ValueError, match="min_class_size"):
        AnalyzeOptions(min_class_size=0)
    options = AnalyzeOptions(k=7, seed=3, gw_restarts=2)
    by_keywords = analyze(z, y, k=7, seed=3, gw_restarts=2)
    assert analyze(z, y, options=options).to_dict() == by_keywords.to_dict()
    assert by_keywords.to_dict() != analyze(z, y).to_dict()
    with pytest.raises(TypeError, match="not both"):
        analyze(z, y, k=5, options=options)
    with pytest.raises(TypeError, match="AnalyzeOptions"):
        analyze(z, y, options={"k": 5})
