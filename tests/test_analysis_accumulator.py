"""Streaming accumulator against the in-memory analysis (float32 input, collapsed latents included)."""

import math

import geoopt
import numpy as np
import pytest
import torch

from lpc_geom import CollapseAccumulator, analyze


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Small arrays: on a loaded shared machine a 2-thread pool only adds barrier waits.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

MOMENT_KEYS = ["sigma_w", "sigma_w_rel", "norm_cv", "nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle",
               "etf_distance", "hypercube_bimodality_fraction", "hypercube_sign_agreement",
               "hypercube_vertex_residual", "hypercube_min_hamming", "hypercube_distinct_codes"]


def stream(z, y, batch, manifold=None, **report_kw):
    acc = CollapseAccumulator(manifold=manifold)
    for s in range(0, len(y), batch):
        acc.update(z[s : s + batch], y[s : s + batch])
    return acc.report(**report_kw)


def assert_matches(streamed, full, keys, rel=1e-5):
    for k in keys:
        a, b = streamed[k], full[k]
        assert abs(a - b) <= rel * max(abs(b), 1e-300), (k, a, b)


@pytest.mark.parametrize("offset,noise", [(0.0, 1.0), (1000.0, 1e-4)])
def test_float32_stream_matches_in_memory(rng, offset, noise):
    N, d, K = 3000, 16, 6
    y = rng.integers(0, K, N)
    means = offset + rng.normal(size=(K, d)) * 1e-2 * (1 if offset else 100)
    z = (means[y] + noise * rng.normal(size=(N, d))).astype(np.float32)
    W = rng.normal(size=(K, d))
    full = analyze(z, y, classifier=(W, None))
    streamed = stream(z, y, 97, classifier=(W, None))
    assert_matches(streamed, full, [*MOMENT_KEYS, "nc3"])
    assert set(streamed.to_dict()) == {"N", "K", "d", *MOMENT_KEYS, "nc3"}
    if offset:
        # the naive one-pass float32 formula is the trap this avoids
        zz = torch.from_numpy(z)
        tr_raw = (zz * zz).sum() - sum(
            (zz[torch.from_numpy(y == c)].sum(0) ** 2).sum() / (y == c).sum() for c in range(K)
        )
        naive = float(tr_raw) / N / d
        assert abs(naive - full["sigma_w"]) > 0.5 * full["sigma_w"]


def test_classes_appear_late_and_batches_of_one(rng):
    names = np.array(["zeta", "alpha", "mid"])
    y = np.repeat([0, 1, 2], 40)
    z = rng.normal(size=(120, 5)) + 4 * np.eye(5)[y]
    full = analyze(z, names[y])
    acc = CollapseAccumulator()
    acc.update(z[:1], names[y][:1])  # a single-sample, single-class batch
    for s in range(1, 120, 23):
        acc.update(torch.from_numpy(z[s : s + 23]), list(names[y][s : s + 23]))
    rep = acc.report()
    assert rep.classes == ("alpha", "mid", "zeta") == full.classes
    assert_matches(rep, full, MOMENT_KEYS, rel=1e-9)


@pytest.mark.parametrize("manifold", [geoopt.PoincareBall(c=1.5), geoopt.Sphere()])
def test_manifold_stream_matches(rng, manifold):
    y = rng.integers(0, 4, 800)
    z = torch.from_numpy(rng.normal(size=(4, 6))[y] + 0.3 * rng.normal(size=(800, 6)))
    z = manifold.projx(z * 0.2) if isinstance(manifold, geoopt.PoincareBall) else z / z.norm(dim=1, keepdim=True)
    full = analyze(z.float(), y, manifold=manifold)
    keys = [k for k in MOMENT_KEYS if not (k == "norm_cv" and isinstance(manifold, geoopt.Sphere))]
    assert_matches(stream(z.float(), y, 128, manifold=manifold), full, keys, rel=1e-9)


def test_accumulator_errors(rng):
    acc = CollapseAccumulator()
    with pytest.raises(ValueError, match="no batches"):
        acc.report()
    acc.update(rng.normal(size=(5, 3)), [0] * 5)
    with pytest.raises(ValueError, match="only one class"):
        acc.report()
    with pytest.raises(ValueError, match="d = 4"):
        acc.update(rng.normal(size=(5, 4)), [1] * 5)
    with pytest.raises(TypeError, match="changed type"):
        acc.update(rng.normal(size=(5, 3)), ["a"] * 5)
    acc.update(rng.normal(size=(1, 3)), [1])
    with pytest.raises(ValueError, match="min_class_size"):
        acc.report()
    rep = acc.report(min_class_size=1)
    assert rep.N == 6 and all(math.isfinite(v) or k in rep.undefined for k, v in rep.to_dict().items())
