r"""Sphere head: latents on the unit sphere :math:`S^{d-1}`, a cosine classifier and a radius.

.. math::

    v = W_p h\ (+\, b_p), \qquad u = v / \|v\| \in S^{d-1}, \qquad
    \mathrm{logit}_k = r \, \langle u, w_k \rangle, \quad w_k \in S^{d-1},

so the Euclidean point behind the logits is :math:`z = r u` on the sphere of radius :math:`r`. The class
directions :math:`w_k` are ``geoopt.ManifoldParameter`` s on ``geoopt.Sphere()`` (a Riemannian optimiser
keeps them unit), the radius :math:`r` is one scalar shared by all samples (fixed, learnable or learnable
and penalised), and the reported latents are the directions :math:`u` (``head.manifold`` is the unit
sphere): :math:`z = r u` differs from :math:`u` only by that shared constant, so measuring :math:`u` loses
nothing and keeps the latents on the manifold the analyzers are told about.
"""

from __future__ import annotations

import math
from typing import Literal

import geoopt
import torch
from torch import nn

from lpc_geom.models.base import HeadOutput
from lpc_geom.models.geometry.base import ManifoldHead

RadiusMode = Literal["fixed", "learnable", "penalised"]
RADIUS_MODES = ("fixed", "learnable", "penalised")


