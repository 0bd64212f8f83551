"""The brute-force k-NN of the entropy (geometry.kth_neighbour_distance): float32 and float64 Gram products with
rounding bounds, the ambiguous candidates re-measured from direct differences, against the sorted matrix of
direct differences on random, collapsed, duplicated and near-tied points."""

import math
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lpc_geom.analysis import geometry as G
from lpc_geom.analysis.entropy import kl_entropy

GEOMETRIES = {
    "euclidean": G.Geometry("euclidean"),
    "flat": G.Geometry("stereographic", 0.0),
    "ball": G.Geometry("stereographic", -1.0),
    "positive": G.Geometry("stereographic", 0.5),
    "sphere": G.Geometry("sphere"),
}


def products(dtype):
    """Force the dtype of the k-NN's Gram products."""
    return mock.patch.object(G, "_product_dtype", lambda d, device: dtype)


def on_manifold(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "sphere":
        return t / t.norm(dim=1, keepdim=True)
    if kind in ("ball", "positive"):
        return t / (1.0 + t.norm(dim=1, keepdim=True))  # inside the unit ball (and a chart of k > 0)
    return t


def direct_kth(geom: G.Geometry, t: torch.Tensor, k: int) -> torch.Tensor:
    full = geom.dist(t[:, None, :], t[None, :, :])
    full.fill_diagonal_(float("inf"))
    return torch.sort(full, dim=1).values[:, k - 1]


def test_product_dtype_float32_only_where_blas_rounds_in_float32():
    cpu = torch.device("cpu")
    assert G._product_dtype(512, cpu) == torch.float32
    assert G._product_dtype(10**6, cpu) == torch.float64  # (d + 16) eps32 too large to bound usefully
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # may use bfloat16 products: outside the bound
        assert G._product_dtype(512, cpu) == torch.float64
    finally:
        torch.set_float32_matmul_precision(before)
    assert G._product_dtype(512, cpu) == torch.float32


@settings(max_examples=60)
@given(
    seed=st.integers(0, 2**32 - 1),
    K=st.integers(1, 4),
    d=st.integers(17, 40),
    k=st.integers(1, 8),
    log_sep=st.floats(-2.0, 8.0),
    log_noise=st.floats(-12.0, 0.0),
    log_scale=st.floats(-100.0, 100.0),
    kind=st.sampled_from(sorted(GEOMETRIES)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_kth_distance_equals_sorted_direct_differences(seed, K, d, k, log_sep, log_noise, log_scale, kind, dtype):
    """Any mix of cluster offsets, spreads and overall scales (no under- or overflow of the float32 products:
    they are rescaled by a power of two), with exact duplicates: the k-th distance is the exact one."""
    r = np.random.default_rng(seed)
    N = 64
    y = np.arange(N) % K
    z = 10.0**log_sep * r.normal(size=(K, d))[y] + 10.0**log_noise * r.normal(size=(N, d))
    z[5:9] = z[4]  # exact duplicates
    geom = GEOMETRIES[kind]
    t = on_manifold(torch.from_numpy(z), kind)
    if geom.is_flat:
        t = t * 10.0**log_scale
    ref = direct_kth(geom, t, k)
    with products(dtype):
        got = G.kth_neighbour_distance(geom, t, k)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    if k <= 4:
        assert bool((got[4:9] == 0).all())


@settings(max_examples=40)
@given(
    seed=st.integers(0, 2**32 - 1),
    d=st.integers(17, 32),
    k=st.integers(1, 12),
    log_jitter=st.floats(-14.0, -2.0),
    copies=st.integers(1, 6),
    kind=st.sampled_from(["euclidean", "ball", "sphere"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_kth_distance_exact_on_near_ties(seed, d, k, log_jitter, copies, kind, dtype):
    """Hypercube vertices (many exactly equal distances), repeated ``copies`` times and jittered below the
    float32 resolution: the ambiguous candidates are many, and still the k-th distance is the exact one."""
    r = np.random.default_rng(seed)
    vertices = np.sign(r.normal(size=(72 // copies, d)))
    z = np.repeat(vertices, copies, axis=0)
    z = z + 10.0**log_jitter * r.normal(size=z.shape) * (r.random(len(z)) < 0.5)[:, None]
    geom = GEOMETRIES[kind]
    t = on_manifold(torch.from_numpy(z), kind)
    ref = direct_kth(geom, t, k)
    with products(dtype):
        got = G.kth_neighbour_distance(geom, t, k)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)


def count_calls(name):
    """Patch ``G.<name>`` with a wrapper that counts its calls (returns the patcher and the counter)."""
    calls = []
    orig = getattr(G, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return orig(*args, **kwargs)

    return mock.patch.object(G, name, wrapper), calls


def test_gaussian_rows_resolved_from_float32_products_and_few_differences(rng):
    """Well-spread points: every row is settled from its first k + margin candidates (no re-centring), and
    only the ambiguous candidates -- a few per row -- are measured from direct differences."""
    N, d, k = 800, 64, 20
    t = torch.from_numpy(rng.normal(size=(N, d)))
    measured = []
    dist = G.Geometry.dist

    def counting_dist(self, x, y):
        measured.append(x.shape[0])
        return dist(self, x, y)

    wide, wide_calls = count_calls("_kth_wide")
    with wide, mock.patch.object(G.Geometry, "dist", counting_dist):
        got = G.kth_neighbour_distance(G.Geometry("euclidean"), t, k)
    assert G._product_dtype(d, t.device) == torch.float32
    assert not wide_calls
    assert N <= sum(measured) <= 3 * N  # one to a few candidates per row
    torch.testing.assert_close(got, direct_kth(G.Geometry("euclidean"), t, k), rtol=1e-12, atol=0)


def test_collapsed_classes_re_centred_and_exact(rng):
    """LPC-like latents (class spread 1e-8 of the class offsets): float32 products at the global mean cannot
    separate a class's points, so each class is re-centred on itself, once, and the distances are exact."""
    from scipy.spatial import cKDTree

    N, d, K, k = 1000, 48, 20, 10
    y = np.arange(N) % K
    z = rng.normal(size=(K, d))[y] + 1e-8 * rng.normal(size=(N, d))
    wide, wide_calls = count_calls("_kth_wide")
    among, among_calls = count_calls("_kth_among")
    with wide, among:
        got = G.kth_neighbour_distance(G.Geometry("euclidean"), torch.from_numpy(z), k).numpy()
    ref = cKDTree(z).query(z, k=k + 1)[0][:, k]
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=0)
    assert len(wide_calls) == 1  # all blocks' unresolved rows grouped at once
    assert len(among_calls) == 1 + K  # the top level, then one group per class


def test_tied_boundary_rows_get_more_candidates(rng):
    """Points repeated 8 times, k = 10: a row's k-th neighbour is one of the 8 copies of its nearest other
    point, which its first k + margin = 14 candidates cut through; those rows are retried with 4k
    candidates, which hold the whole tie, and are exact."""
    z = np.repeat(rng.normal(size=(40, 24)), 8, axis=0)
    geom, k = G.Geometry("euclidean"), 10
    settle, calls = count_calls("_kth_from_candidates")
    with settle:
        got = G.kth_neighbour_distance(geom, torch.from_numpy(z), k)
    assert len(calls) == 2  # one block: the first candidates, then the retry
    torch.testing.assert_close(got, direct_kth(geom, torch.from_numpy(z), k), rtol=1e-12, atol=0)


@pytest.mark.parametrize("input_dtype", [np.float32, np.float64])
def test_entropy_same_from_float32_and_float64_products(rng, input_dtype):
    """The KL entropy of classifier-like latents (Gaussian classes) does not depend on the product dtype:
    both routes give the exact k-th distances."""
    N, d, K = 1500, 64, 10
    y = rng.integers(0, K, N)
    z = (2.0 * rng.normal(size=(K, d))[y] + rng.normal(size=(N, d))).astype(input_dtype)
    with products(torch.float64):
        ref = kl_entropy(z, k=20, max_samples=1000)
    with products(torch.float32):
        got = kl_entropy(z, k=20, max_samples=1000)
    assert got.n_used == ref.n_used == 1000
    assert math.isclose(got.entropy, ref.entropy, rel_tol=1e-12)
    assert got.floored == ref.floored


def test_rows_settled_at_different_widths_and_re_centred_together():
    """Two clusters whose spread is near the float32 resolution at the global mean: some rows are settled
    by their first candidates, some by the retry, the rest re-centred on their cluster -- in one group per
    cluster, whichever width sent them there -- with exact duplicates among them."""
    r = np.random.default_rng(5)
    N, d, k = 60, 30, 5
    z = r.normal(size=(2, d))[np.arange(N) % 2] + 10.0**-2.5 * r.normal(size=(N, d))
    z[5:8] = z[4]
    geom, t = G.Geometry("euclidean"), torch.from_numpy(z)
    for dtype in (torch.float32, torch.float64):
        with products(dtype):
            got = G.kth_neighbour_distance(geom, t, k)
        torch.testing.assert_close(got, direct_kth(geom, t, k), rtol=1e-12, atol=0)
