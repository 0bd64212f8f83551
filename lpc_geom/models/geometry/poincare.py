r"""Poincaré-ball head: latents :math:`z = \exp_0(v)` on the ball of curvature :math:`-c`.

Conventions (geoopt's): the ball :math:`\mathbb{D}^d_c = \{x : c\|x\|^2 < 1\}` with metric
:math:`\lambda_x^2 g_E`, :math:`\lambda_x = 2 / (1 - c\|x\|^2)`. Then

.. math::

    \exp_0(v) = \tanh(\sqrt c\,\|v\|)\, \frac{v}{\sqrt c\,\|v\|}, \qquad
    d_c(0, \exp_0(v)) = 2\|v\|, \qquad
    x \oplus_c y = \frac{(1 + 2c\langle x,y\rangle + c\|y\|^2)\,x + (1 - c\|x\|^2)\,y}
                        {1 + 2c\langle x,y\rangle + c^2\|x\|^2\|y\|^2}.

The curvature is read from the manifold as :math:`c = -k`, so ``geoopt.PoincareBall(c, learnable=True)``
(where :math:`c = \mathrm{softplus}(\cdot) > 0`) and ``geoopt.Stereographic(k<0)`` are both accepted.
All functions are written with plain torch operations (``torch.asinh``: geoopt's ``arsinh`` is wrong for
large negative float32 arguments, with a zero gradient).
"""

from __future__ import annotations

import math
from typing import Literal

import geoopt
import torch
from torch import nn

from lpc_geom.models.base import HeadOutput
from lpc_geom.models.geometry.base import ManifoldHead

BallClassifier = Literal["mlr", "prototype"]
ClassPoints = Literal["auto", "manifold", "tangent"]