def sphere_normalize(v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""Rows of ``v`` normalised onto the unit sphere, safely at the origin.

    .. math:: u = v / \|v\| \ \text{ if } \|v\| \ge \epsilon, \qquad u = e_1 \ \text{ otherwise.}

    ``geoopt.Sphere().projx(0)`` is NaN (it divides by the norm without an epsilon). A row shorter than
    ``eps`` has no meaningful direction; it is sent to the fixed point :math:`e_1` with a zero gradient,
    so every output row is on the sphere and every gradient is finite (at most :math:`1/\epsilon` in
    norm, the intrinsic Lipschitz constant of normalisation at radius :math:`\epsilon`).

    Parameters
    ----------
    v : Tensor, shape (..., d)
    eps : float
        Norm below which a row counts as the origin.

    Returns
    -------
    Tensor, shape (..., d)
        Unit rows.
    """
    norm = v.norm(dim=-1, keepdim=True)
    u = v / norm.clamp_min(eps)
    e1 = torch.zeros_like(v)
    e1[..., 0] = 1.0
    return torch.where(norm < eps, e1, u)


class SphereClassifier(nn.Module):
    r"""Cosine classifier: ``logits[:, k] = <u, w_k>`` with unit class directions ``w_k``.

    Parameters
    ----------
    latent_dim : int
    num_classes : int
    manifold : geoopt.Sphere, optional
        The sphere the directions live on (default: ``geoopt.Sphere()``).

    Attributes
    ----------
    weight : geoopt.ManifoldParameter, shape (K, d)
        Unit class directions, initialised uniformly on the sphere (normalised Gaussian rows).
    """

    def __init__(self, latent_dim: int, num_classes: int, manifold: geoopt.Sphere | None = None):
        super().__init__()
        manifold = geoopt.Sphere() if manifold is None else manifold
        directions = torch.nn.functional.normalize(torch.randn(num_classes, latent_dim), dim=-1)
        self.weight = geoopt.ManifoldParameter(directions, manifold=manifold)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Cosines between unit latents ``u`` (N, d) and the class directions: shape (N, K)."""
        return u @ self.weight.transpose(0, 1)


class SphereHead(ManifoldHead, geometry="sphere", manifolds=(geoopt.Sphere,),
                 supports=("geoopt.Sphere / geoopt.SphereExact without a subspace constraint",)):
    r"""LPC head with latents on the unit sphere and cosine logits scaled by a radius.

    Forward pass: :math:`u = \mathrm{normalize}(W_p h + b_p)`, :math:`c_{ik} = \langle u_i, w_k\rangle`,
    :math:`\mathrm{logit}_{ik} = r\, c_{ik}` (see the module docstring).

    Collapse energy
        .. math::
            E_i = \underbrace{[\text{penalised}]\; r^2}_{\text{radius term}}
                  \;+\; \lambda_w \,\bigl(1 - \max_k \langle u_i, w_k \rangle\bigr).

        *Radius term.* The Euclidean point behind the logits is :math:`z_i = r u_i`, so
        :math:`\|z_i\|^2 = r^2`: this is exactly the Euclidean LPC energy restricted to the sphere. On a
        sphere every direction has the same norm, so the pressure can only act on the shared scale: it
        lowers the logit scale (raises the softmax temperature), and cross-entropy can then only stay low
        by aligning each :math:`u_i` with its class direction -- the within-class collapse that
        :math:`\gamma\|z\|^2` produces in the Euclidean head.

        *Within-class term* (weight ``within_class`` :math:`= \lambda_w`, off by default).
        :math:`1 - \langle u, w \rangle = \tfrac12 \|u - w\|^2` is half the squared chordal distance to the
        class direction: the sphere's analogue of the squared distance to the point the class collapses
        onto. It uses the classifier's unit directions as class centres (no batch means, which are noisy
        and need labels), and in the forward pass, which has no labels, the *nearest* direction
        (:math:`\max_k`), which is the labelled direction once training accuracy is 100 % -- the regime in
        which the LPC schedules grow :math:`\gamma`. A trainer that has the labels can add
        :meth:`within_class_energy` instead. ``1 - <u, w>`` replaces ``geoopt.Sphere().dist``, whose arccos
        has a float32 floor with a zero gradient near 0.

        With ``radius_mode="fixed"`` and ``within_class=0`` the energy is identically zero (a sphere
        baseline without compression pressure).

    Parameters
    ----------
    in_dim, latent_dim, num_classes : int
        Feature size, latent dimension ``d >= 2`` and number of classes ``K``.
    manifold : geoopt.Sphere, optional
        The unit sphere (default ``geoopt.Sphere()``; ``SphereExact`` uses the exact exponential map as
        the optimiser's retraction).
    radius : float
        Initial (or fixed) radius :math:`r > 0`, i.e. the logit scale.
    radius_mode : {"fixed", "learnable", "penalised"}
        ``fixed``: a constant buffer; ``learnable``: :math:`r = \exp(\rho)` with :math:`\rho` trained, not
        penalised; ``penalised``: learnable and :math:`r^2` enters the energy.
    within_class : float
        Weight :math:`\lambda_w \ge 0` of the label-free within-class term.
    bias : bool
        Bias of the projection :math:`W_p`. Off by default: without it the head ignores the input scale,
        ``head(a h) == head(h)`` for every ``a > 0`` (a bias makes the direction of ``a W h + b`` depend on
        ``a``).
    eps : float
        Norm below which a projected row counts as the origin (see :func:`sphere_normalize`).
    """

    @classmethod
    def refusal(cls, manifold: geoopt.Sphere) -> str | None:
        """A sphere restricted to a subspace has no head (its projector is not the unit sphere's)."""
        if manifold.projector is not None:
            return "a Sphere restricted to a subspace (intersection/complement)"
        return None

    def __init__(
        self,
        in_dim: int,
        latent_dim: int,
        num_classes: int,
        manifold: geoopt.Sphere | None = None,
        *,
        radius: float = 16.0,
        radius_mode: RadiusMode = "penalised",
        within_class: float = 0.0,
        bias: bool = False,
        eps: float = 1e-6,
    ):
        super().__init__()
        if latent_dim < 2:
            raise ValueError(f"the sphere head needs latent_dim >= 2 (S^0 is two points), got {latent_dim}")
        if radius_mode not in RADIUS_MODES:
            raise ValueError(f"radius_mode must be one of {RADIUS_MODES}, got {radius_mode!r}")
        if not radius > 0:
            raise ValueError(f"radius must be positive, got {radius}")
        if within_class < 0:
            raise ValueError(f"within_class must be >= 0, got {within_class}")
        if manifold is not None and not isinstance(manifold, geoopt.Sphere):
            raise ValueError(f"SphereHead needs a geoopt.Sphere, got {manifold!r}")
        self.manifold = geoopt.Sphere() if manifold is None else manifold
        self.radius_mode = radius_mode
        self.within_class = float(within_class)
        self.eps = float(eps)
        self.projection = nn.Linear(in_dim, latent_dim, bias=bias)
        self.classifier = SphereClassifier(latent_dim, num_classes, manifold=self.manifold)
        log_radius = torch.tensor(math.log(radius))
        if radius_mode == "fixed":
            self.register_buffer("log_radius", log_radius)
        else:
            self.log_radius = nn.Parameter(log_radius)

    @property
    def radius(self) -> torch.Tensor:
        """The radius (logit scale) :math:`r` as a 0-d tensor."""
        return self.log_radius.exp()

    def forward(self, h: torch.Tensor) -> HeadOutput:
        u = sphere_normalize(self.projection(h), self.eps)
        cosines = self.classifier(u)
        r = self.radius
        energy = u.new_zeros(u.shape[0])
        if self.radius_mode == "penalised":
            energy = energy + r * r
        if self.within_class > 0:
            energy = energy + self.within_class * (1.0 - cosines.max(dim=1).values)
        return HeadOutput(r * cosines, u, energy)

    def within_class_energy(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        r"""Labelled within-class energy :math:`1 - \langle u_i, w_{y_i} \rangle`, shape (N,).

        Parameters
        ----------
        latents : Tensor, shape (N, d)
            Unit latents (``HeadOutput.latents`` of this head).
        labels : Tensor, shape (N,)
            True class indices.
        """
        return 1.0 - (latents * self.classifier.weight[labels]).sum(dim=-1)

    def extra_repr(self) -> str:
        return (
            f"geometry='sphere', radius_mode={self.radius_mode!r}, within_class={self.within_class}, "
            f"eps={self.eps}"
        )
