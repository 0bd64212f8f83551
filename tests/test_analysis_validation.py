"""Bad input gets a clear TypeError/ValueError naming the problem; degenerate data gets documented results."""

import math
import warnings

import geoopt
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lpc_geom import analyze
from lpc_geom.analysis import CollapseAccumulator, collapse, hypercube
from lpc_geom.analysis._validation import SmallSubsetWarning


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


# -- issue 15: options, manifolds and labels are checked once, at the boundary ----------------------------
@pytest.mark.parametrize("value", [np.nan, -1, 5, 0.0, 1.0, np.inf])
def test_bimodality_threshold_out_of_range_is_refused(ok, value):
    z, y = ok
    with pytest.raises(ValueError, match=r"bimodality_threshold must be a finite number in \(0, 1\)"):
        analyze(z, y, bimodality_threshold=value)
    with pytest.raises(ValueError, match="bimodality_threshold"):
        CollapseAccumulator(bimodality_threshold=value)
    with pytest.raises(ValueError, match="threshold"):
        hypercube.bimodality_fraction(z, y, threshold=value)


@pytest.mark.parametrize("value,exc", [(0, ValueError), (-2, ValueError), (2.5, TypeError), (2.0, TypeError),
                                       (True, TypeError), ("2", TypeError)])
def test_min_class_size_must_be_an_integer_of_at_least_one(ok, value, exc):
    z, y = ok
    with pytest.raises(exc, match="min_class_size") as err:
        analyze(z, y, min_class_size=value)
    assert repr(value) in str(err.value) or str(value) in str(err.value)
    acc = CollapseAccumulator().update(z, y)
    with pytest.raises(exc, match="min_class_size"):
        acc.report(min_class_size=value)


@pytest.mark.parametrize("option", ["gmm", "fisher_curvature"])
@pytest.mark.parametrize("value", ["no", "False", 0, 1, np.float64(1.0)])
def test_bool_options_are_not_read_through_truthiness(ok, option, value):
    z, y = ok
    with pytest.raises(TypeError, match=f"{option} must be True") as err:
        analyze(z, y, classifier=np.eye(3, 4), **{option: value})
    assert repr(value) in str(err.value)


@pytest.mark.parametrize(
    "option,value,exc",
    [
        ("k", 0, ValueError), ("k", True, TypeError), ("k", 20.0, TypeError),
        ("max_entropy_samples", 1, ValueError), ("gmm_max_samples", 1, ValueError),
        ("max_fisher_samples", 0, ValueError), ("max_fisher_samples", 2.5, TypeError),
        ("gw_restarts", -1, ValueError), ("gw_restarts", "10", TypeError),
        ("seed", -1, ValueError), ("seed", 1.5, TypeError),
        ("fisher_min_prob", 1.0, ValueError), ("fisher_min_prob", np.nan, ValueError),
        ("fisher_min_prob", False, TypeError), ("entropy_floor", 0.0, ValueError),
        ("entropy_floor", -1e-3, ValueError), ("entropy_floor", "1e-3", TypeError),
    ],
)
def test_every_analyze_option_is_checked(ok, option, value, exc):
    z, y = ok
    with pytest.raises(exc, match=option):
        analyze(z, y, classifier=np.eye(3, 4), **{option: value})


def test_groups_as_a_string_is_one_group_and_unknown_names_list_the_accepted(ok):
    z, y = ok
    rep = analyze(z, y, groups="collapse")
    assert list(rep.groups) == ["collapse"]
    with pytest.raises(ValueError, match="unknown metric group") as err:
        analyze(z, y, groups=["collapse", "colapse"])
    assert "'colapse'" in str(err.value) and "accepted" in str(err.value) and "'entropy'" in str(err.value)
    with pytest.raises(ValueError, match="empty"):
        analyze(z, y, groups=[])
    with pytest.raises(TypeError, match="groups"):
        analyze(z, y, groups=[1, 2])
    acc = CollapseAccumulator().update(z, y)
    assert list(acc.report(groups="hypercube").groups) == ["hypercube"]


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: geoopt.PoincareBall(c=-1.0), "c > 0"),
        (lambda: geoopt.PoincareBall(c=float("nan")), "c > 0"),
        (lambda: geoopt.PoincareBall(c=float("inf")), "c > 0"),
        (lambda: geoopt.PoincareBall(c=0.0), "c > 0"),
        (lambda: geoopt.SphereProjection(k=-1.0), "k > 0"),
        (lambda: geoopt.Stereographic(k=float("inf")), "finite k"),
        (lambda: geoopt.Stereographic(k=float("nan")), "finite k"),
    ],
)
@pytest.mark.parametrize("groups", [None, ["hypercube"], "transport"])
def test_manifolds_with_bad_curvature_are_refused(ok, make, match, groups):
    z, y = ok
    with pytest.raises(ValueError, match=match) as err:
        analyze(0.01 * z, y, manifold=make(), groups=groups)
    assert "curvature" in str(err.value)


