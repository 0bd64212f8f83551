"""Bad input gets a clear TypeError/ValueError naming the problem; degenerate data gets documented results."""

import math

import geoopt
import numpy as np
import pytest
import torch

from lpc_geom import analyze
from lpc_geom.analysis import collapse


@pytest.fixture
def ok(rng):
    y = np.arange(60) % 3
    return rng.normal(size=(60, 4)) + 3 * np.eye(4)[y], y


@pytest.mark.parametrize("bad,match", [(np.nan, "NaN/Inf"), (np.inf, "NaN/Inf")])
def test_non_finite_latents(ok, bad, match):
    z, y = ok
    z = z.copy()
    z[7, 2] = bad
    with pytest.raises(ValueError, match=match) as err:
        analyze(z, y)
    assert "row 7" in str(err.value)


@pytest.mark.parametrize(
    "latents,labels,exc,match",
    [
        (np.zeros((5, 3)), [0, 1, 0, 1], ValueError, "label count mismatch"),
        (np.zeros((5, 3)), [1, 1, 1, 1, 1], ValueError, "only one class"),
        (np.zeros((6, 1)), [0, 1] * 3, ValueError, "d = 1"),
        (np.zeros((1, 3)), [0], ValueError, "at least 2 samples"),
        (np.zeros((2, 3, 1)), [0, 1], ValueError, "2-D"),
        (np.zeros((4, 3), complex), [0, 1, 0, 1], TypeError, "real"),
        (np.array([["a", "b"]] * 4), [0, 1, 0, 1], TypeError, "real numeric"),
        ("not an array", [0, 1], TypeError, "numpy array or a torch tensor"),
        (np.zeros((4, 3)), [0.5, 1, 0, 1], ValueError, "integral"),
        (np.zeros((4, 3)), [np.nan, 1.0, 0, 1], ValueError, "NaN"),
        (np.zeros((4, 3)), [1, "a", 0, 1], TypeError, "mix types"),
        (np.zeros((4, 3)), np.array([1, "a", 0, 1], dtype=object), TypeError, "object labels"),
        (np.zeros((4, 3)), np.array([[0, 1], [0, 1]]), ValueError, "1-D"),
        (np.zeros((4, 3)), np.array([1j, 2j, 1j, 2j]), TypeError, "integers or strings"),
    ],
)
def test_rejected_inputs(latents, labels, exc, match):
    with pytest.raises(exc, match=match):
        analyze(latents, labels)


def test_singleton_class_policy(ok):
    z, y = ok
    y = y.copy()
    y[0] = 7
    with pytest.raises(ValueError, match="separation ratio is 0/0") as err:
        analyze(z, y)
    assert "7" in str(err.value)
    rep = analyze(z, y, min_class_size=1)
    assert rep["separation_ratio_excluded"] == 1
    assert all(math.isfinite(v) for v in rep.to_dict().values())


def test_points_outside_the_ball_and_off_the_sphere(ok):
    z, y = ok
    with pytest.raises(ValueError, match="outside the Poincaré ball"):
        analyze(z, y, manifold=geoopt.PoincareBall(c=1.0))
    with pytest.raises(ValueError, match="not on the unit sphere"):
        analyze(z, y, manifold=geoopt.Sphere())


def test_classifier_and_logits_checks(ok):
    z, y = ok
    with pytest.raises(ValueError, match="looks transposed"):
        analyze(z, y, classifier=(np.zeros((4, 3)), None))
    with pytest.raises(ValueError, match="bias b must have 3"):
        analyze(z, y, classifier=(np.zeros((3, 4)), np.zeros(2)))
    with pytest.raises(TypeError, match="classifier must be"):
        analyze(z, y, classifier="linear")
    with pytest.raises(ValueError, match="logits must have shape"):
        analyze(z, y, logits=np.zeros((59, 3)))
    with pytest.raises(ValueError, match="NaN/Inf"):
        analyze(z, y, logits=np.full((60, 3), np.nan))
    names = np.array(["a", "b", "c"])[y]
    with pytest.raises(ValueError, match="cannot be matched"):
        analyze(z, names, classifier=np.ones((5, 4)))
    # integer labels index the outputs directly: a 10-way head with classes {0, 1, 2} present is fine
    rep = analyze(z, y, logits=np.eye(10)[y])
    assert rep["nc4"] == pytest.approx(collapse.nc4(z, y, logits=np.eye(10)[y]))


def test_fully_collapsed_and_duplicated_latents_are_finite_and_documented():
    y = np.repeat(np.arange(3), 30)
    codes = np.array([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, -1.0]])
    rep = analyze(codes[y].astype(np.float32), y)
    for key, value in rep.to_dict().items():
        assert math.isfinite(value) or key in rep.undefined, key
    assert set(rep.undefined) == {"separation_ratio", "separation_ratio_median"}
    # everything at one point: only the figures that need some spread are undefined, each with a reason
    same = analyze(np.ones((40, 3)), np.arange(40) % 2)
    assert {"nc1", "sigma_w_rel", "etf_distance", "entropy_scale_free"} <= set(same.undefined)
    assert same["sigma_w"] == 0.0 and math.isfinite(same["entropy"]) and same["entropy_floored"] == 1.0
    zero = analyze(np.zeros((40, 3)), np.arange(40) % 2)
    assert "origin" in zero.undefined["norm_cv"]


def test_small_n_entropy_is_undefined_not_invented(ok):
    z, y = ok
    rep = analyze(z[:12], y[:12])
    assert math.isnan(rep["entropy"]) and "k = 20" in rep.undefined["entropy"]
    assert math.isfinite(analyze(z[:12], y[:12], k=3)["entropy"])


def test_single_metric_functions_raise_when_undefined():
    with pytest.raises(collapse.UndefinedMetricError, match="coincide"):
        collapse.nc1(np.ones((6, 2)), [0, 1] * 3)
    with pytest.raises(ValueError):
        collapse.norm_cv(np.zeros((6, 2)), [0, 1] * 3)


def test_gpu_style_tensor_input_is_not_mutated(ok):
    z, y = ok
    t = torch.from_numpy(z.astype(np.float32)).requires_grad_(True)
    before = t.detach().clone()
    analyze(t, torch.from_numpy(y))
    assert torch.equal(t.detach(), before)
