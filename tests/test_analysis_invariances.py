"""Invariances: rotation, translation, scaling, label permutation and label encoding."""

import math

import numpy as np
import pytest
import torch

from lpc_geom import analyze

SCALE_FREE = ["sigma_w_rel", "nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "etf_distance",
              "separation_ratio", "separation_ratio_median", "separation_ratio_excluded", "entropy_scale_free",
              "entropy_floored", "nc3"]
ORIGIN_FIGURES = ["norm_cv", "hypercube_bimodality_fraction", "hypercube_sign_agreement",
                  "hypercube_vertex_residual", "hypercube_min_hamming", "hypercube_distinct_codes"]


@pytest.fixture
def data(rng):
    N, d, K = 400, 6, 5
    y = np.arange(N) % K
    z = rng.normal(size=(K, d))[y] * 2 + 0.6 * rng.normal(size=(N, d))
    W = rng.normal(size=(K, d))
    return z, y, W


def close(a, b, keys, rel=1e-7):
    for k in keys:
        assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-9), k


def test_rotation(data, rng):
    z, y, W = data
    Q, _ = np.linalg.qr(rng.normal(size=(z.shape[1], z.shape[1])))
    a = analyze(z, y, classifier=(W, None), k=10).to_dict()
    b = analyze(z @ Q, y, classifier=(W @ Q, None), k=10).to_dict()
    close(a, b, [*SCALE_FREE, "sigma_w", "entropy", "norm_cv", "nc4"])
    # the hypercube figures are basis-dependent by design
    assert a["hypercube_sign_agreement"] != b["hypercube_sign_agreement"]


def test_translation(data, rng):
    z, y, W = data
    t = rng.normal(size=z.shape[1]) * 5
    a = analyze(z, y, classifier=(W, None), k=10).to_dict()
    b = analyze(z + t, y, classifier=(W, -W @ t), k=10).to_dict()
    close(a, b, [k for k in SCALE_FREE if k != "entropy_floored"] + ["sigma_w", "entropy", "nc4"], rel=1e-6)
    assert a["norm_cv"] != pytest.approx(b["norm_cv"])


@pytest.mark.parametrize("scale", [1e-6, 1e4])
def test_scaling(data, scale):
    z, y, W = data
    a = analyze(z, y, classifier=(W, None), k=10).to_dict()
    b = analyze(z * scale, y, classifier=(W, None), k=10).to_dict()
    close(a, b, SCALE_FREE + ORIGIN_FIGURES + ["nc4"], rel=1e-6)
    assert b["sigma_w"] == pytest.approx(a["sigma_w"] * scale**2, rel=1e-9)
    assert b["entropy"] == pytest.approx(a["entropy"] + math.log(scale), rel=1e-9, abs=1e-9)


def test_label_permutation_and_encoding(data, rng):
    z, y, W = data
    perm = rng.permutation(5)
    a = analyze(z, y, classifier=(W, None), k=10).to_dict()
    # relabel class c as perm[c]; the classifier row of class perm[c] is W[c]
    Wp = np.empty_like(W)
    Wp[perm] = W
    b = analyze(z, perm[y], classifier=(Wp, None), k=10).to_dict()
    # d = 6 > K - 1 = 4: the Fisher curvature is constant (3) and its spread is rounding noise (~1e-11)
    noise = "fisher_scalar_curvature_std"
    assert a.pop(noise) == pytest.approx(b.pop(noise), abs=1e-9)
    assert a == pytest.approx(b, rel=1e-12)
    names = np.array(["cat", "dog", "eel", "fox", "gnu"])
    c = analyze(torch.from_numpy(z), list(names[y]), classifier=torch.nn.Linear(6, 5), classes=list(names), k=10)
    assert c.classes == tuple(names)
    d = analyze(z, y.astype(float), k=10).to_dict()
    e = analyze(z, y + 100, k=10).to_dict()
    for k in d:
        assert d[k] == pytest.approx(e[k], rel=1e-12)


def test_dtypes_and_torch_input(data):
    z, y, _ = data
    ref = analyze(z, y, k=10).to_dict()
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        rep = analyze(torch.from_numpy(z).to(dt), torch.from_numpy(y), k=10).to_dict()
        exact = analyze(torch.from_numpy(z).to(dt).double().numpy(), y, k=10).to_dict()
        for k in ref:
            if k != "entropy_floored":  # the floor follows the input's resolution
                assert rep[k] == pytest.approx(exact[k], rel=1e-12, abs=1e-12), (dt, k)
        assert rep["nc1"] == pytest.approx(ref["nc1"], rel=0.05)
