"""What both Fisher routes share: the per-point result, the constants, and the checks of their inputs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lpc_geom.analysis._validation import check_array, check_int, check_latents, check_real
from lpc_geom.analysis.options import AnalyzeOptions

DEFAULT_MIN_PROB = AnalyzeOptions.fisher_min_prob
"""Points whose smallest class probability is below this are masked (see :mod:`lpc_geom.analysis.fisher`)."""

RANK_RTOL = 1e-10
"""Singular values below ``RANK_RTOL`` times the largest count as zero (classifier rank, per-point rank)."""

_DTYPE = torch.float64
_DEFAULT_CHUNK = 1024
_DEFAULT_AUTOGRAD_CHUNK = 256
_PLANE_RTOL = 1e-10


@dataclass(frozen=True)
class FisherPointwise:
    """Per-point Fisher quantities (numpy arrays, float64).

    Attributes
    ----------
    probs : ndarray, shape (N, K)
        Predictive distributions :math:`p(z_i)`.
    trace : ndarray, shape (N,)
        :math:`\\mathrm{tr}\\, G(z_i)`; defined at every point.
    logvol : ndarray, shape (N,)
        :math:`\\tfrac12 \\log \\mathrm{pdet}\\, G(z_i) = \\sum_{i \\le r} \\log s_i(B)`, the log of the
        Riemannian volume element in the range of :math:`G`; NaN at masked points.
    rank : ndarray of int, shape (N,)
        Numerical rank of :math:`G(z_i)` (singular values of :math:`B` above ``RANK_RTOL`` times the
        largest). Masked points may show a lower rank than :attr:`range_rank`.
    scalar_curvature : ndarray, shape (N,) or None
        Scalar curvature (sum of sectional curvatures over ordered pairs of a :math:`G`-orthonormal
        frame of the range); NaN at masked points; exactly 0 where the rank is 1 (no 2-planes).
        None when not requested.
    masked : ndarray of bool, shape (N,)
        True where :math:`\\min_k p_k(z_i) <` ``min_prob``.
    range_rank : int
        Linear head: rank :math:`r` of the centred classifier weights (the dimension of the manifold the
        latents parametrise). Autograd path: the largest per-point rank.
    dim : int
        Latent dimension :math:`d`.
    """

    probs: np.ndarray
    trace: np.ndarray
    logvol: np.ndarray
    rank: np.ndarray
    scalar_curvature: np.ndarray | None
    masked: np.ndarray
    range_rank: int
    dim: int



class _PointwiseBuffers:
    """The per-point arrays of a :class:`FisherPointwise`, filled chunk by chunk by either route."""

    def __init__(self, n: int, n_classes: int, curvature: bool) -> None:
        self.probs = torch.empty(n, n_classes, dtype=_DTYPE)
        self.trace = torch.empty(n, dtype=_DTYPE)
        self.logvol = torch.full((n,), float("nan"), dtype=_DTYPE)
        self.rank = torch.empty(n, dtype=torch.int64)
        self.curvature = torch.full((n,), float("nan"), dtype=_DTYPE) if curvature else None

    def fill(
        self,
        rows: slice,
        p: torch.Tensor,
        trace: torch.Tensor,
        rank: torch.Tensor,
        logvol: torch.Tensor,
        ok: torch.Tensor,
    ) -> None:
        """One chunk: probabilities, traces, ranks, and log-volumes kept where ``ok`` (unmasked), NaN elsewhere."""
        self.probs[rows] = p
        self.trace[rows] = trace
        self.rank[rows] = rank
        self.logvol[rows] = torch.where(ok, logvol, float("nan"))

    def fill_curvature(self, rows: slice, ok: torch.Tensor, values) -> None:
        """One chunk's scalar curvatures at its unmasked points ``ok``; NaN at the others."""
        part = torch.full((ok.shape[0],), float("nan"), dtype=_DTYPE)
        part[ok] = values
        self.curvature[rows] = part

    def result(self, min_prob: float, range_rank: int, dim: int) -> FisherPointwise:
        masked = self.probs.min(dim=-1).values < min_prob
        return FisherPointwise(
            probs=self.probs.detach().numpy(),
            trace=self.trace.detach().numpy(),
            logvol=self.logvol.detach().numpy(),
            rank=self.rank.numpy(),
            scalar_curvature=None if self.curvature is None else self.curvature.detach().numpy(),
            masked=masked.numpy(),
            range_rank=range_rank,
            dim=dim,
        )


class _PlaneResults:
    """Sectional curvatures per point, (N,) for given planes or (N, n_planes) for random ones, NaN at masked
    points, filled chunk by chunk by either route."""

    def __init__(self, n: int, planes_given: bool, n_planes: int) -> None:
        self.planes_given = planes_given
        self.values = torch.full((n, 1 if planes_given else n_planes), float("nan"), dtype=_DTYPE)

    def fill(self, rows: slice, ok: torch.Tensor, values: torch.Tensor) -> None:
        block = self.values[rows]
        block[ok] = values
        self.values[rows] = block

    def result(self) -> np.ndarray:
        out = self.values.detach()
        return (out[:, 0] if self.planes_given else out).numpy()

def _latents(latents) -> torch.Tensor:
    """Validated float64 CPU latents (N >= 1, any d >= 1): :func:`~lpc_geom.analysis._validation.check_latents`."""
    return check_latents(latents, min_dim=1, min_samples=1)[0].cpu()


def _check_min_prob(min_prob: float) -> float:
    return check_real(min_prob, "min_prob", low=0.0, high=1.0, high_open=True)


def _chunks(n: int, size: int) -> Iterator[slice]:
    size = check_int(size, "chunk_size", minimum=1)
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _orthonormalise(a: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram-Schmidt on pairs along the last axis."""
    a = a / a.norm(dim=-1, keepdim=True)
    c = c - (c * a).sum(dim=-1, keepdim=True) * a
    return a, c / c.norm(dim=-1, keepdim=True)


def _gaussian_pairs(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard Gaussian arrays; orthonormalised they give uniformly random 2-frames."""
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(shape, generator=gen, dtype=_DTYPE),
        torch.randn(shape, generator=gen, dtype=_DTYPE),
    )


def _check_planes(planes, N: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(planes, tuple | list) and len(planes) == 2):
        raise ValueError("planes must be a pair (u, v) of arrays of shape (d,) or (N, d)")
    out = []
    for name, x in zip(("u", "v"), planes, strict=True):
        t = check_array(x, name)
        if t.ndim == 1:
            t = t.expand(N, -1)
        if t.ndim != 2 or t.shape != (N, d):
            raise ValueError(f"plane vector {name} must have shape ({d},) or ({N}, {d}), got {tuple(t.shape)}")
        out.append(t)
    return out[0], out[1]


def _plane_area_ok(
    u: torch.Tensor, v: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Whether (u, v) span a 2-plane: Gram determinant above ``_PLANE_RTOL`` |u|^2 |v|^2.

    ``ref`` gives the vectors the norms are taken from (the unprojected plane, so that a plane whose
    projection is rounding noise is rejected); default (u, v).
    """
    ru, rv = (u, v) if ref is None else ref
    uu, vv, uv = (u * u).sum(-1), (v * v).sum(-1), (u * v).sum(-1)
    scale = (ru * ru).sum(-1) * (rv * rv).sum(-1)
    return (scale > 0) & (uu * vv - uv.square() > _PLANE_RTOL * scale)