def test_bad_curvature_is_refused_by_transport_and_fisher(ok):
    from lpc_geom.analysis import fisher_pointwise_autograd, gw_distance
    from lpc_geom.analysis.transport import class_centres

    z, y = ok
    x = 0.01 * z[:6]
    with pytest.raises(ValueError, match="c > 0"):
        gw_distance(x, x, manifold_a=geoopt.PoincareBall(c=-1.0))
    with pytest.raises(ValueError, match="k > 0"):
        gw_distance(x, x, manifold_b=geoopt.Lorentz(k=-1.0))
    with pytest.raises(ValueError, match="c > 0"):
        class_centres(x, y[:6], manifold=geoopt.PoincareBall(c=float("nan")))
    with pytest.raises(ValueError, match="c > 0"):
        fisher_pointwise_autograd(x, lambda t: torch.cat([t, -t], 1), manifold=geoopt.PoincareBall(c=-1.0))


def test_integer_string_labels_follow_numeric_order_and_line_up_with_the_classifier(rng):
    # 11 classes "0".."10": text order would put "10" after "1" and shift every row after it
    K, d = 11, 12
    means = 5.0 * rng.normal(size=(K, d))
    y = np.repeat(np.arange(K), 20)
    z = means[y] + 0.01 * rng.normal(size=(len(y), d))
    W, b = means, -0.5 * (means**2).sum(1)  # argmax W z + b is the nearest class mean
    as_int = analyze(z, y, classifier=(W, b), k=5)
    as_str = analyze(z, y.astype(str), classifier=(W, b), k=5)
    assert as_int["nc4"] == 0.0 and as_str["nc4"] == 0.0
    assert as_str.classes == tuple(str(c) for c in range(K))
    for key in as_int.metrics:
        assert as_str[key] == pytest.approx(as_int[key], rel=1e-12, abs=1e-12, nan_ok=True), key
    # the streamed accumulator uses the same order
    acc = CollapseAccumulator()
    for part in np.array_split(rng.permutation(len(y)), 7):
        acc.update(z[part], y[part].astype(str))
    assert tuple(acc.classes) == as_str.classes
    assert acc.report(classifier=(W, b))["nc3"] == pytest.approx(as_int["nc3"], rel=1e-9)


@pytest.mark.parametrize("make", [lambda a: a, lambda a: list(map(int, a)), lambda a: a.astype(object),
                                  lambda a: list(map(np.uint64, a))])
def test_uint64_labels_above_2_63_keep_their_values(ok, make):
    z, y = ok
    big = np.array([2**63, 2**63 + 5, 2**64 - 1], dtype=np.uint64)[y]
    rep = analyze(z, make(big))
    assert rep.classes == (2**63, 2**63 + 5, 2**64 - 1)
    assert all(c > 0 for c in rep.classes)
    ref = analyze(z, y)
    assert rep["nc1"] == pytest.approx(ref["nc1"], rel=1e-12)
    with pytest.raises(ValueError, match="2\\*\\*63"):
        analyze(z, [-1, 2**63, 0] * 20)
    with pytest.raises(ValueError, match="2\\*\\*64"):
        analyze(z, [0, 2**64, 1] * 20)


