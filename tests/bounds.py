"""Checks shared by the Lipschitz-bound tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from lpc_geom.analysis.robustness import lipschitz_lower_bound, lipschitz_upper_bound


def assert_upper_bound_holds(net, shape, scale: float, seed: int, samples: int) -> None:
    """The certified bound of ``net`` is finite and above both empirical lower bounds on random inputs."""
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(samples, *shape, generator=g)
    upper = lipschitz_upper_bound(net, shape).value
    lower = lipschitz_lower_bound(net, x, candidates=None).value
    assert math.isfinite(upper) and lower <= upper * (1 + 1e-5) + 1e-12
    # Finite differences are a lower bound that needs no differentiability (float64: no cancellation).
    x = x.double()
    y = x + 0.1 * scale * torch.randn(x.shape, generator=g, dtype=torch.float64)
    net = net.double()
    with torch.no_grad():
        ratio = (net(x) - net(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= upper * (1 + 1e-5) + 1e-12


def seeded_generator(draw) -> tuple[int, torch.Generator]:
    """In a ``@st.composite`` strategy: draw a seed, seed torch's global generator (module initialisation)
    with it and return it with a generator seeded by it too, so that a drawn example is reproducible."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return seed, g
