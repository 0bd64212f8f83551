r"""Stiefel head: the penultimate projection has orthonormal columns, the latents are Euclidean.

.. math::

    z = h W + b, \qquad W \in \mathrm{St}(n, d) = \{W \in \mathbb{R}^{n\times d} : W^\top W = I_d\},
    \qquad \mathrm{logits} = z V^\top (+\, c),

with :math:`n` = ``in_dim`` :math:`\ge d` = ``latent_dim``. Since :math:`W^\top W = I`, all singular
values of :math:`W` are 1: the map :math:`h \mapsto z` is an isometry onto its image and its Lipschitz
constant is exactly 1, so the penultimate layer cannot shrink the latents by itself -- any collapse the LPC
penalty causes must come from the backbone's features.
"""

from __future__ import annotations

import geoopt
import torch
from torch import nn

from lpc_geom.models.base import HeadOutput
from lpc_geom.models.geometry.base import ManifoldHead


def random_stiefel(n: int, p: int, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""A Haar-distributed point of :math:`\mathrm{St}(n, p)`: Q of the QR factorisation of a Gaussian.

    The columns of Q are multiplied by the signs of :math:`\mathrm{diag}(R)`, which makes the distribution
    uniform (without it, QR's sign convention biases it).
    """
    if p > n:
        raise ValueError(f"St(n, p) needs p <= n, got n={n}, p={p}")
    q, r = torch.linalg.qr(torch.randn(n, p, dtype=dtype))
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return q * signs


class StiefelLinear(nn.Module):
    r"""``z = h @ W + b`` with ``W`` a ``geoopt.ManifoldParameter`` of shape (in_dim, out_dim) on a Stiefel
    manifold, initialised on it (geoopt does not check that a ManifoldParameter's data lies on its
    manifold).

    Parameters
    ----------
    in_dim, out_dim : int
        ``out_dim <= in_dim``.
    manifold : geoopt.Stiefel, optional
        Default ``geoopt.EuclideanStiefel()``: its QR retraction returns an orthonormal :math:`W` to
        rounding accuracy at every step and costs one QR factorisation, less than the Cayley transform of
        ``CanonicalStiefel``.
    bias : bool
    """

    #: K-FAC reads the weight as (d_in, d_out) (see lpc_geom.optim.kfac).
    kfac_layout = "in_out"

    def __init__(self, in_dim: int, out_dim: int, manifold: geoopt.Stiefel | None = None, bias: bool = True):
        super().__init__()
        if out_dim > in_dim:
            raise ValueError(
                f"a Stiefel projection needs latent_dim <= in_dim (orthonormal columns), got "
                f"in_dim={in_dim}, latent_dim={out_dim}"
            )
        manifold = geoopt.EuclideanStiefel() if manifold is None else manifold
        self.weight = geoopt.ManifoldParameter(random_stiefel(in_dim, out_dim), manifold=manifold)
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = h @ self.weight
        return z if self.bias is None else z + self.bias


class StiefelHead(ManifoldHead, geometry="stiefel", manifolds=(geoopt.Stiefel,),
                  supports=("geoopt.EuclideanStiefel / geoopt.CanonicalStiefel / geoopt.EuclideanStiefelExact",)):
    r"""LPC head whose penultimate projection is constrained to the Stiefel manifold.

    Collapse energy
        .. math:: E_i = \|z_i\|^2 .

        The latents are Euclidean, so the LPC energy is the Euclidean one, unchanged. What changes is
        that :math:`W` cannot absorb the penalty: in the unconstrained head, :math:`\|z\|^2` can be made
        small by shrinking :math:`W` (and the classifier grows to compensate); here :math:`\|hW\| \le \|h\|`
        with equality on the column space, so the penalty acts on the backbone's features projected onto
        :math:`\mathrm{span}(W)` and on the bias.

    ``head.manifold`` is ``None`` (the latents are Euclidean); the constrained weight's manifold is
    ``head.weight_manifold``.

    Parameters
    ----------
    in_dim, latent_dim, num_classes : int
        ``latent_dim <= in_dim``.
    manifold : geoopt.Stiefel, optional
        Manifold of the projection weight (default ``geoopt.EuclideanStiefel()``).
    bias : bool
        Bias :math:`b` of the projection (it does not change the Lipschitz constant).
    classifier_bias : bool
        Bias of the linear classifier (the LPC paper uses none).
    """

    def __init__(
        self,
        in_dim: int,
        latent_dim: int,
        num_classes: int,
        manifold: geoopt.Stiefel | None = None,
        *,
        bias: bool = True,
        classifier_bias: bool = False,
    ):
        super().__init__()
        if manifold is not None and not isinstance(manifold, geoopt.Stiefel):
            raise ValueError(f"StiefelHead needs a geoopt Stiefel manifold, got {manifold!r}")
        self.manifold = None
        self.projection = StiefelLinear(in_dim, latent_dim, manifold, bias=bias)
        self.classifier = nn.Linear(latent_dim, num_classes, bias=classifier_bias)

    @property
    def weight_manifold(self) -> geoopt.Stiefel:
        """The Stiefel manifold of the projection weight."""
        return self.projection.weight.manifold

    def lipschitz_constant(self) -> float:
        r"""Spectral norm of the projection weight, :math:`\|W\|_2` (1 up to rounding on the manifold)."""
        with torch.no_grad():
            return float(torch.linalg.matrix_norm(self.projection.weight, ord=2))

    def forward(self, h: torch.Tensor) -> HeadOutput:
        z = self.projection(h)
        return HeadOutput(self.classifier(z), z, (z * z).sum(dim=-1))