def test_classifier_rows_are_matched_explicitly(ok):
    z, y = ok
    names = np.array(["cat", "dog", "eel"])
    W = np.eye(3, 4)
    ref = analyze(z, y, classifier=(W, None), k=5)
    # non-integer labels with a classifier: ambiguous without classes=
    with pytest.raises(ValueError, match="classes="):
        analyze(z, names[y], classifier=(W, None), k=5)
    with pytest.raises(ValueError, match="classes="):
        analyze(z, y + 1, logits=np.eye(3)[y], k=5)  # labels 1..3 for outputs 0..2: 1-based or not?
    rep = analyze(z, names[y], classifier=(W, None), classes=["cat", "dog", "eel"], k=5)
    assert rep["nc4"] == ref["nc4"] and rep["nc3"] == pytest.approx(ref["nc3"], rel=1e-12)
    # outputs in another order: classes says which row is which class
    perm = [2, 0, 1]
    rep = analyze(z, names[y], classifier=(W[perm], None), classes=list(names[perm]), k=5)
    assert rep["nc4"] == ref["nc4"] and rep["nc3"] == pytest.approx(ref["nc3"], rel=1e-12)
    # integer labels and decimal strings name the same classes
    rep = analyze(z, y.astype(str), logits=np.eye(4)[y], classes=[0, 1, 2, 3], k=5)
    assert rep["nc4"] == analyze(z, y, logits=np.eye(4)[y], k=5)["nc4"]
    with pytest.raises(ValueError, match="no output for label class"):
        analyze(z, names[y], classifier=(W, None), classes=["cat", "dog", "fox"], k=5)
    with pytest.raises(ValueError, match="once"):
        analyze(z, names[y], classifier=(W, None), classes=["cat", "dog", "dog"], k=5)
    with pytest.raises(ValueError, match="names 2 outputs"):
        analyze(z, names[y], classifier=(W, None), classes=["cat", "dog"], k=5)
    with pytest.raises(ValueError, match="no common class"):
        analyze(z, names[y], classifier=(W, None), classes=[0, 1, 2], k=5)
    with pytest.raises(TypeError, match="classes must be a sequence"):
        analyze(z, names[y], classifier=(W, None), classes="cat dog eel", k=5)
    with pytest.raises(ValueError, match="with classifier= or logits="):
        analyze(z, names[y], classes=list(names), k=5)
    assert collapse.nc3(z, names[y], classifier=(W, None), classes=list(names)) == pytest.approx(ref["nc3"])
    assert collapse.nc4(z, names[y], logits=np.eye(3)[y], classes=list(names)) == ref["nc4"]


def test_shared_label_validation_in_fisher_summary_and_class_centres(ok):
    from lpc_geom.analysis import fisher_summary
    from lpc_geom.analysis.transport import class_centres

    z, y = ok
    W = np.eye(3, 4)
    a = fisher_summary(z, W, labels=y)
    b = fisher_summary(z, W, labels=np.array(["a", "b", "c"])[y])
    assert a == pytest.approx(b, rel=1e-12)
    with pytest.raises(ValueError, match="integral"):
        fisher_summary(z, W, labels=y + 0.5)
    classes, centres = class_centres(z, [str(v) for v in 10 * y])
    assert classes.tolist() == ["0", "10", "20"]  # numeric order, as analyze
    np.testing.assert_allclose(centres, np.stack([z[y == c].mean(0) for c in range(3)]))


def test_other_public_analyzers_check_their_options(ok):
    from lpc_geom.analysis import fisher_pointwise, gw_distance, sectional_curvature
    from lpc_geom.analysis.entropy import kl_entropy

    z, y = ok
    with pytest.raises(TypeError, match="k must be an integer"):
        kl_entropy(z, k=True)
    with pytest.raises(ValueError, match="max_samples"):
        kl_entropy(z, max_samples=1)
    with pytest.raises(TypeError, match="max_samples"):
        hypercube.gmm_figures(z, max_samples=2.5)
    with pytest.raises(ValueError, match="reg_covar"):
        hypercube.gmm_figures(z, reg_covar=-1.0)
    with pytest.raises(TypeError, match="restarts"):
        gw_distance(z[:5], z[:5], restarts=1.5)
    with pytest.raises(ValueError, match="seed"):
        gw_distance(z[:5], z[:5], seed=-3)
    with pytest.raises(TypeError, match="curvature must be True or False"):
        fisher_pointwise(z, np.eye(3, 4), curvature="yes")
    with pytest.raises(TypeError, match="chunk_size"):
        fisher_pointwise(z, np.eye(3, 4), chunk_size=10.0)
    with pytest.raises(ValueError, match="n_planes"):
        sectional_curvature(z, np.eye(3, 4), n_planes=0)
    acc = CollapseAccumulator().update(z, y)
    with pytest.raises(TypeError, match="gw_restarts"):
        acc.report(gw_restarts=True)


