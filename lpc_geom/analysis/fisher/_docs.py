"""Parameter documentation shared by the Fisher functions, substituted into their docstrings.

A docstring names a fragment as ``${name}`` on a line of its own, at the indentation of a parameter
entry; :func:`share_docs` replaces it by the fragment, whose continuation lines carry the indentation of
a parameter's description. ``string.Template`` is used because the docstrings' math is full of braces.
"""

from __future__ import annotations

from collections.abc import Callable
from string import Template
from typing import TypeVar

F = TypeVar("F", bound=Callable)

_FRAGMENTS = {
    "latents": "latents : array_like, shape (N, d)",
    "linear_head": """latents : array_like, shape (N, d)
    W : array_like, shape (K, d)
    b : array_like, shape (K,), optional
        Zero when omitted.""",
    "logits_fn": """logits_fn : callable
        (n, d) float64 tensor -> (n, K) logits, built from torch operations (``torch.func`` transforms it),
        e.g. a manifold head converted with ``.double()``.""",
    "manifold": r"""manifold : geoopt.Manifold, optional
        Latent geometry; latents are checked to lie on it (``ValueError`` for points outside the Poincaré
        ball, off the sphere). Quantities are computed in the latents' own coordinates: curvatures are
        intrinsic, the log-volume is relative to Lebesgue measure in those coordinates. On
        ``geoopt.Sphere`` the head is evaluated at :math:`z/\|z\|`, so the metric is that of the sphere's
        tangent spaces (the radial direction is null, rank at most :math:`d - 1`).""",
    "min_prob": r"""min_prob : float
        Mask threshold on :math:`\min_k p_k`, in [0, 1) (:mod:`lpc_geom.analysis.fisher`); masked points
        get NaN.""",
}


def share_docs(fn: F) -> F:
    """Substitute the shared fragments into ``fn.__doc__`` (an unknown ``${name}`` raises ``KeyError``)."""
    fn.__doc__ = Template(fn.__doc__).substitute(_FRAGMENTS)
    return fn