def expmap0(v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    r"""Exponential map at the origin of the ball, :math:`\tanh(\sqrt c\|v\|)\, v / (\sqrt c\|v\|)`.

    Parameters
    ----------
    v : Tensor, shape (..., d)
        Tangent vectors at the origin.
    c : Tensor
        Curvature magnitude :math:`c > 0` (0-d).

    Returns
    -------
    Tensor, shape (..., d)
        Points with :math:`\sqrt c \|x\| = \tanh(\sqrt c \|v\|) < 1` (before float rounding: project the
        result with the manifold's ``projx`` to stay strictly inside in float32).
    """
    sqrt_c = c.sqrt()
    scaled = sqrt_c * v.norm(dim=-1, keepdim=True).clamp_min(1e-15)
    return torch.tanh(scaled) * v / scaled


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    r"""Möbius addition :math:`x \oplus_c y` (broadcasting over leading dimensions).

    Parameters
    ----------
    x, y : Tensor, shape (..., d)
        Points of the ball.
    c : Tensor
        Curvature magnitude (0-d).
    """
    xy = (x * y).sum(dim=-1, keepdim=True)
    x2 = (x * x).sum(dim=-1, keepdim=True)
    y2 = (y * y).sum(dim=-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    den = 1 + 2 * c * xy + c * c * x2 * y2
    return num / den.clamp_min(1e-15)


def hyperbolic_mlr_logits(
    z: torch.Tensor, points: torch.Tensor, normals: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    r"""Hyperbolic multinomial logistic regression (Ganea, Bécigneul & Hofmann 2018, eq. 25).

    .. math::

        \mathrm{logit}_k(z) = \frac{\lambda_{p_k}\|a_k\|}{\sqrt c}\,
            \operatorname{asinh}\!\left(
            \frac{2\sqrt c\,\langle w_k, a_k\rangle}{(1 - c\|w_k\|^2)\,\|a_k\|}\right),
        \qquad w_k = (-p_k) \oplus_c z,

    with the class normal :math:`a_k = P_{0\to p_k}(a'_k) = (1 - c\|p_k\|^2)\, a'_k` the parallel transport
    of a tangent vector :math:`a'_k` at the origin, so :math:`\lambda_{p_k}\|a_k\| = 2\|a'_k\|` and the
    positive factor cancels inside the asinh:

    .. math::

        \mathrm{logit}_k(z) = \frac{2\|a'_k\|}{\sqrt c}\operatorname{asinh}\!\left(
            \frac{2\sqrt c\,\bigl(B_k\langle z, a'_k\rangle - A_{k}(z)\langle p_k, a'_k\rangle\bigr)}
                 {B_k\,(1 - c\|z\|^2)\,\|a'_k\|}\right),

    :math:`A_k(z) = 1 - 2c\langle p_k, z\rangle + c\|z\|^2`, :math:`B_k = 1 - c\|p_k\|^2`. This uses the
    numerator of the Möbius sum and the gyro-identity
    :math:`1 - c\|x \oplus_c y\|^2 = (1 - c\|x\|^2)(1 - c\|y\|^2) / D(x, y)` (``D`` the Möbius denominator,
    which cancels), so nothing of size (N, K, d) is formed and no difference near the boundary is taken:
    the only small quantities are :math:`B_k` and :math:`1 - c\|z\|^2`, both bounded below by the
    projection of the points into the ball.

    Parameters
    ----------
    z : Tensor, shape (N, d)
        Points on the ball.
    points : Tensor, shape (K, d)
        Class offsets :math:`p_k` on the ball.
    normals : Tensor, shape (K, d)
        Class normals :math:`a'_k`, tangent vectors at the origin.
    c : Tensor
        Curvature magnitude (0-d).

    Returns
    -------
    Tensor, shape (N, K)
        Signed hyperbolic distances to the class hyperplanes, scaled by :math:`\lambda_{p_k}\|a_k\|`.
    """
    tiny = torch.finfo(z.dtype).eps
    sqrt_c = c.sqrt()
    z2 = (z * z).sum(dim=-1, keepdim=True)  # (N, 1)
    p2 = (points * points).sum(dim=-1)  # (K,)
    a_norm = normals.norm(dim=-1).clamp_min(tiny)  # (K,)
    A = 1 - 2 * c * (z @ points.transpose(0, 1)) + c * z2  # (N, K)
    B = (1 - c * p2).clamp_min(tiny)  # (K,)
    numerator_dot_a = B * (z @ normals.transpose(0, 1)) - A * (points * normals).sum(dim=-1)
    argument = 2 * sqrt_c * numerator_dot_a / (B * (1 - c * z2).clamp_min(tiny) * a_norm)
    return (2 * a_norm / sqrt_c) * torch.asinh(argument)


def ball_sqdist(z: torch.Tensor, points: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    r"""Squared geodesic distances between rows of ``z`` (N, d) and ``points`` (K, d): shape (N, K).

    .. math::

        d_c(x, y) = \frac{1}{\sqrt c}\operatorname{arcosh}\!\Bigl(1 + \frac{2c\|x - y\|^2}
                    {(1 - c\|x\|^2)(1 - c\|y\|^2)}\Bigr)
                  = \frac{2}{\sqrt c}\operatorname{asinh}\sqrt{s}, \qquad
        s = \frac{c\|x - y\|^2}{(1 - c\|x\|^2)(1 - c\|y\|^2)},

    using :math:`\operatorname{arcosh}(1 + 2s) = 2\operatorname{asinh}\sqrt s`. The differences are formed
    explicitly (no :math:`\|x\|^2 + \|y\|^2 - 2\langle x, y\rangle` cancellation near :math:`x = y`), and
    :math:`s` is floored at the smallest normal float before the square root so that the gradient at
    :math:`x = y` is finite (zero, the true gradient of :math:`d^2` there).
    """
    tiny = torch.finfo(z.dtype).eps
    diff2 = (z.unsqueeze(1) - points.unsqueeze(0)).pow(2).sum(dim=-1)  # (N, K)
    z_conf = (1 - c * (z * z).sum(dim=-1, keepdim=True)).clamp_min(tiny)  # (N, 1)
    p_conf = (1 - c * (points * points).sum(dim=-1)).clamp_min(tiny)  # (K,)
    s = (c * diff2 / (z_conf * p_conf)).clamp_min(torch.finfo(z.dtype).tiny)
    return (4 / c) * torch.asinh(s.sqrt()).pow(2)


class _BallPoints(nn.Module):
    r"""K points on the ball, stored as ManifoldParameters or through the tangent space at the origin.

    ``manifold``: ``points`` is a ``geoopt.ManifoldParameter`` on the ball (a Riemannian optimiser keeps
    it inside); the forward pass re-projects it, which is the identity for points already inside and
    keeps the module well defined if a learnable curvature shrinks the ball between two stabilisations.
    ``tangent``: a Euclidean parameter :math:`p'` and :math:`p = \exp_0(p')`, inside the ball for every
    value of :math:`p'` and every curvature, and trainable by any optimiser.

    The ball is kept in ``self.__dict__`` rather than registered as a submodule: its (possibly learnable)
    curvature belongs to the head, not to the classifier, and must not inherit the classifier's
    optimiser role.
    """

    def __init__(self, ball: geoopt.Stereographic, tangent_init: torch.Tensor, mode: str):
        super().__init__()
        object.__setattr__(self, "ball", ball)
        self.mode = mode
        if mode == "manifold":
            with torch.no_grad():
                initial = ball.projx(expmap0(tangent_init, -ball.k.detach()))
            self.points = geoopt.ManifoldParameter(initial, manifold=ball)
        else:
            self.tangent_points = nn.Parameter(tangent_init)

    def forward(self) -> torch.Tensor:
        if self.mode == "manifold":
            return self.ball.projx(self.points)
        return self.ball.projx(expmap0(self.tangent_points, -self.ball.k))


class HyperbolicMLR(nn.Module):
    r"""Hyperbolic MLR classifier (see :func:`hyperbolic_mlr_logits`).

    Class offsets :math:`p_k` start at the origin (the class hyperplanes then pass through it, a linear
    classifier in the tangent space); normals :math:`a'_k` are initialised like ``nn.Linear`` weights,
    :math:`U(-1/\sqrt d, 1/\sqrt d)`, and are Euclidean parameters (tangent vectors at the origin,
    transported to :math:`p_k` inside the formula).
    """

    def __init__(self, latent_dim: int, num_classes: int, ball: geoopt.Stereographic, class_points: str):
        super().__init__()
        object.__setattr__(self, "ball", ball)
        self.offsets = _BallPoints(ball, torch.zeros(num_classes, latent_dim), class_points)
        bound = 1.0 / math.sqrt(latent_dim)
        self.normals = nn.Parameter(torch.empty(num_classes, latent_dim).uniform_(-bound, bound))

    @property
    def weight(self) -> torch.Tensor:
        """The class normals :math:`a'_k` (K, d): tangent vectors at the origin, the analogue of a linear
        classifier's rows (e.g. for the NC3 self-duality measure)."""
        return self.normals

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return hyperbolic_mlr_logits(z, self.offsets(), self.normals, -self.ball.k)


class HyperbolicPrototypes(nn.Module):
    r"""Distance-to-prototype classifier: :math:`\mathrm{logit}_k = -d_c(z, p_k)^2 / T`.

    Prototypes start at :math:`\exp_0(g)` with :math:`g \sim N(0, I/(4d))` (geodesic distance to the
    origin about 1), distinct with probability one.
    """

    def __init__(
        self,
        latent_dim: int,
        num_classes: int,
        ball: geoopt.Stereographic,
        class_points: str,
        temperature: float = 1.0,
    ):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        object.__setattr__(self, "ball", ball)
        init = torch.randn(num_classes, latent_dim) / (2 * math.sqrt(latent_dim))
        self.prototypes = _BallPoints(ball, init, class_points)
        self.temperature = float(temperature)

    @property
    def weight(self) -> torch.Tensor:
        r"""The prototypes mapped to the tangent space at the origin, :math:`\log_0(p_k)` (K, d): the
        analogue of a linear classifier's rows (e.g. for the NC3 self-duality measure)."""
        return self.ball.logmap0(self.prototypes())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return -ball_sqdist(z, self.prototypes(), -self.ball.k) / self.temperature


class PoincareHead(ManifoldHead, geometry="poincare", manifolds=(geoopt.Stereographic,),
                   supports=("geoopt.PoincareBall / geoopt.PoincareBallExact with any c, fixed or learnable",
                             "geoopt.Stereographic / geoopt.StereographicExact with a fixed k < 0")):
    r"""LPC head on the Poincaré ball: :math:`z = \exp_0(v)`, :math:`v = W_p h + b_p`.

    Collapse energy
        .. math:: E_i = d_c(0, z_i)^2 = 4\|v_i\|^2 .

        The Euclidean LPC energy :math:`\|z\|^2` is the squared distance to the point everything is pulled
        towards; on the ball the analogue is the squared *geodesic* distance to the origin. Because
        :math:`d_c(0, \exp_0(v)) = 2\|v\|` for every :math:`c`, it is computed on the tangent pre-image
        :math:`v`: no :math:`\operatorname{artanh}` near the boundary, whose value and gradient blow up
        (and saturate in float32, where ``projx`` caps :math:`d_c(0, z)` near 6.2), and no gradient of the
        energy with respect to the curvature, which the penalty should not move. Where float32
        projection caps :math:`z` (:math:`\sqrt c\|v\| \gtrsim 3.1`) the energy still equals
        :math:`4\|v\|^2 \ge d_c(0, z)^2` and keeps pulling the point inwards.

    Parameters
    ----------
    in_dim, latent_dim, num_classes : int
    manifold : geoopt.PoincareBall or geoopt.Stereographic with fixed k < 0, optional
        The ball (learnable curvature: ``geoopt.PoincareBall(c, learnable=True)``). Default: built from
        ``c`` and ``learnable_c``. It is registered as ``head.manifold``, so a learnable curvature is
        saved in ``state_dict`` (``manifold.isp_c``) and trained with the body.
    c : float, optional
        Curvature magnitude when no manifold is given (default 1.0).
    learnable_c : bool, optional
        Learn :math:`c` when no manifold is given (default False).
    classifier : {"mlr", "prototype"}
        Hyperbolic MLR (:class:`HyperbolicMLR`) or squared-distance prototypes
        (:class:`HyperbolicPrototypes`).
    class_points : {"auto", "manifold", "tangent"}
        How class offsets / prototypes are stored (see :class:`_BallPoints`). ``auto``: ``manifold`` for a
        fixed curvature, ``tangent`` for a learnable one (a ManifoldParameter on a ball that shrinks while
        it is trained can sit outside it until the optimiser re-projects it).
    temperature : float
        Temperature :math:`T` of the prototype logits.
    bias : bool
        Bias of the tangent projection :math:`W_p`.
    """

    @classmethod
    def refusal(cls, manifold: geoopt.Stereographic) -> str | None:
        """The ball with any ``c``, or a stereographic model with a fixed ``k < 0``; nothing of ``k >= 0``.

        A learnable ``geoopt.Stereographic`` is refused: its raw ``k`` can cross zero during training,
        whereas ``geoopt.PoincareBall(c, learnable=True)`` keeps ``c > 0`` through a softplus.
        """
        if isinstance(manifold, geoopt.PoincareBall):
            return None
        if isinstance(manifold, geoopt.SphereProjection):
            return "positive-curvature stereographic models have no head"
        if manifold.k.requires_grad:
            return "a learnable Stereographic k may change sign; use geoopt.PoincareBall(c, learnable=True)"
        if not bool(manifold.k < 0):
            return f"Stereographic with k = {float(manifold.k)} >= 0"
        return None

    def __init__(
        self,
        in_dim: int,
        latent_dim: int,
        num_classes: int,
        manifold: geoopt.Stereographic | None = None,
        *,
        c: float | None = None,
        learnable_c: bool | None = None,
        classifier: BallClassifier = "mlr",
        class_points: ClassPoints = "auto",
        temperature: float = 1.0,
        bias: bool = True,
    ):
        super().__init__()
        if manifold is None:
            manifold = geoopt.PoincareBall(1.0 if c is None else c, learnable=bool(learnable_c))
        elif c is not None or learnable_c is not None:
            raise ValueError("give either a manifold or c / learnable_c, not both")
        elif not isinstance(manifold, geoopt.Stereographic) or not bool(manifold.k < 0):
            raise ValueError(f"PoincareHead needs a geoopt.PoincareBall or Stereographic(k<0), got {manifold!r}")
        if classifier not in ("mlr", "prototype"):
            raise ValueError(f"classifier must be 'mlr' or 'prototype', got {classifier!r}")
        if class_points not in ("auto", "manifold", "tangent"):
            raise ValueError(f"class_points must be 'auto', 'manifold' or 'tangent', got {class_points!r}")
        learnable = any(p.requires_grad for p in manifold.parameters())
        if class_points == "auto":
            class_points = "tangent" if learnable else "manifold"
        self.manifold = manifold
        self.class_points = class_points
        self.projection = nn.Linear(in_dim, latent_dim, bias=bias)
        if classifier == "mlr":
            self.classifier = HyperbolicMLR(latent_dim, num_classes, manifold, class_points)
        else:
            self.classifier = HyperbolicPrototypes(latent_dim, num_classes, manifold, class_points, temperature)

    @property
    def c(self) -> torch.Tensor:
        """Curvature magnitude :math:`c = -k > 0` (0-d tensor, differentiable when learnable)."""
        return -self.manifold.k

    def forward(self, h: torch.Tensor) -> HeadOutput:
        v = self.projection(h)
        z = self.manifold.projx(expmap0(v, self.c))
        return HeadOutput(self.classifier(z), z, 4 * (v * v).sum(dim=-1))

    def extra_repr(self) -> str:
        return f"geometry='poincare', class_points={self.class_points!r}"