def test_figures_resting_on_few_points_get_a_note_and_a_warning(rng):
    # a confident 3-class head: all but 4 of 600 points have min_k p_k < 1e-8 and are masked
    K, N = 3, 600
    y = np.arange(N) % K
    W = 40.0 * np.array([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]])
    z = 3.0 * W[y] / 40.0 + 0.05 * rng.normal(size=(N, 2))
    z[:4] = 0.01 * rng.normal(size=(4, 2))  # near the decision boundaries
    with pytest.warns(SmallSubsetWarning, match="computed from 4 of 600 points") as record:
        rep = analyze(z, y, classifier=(W, None), k=5)
    assert rep["fisher_masked_fraction"] == pytest.approx(596 / 600)
    assert math.isfinite(rep["fisher_logvol_mean"])
    assert set(rep.notes) == {"fisher_logvol_mean", "fisher_scalar_curvature", "fisher_scalar_curvature_std"}
    assert "fisher_min_prob" in rep.notes["fisher_logvol_mean"] and "0.67%" in rep.notes["fisher_logvol_mean"]
    assert len(record) == 1
    assert "note fisher_logvol_mean" in repr(rep) and "`fisher_logvol_mean` note" in rep.to_markdown()
    from lpc_geom.analysis import fisher_summary

    with pytest.warns(SmallSubsetWarning, match="fisher_logvol_mean"):
        fisher_summary(z, W, labels=y)
    # the same points with a milder head: most points unmasked, no note
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallSubsetWarning)
        assert not analyze(z, y, classifier=(W / 40.0, None), k=5).notes


def test_separation_ratio_on_few_samples_is_noted():
    # three classes collapsed exactly onto their centres except two samples of class 0
    y = np.repeat(np.arange(3), 100)
    z = np.eye(3)[y] * 5.0
    z[0, 1], z[1, 1] = 0.5, -0.5  # class 0's mean stays exactly (5, 0, 0)
    with pytest.warns(SmallSubsetWarning, match="separation_ratio, separation_ratio_median"):
        rep = analyze(z, y, groups="separation")
    assert rep["separation_ratio_excluded"] == 298
    assert "2 of 300 samples" in rep.notes["separation_ratio"]


_OPTION_SPECS = {
    # option: (kind, accepted low, accepted high) for the values drawn below
    "k": ("count", 1), "max_entropy_samples": ("count", 2), "gmm_max_samples": ("count", 2),
    "max_fisher_samples": ("count", 1), "gw_restarts": ("count", 0), "seed": ("count", 0),
    "min_class_size": ("count", 1), "gmm": ("bool",), "fisher_curvature": ("bool",),
    "bimodality_threshold": ("open01",), "fisher_min_prob": ("prob",), "entropy_floor": ("positive",),
}


def _bad_values(spec):
    kind = spec[0]
    junk = st.one_of(st.text(max_size=5), st.just([]), st.just([1]))  # None is accepted where it means "default"
    if kind == "count":
        return st.one_of(junk, st.booleans(), st.floats(allow_nan=True), st.integers(max_value=spec[1] - 1))
    if kind == "bool":
        return st.one_of(junk, st.integers(), st.floats())
    floats = st.floats(allow_nan=True, allow_infinity=True)
    bad_range = {
        "open01": floats.filter(lambda v: not 0 < v < 1),
        "prob": floats.filter(lambda v: not 0 <= v < 1),
        "positive": floats.filter(lambda v: not (v > 0 and math.isfinite(v))),
    }[kind]
    return st.one_of(junk, st.booleans(), bad_range)


@settings(max_examples=150)
@given(data=st.data(), option=st.sampled_from(sorted(_OPTION_SPECS)))
def test_option_fuzz_every_bad_value_is_refused_by_name(data, option):
    value = data.draw(_bad_values(_OPTION_SPECS[option]), label=option)
    z = np.tile(np.eye(3, 4), (10, 1)) + 0.01 * np.arange(120).reshape(30, 4)
    y = np.arange(30) % 3
    with pytest.raises((TypeError, ValueError)) as err:
        analyze(z, y, classifier=np.eye(3, 4), groups="collapse", **{option: value})
    assert option in str(err.value)


@settings(max_examples=60)
@given(values=st.lists(st.integers(-10**6, 10**6), min_size=2, max_size=12, unique=True), seed=st.integers(0, 99))
def test_integer_string_labels_encode_like_the_integers(values, seed):
    from lpc_geom.analysis._validation import encode_labels

    r = np.random.default_rng(seed)
    ints = r.choice(np.array(values), size=40)
    ints[: len(values)] = values  # every class present
    a, b = encode_labels(ints, 40), encode_labels(ints.astype(str), 40)
    assert np.array_equal(a.codes, b.codes)
    assert [int(c) for c in b.classes] == a.classes.tolist() == sorted(values)


@settings(max_examples=60)
@given(values=st.lists(st.integers(0, 2**64 - 1), min_size=2, max_size=8, unique=True))
def test_unsigned_labels_keep_their_exact_values(values):
    from lpc_geom.analysis._validation import encode_labels

    for labels in (np.array(values, dtype=np.uint64), values):
        enc = encode_labels(labels, len(values))
        assert enc.classes.tolist() == sorted(values)
        assert [enc.classes[c] for c in enc.codes] == values
