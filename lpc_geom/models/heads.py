r"""Euclidean heads: every row of the LPC paper's ablation (see :mod:`lpc_geom.ablation`).

A head maps backbone features ``h`` (shape ``(N, in_dim)``) to a
:class:`~lpc_geom.models.base.HeadOutput` ``(logits, latents, energy)``:

.. math::

    z = \begin{cases} h & \text{penultimate = none} \\
                      W_2 h + b_2 & \text{penultimate = linear} \\
                      \operatorname{SiLU}(W_2 h + b_2) & \text{penultimate = nonlinear} \end{cases}
    \qquad E = \lVert z \rVert^2,

and the logits are ``W z (+ b)`` for a linear classifier, or the cosines
:math:`\cos\theta_k = \langle z/\lVert z\rVert, w_k/\lVert w_k\rVert\rangle` for the cosine classifier
that ArcFace and CosFace put their margins on (:mod:`lpc_geom.losses` applies margin and scale).

The LPC compression term is ``gamma * energy.mean()``; for LPC-NoPen (no penultimate layer) it
therefore acts on ``h`` itself.

Heads of other geometries (the manifold heads) follow the same contract: any module whose forward
returns a ``HeadOutput`` and that exposes ``classifier`` plugs into
:func:`lpc_geom.models.build.build_model` (see :func:`lpc_geom.models.build.register_head`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lpc_geom.ablation import Row, get_row
from lpc_geom.models.base import HeadOutput

__all__ = ["CosineClassifier", "EuclideanHead", "build_head"]

PenultimateKind = Literal["none", "linear", "nonlinear"]
HeadClassifierKind = Literal["linear", "cosine"]

_PENULTIMATES = ("none", "linear", "nonlinear")
_CLASSIFIERS = ("linear", "cosine")


class CosineClassifier(nn.Module):
    r"""Bias-free classifier returning cosines between the input and each class weight.

    .. math::

        \cos\theta_{ik} = \frac{\langle z_i, w_k \rangle}
                               {\max(\lVert z_i\rVert, \epsilon)\,\max(\lVert w_k\rVert, \epsilon)}
                          \in [-1, 1].

    The ``max(., eps)`` makes the output (0) and its gradient finite at ``z = 0`` (and at ``w_k = 0``).

    Parameters
    ----------
    in_features : int
        Size ``d`` of ``z``.
    out_features : int
        Number of classes ``K``.
    eps : float, default 1e-8
        Lower bound on the norms in the denominator.

    Attributes
    ----------
    weight : nn.Parameter, shape (K, d)
        Class directions ``w_k`` (only their direction matters).
    """

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-8):
        super().__init__()
        self.in_features, self.out_features, self.eps = int(in_features), int(out_features), float(eps)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        # Same initialisation as nn.Linear; the scale is irrelevant to the cosines.
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z_unit = F.normalize(z, dim=-1, eps=self.eps)
        w_unit = F.normalize(self.weight, dim=-1, eps=self.eps)
        # Rounding can push |cos| a few ulps past 1; acos-based margins downstream need [-1, 1].
        return (z_unit @ w_unit.t()).clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, eps={self.eps}"


class EuclideanHead(nn.Module):
    r"""Optional penultimate layer followed by a linear or cosine classifier.

    .. math::

        z = \begin{cases} h & \text{none} \\ W_2 h + b_2 & \text{linear} \\
                          \operatorname{SiLU}(W_2 h + b_2) & \text{nonlinear} \end{cases}, \qquad
        \text{logits} = \begin{cases} W z\ (+\, b) & \text{linear classifier} \\
                                      \cos\theta(z, w_k) & \text{cosine classifier} \end{cases}, \qquad
        E = \lVert z \rVert_2^2 .

    Parameters
    ----------
    in_dim : int
        Size of the backbone features ``h``.
    num_classes : int
        Number of classes ``K``.
    penultimate : {"none", "linear", "nonlinear"}, default "none"
        Penultimate layer (``W_2`` always has a bias ``b_2``; only the classifier's bias is optional).
    latent_dim : int, optional
        Width ``d`` of the penultimate layer; required unless ``penultimate == "none"`` (where ``d`` is
        ``in_dim`` and passing a value is an error).
    classifier : {"linear", "cosine"}, default "linear"
        Final layer. ``"cosine"`` is the classifier of the ArcFace / CosFace rows.
    bias : bool, default False
        Bias of the linear classifier (the LPC paper uses none). Not defined for the cosine classifier.

    Attributes
    ----------
    penultimate : nn.Module
        ``nn.Identity``, ``nn.Linear`` or ``nn.Sequential(nn.Linear, nn.SiLU)``.
    classifier : nn.Module
        ``nn.Linear(d, K)`` or :class:`CosineClassifier`.
    latent_dim : int
        Size of the latents ``z``.
    """

    def __init__(self, in_dim: int, num_classes: int, *, penultimate: PenultimateKind = "none",
                 latent_dim: int | None = None, classifier: HeadClassifierKind = "linear",
                 bias: bool = False):
        super().__init__()
        if penultimate not in _PENULTIMATES:
            raise ValueError(f"unknown penultimate {penultimate!r}; accepted: {', '.join(_PENULTIMATES)}")
        if classifier not in _CLASSIFIERS:
            raise ValueError(f"unknown classifier {classifier!r}; accepted: {', '.join(_CLASSIFIERS)}")
        if in_dim <= 0 or num_classes <= 0:
            raise ValueError(f"in_dim and num_classes must be positive, got {in_dim} and {num_classes}")
        if penultimate == "none":
            if latent_dim is not None:
                raise ValueError(f"latent_dim={latent_dim} given but penultimate='none' has no penultimate "
                                 "layer (the latents are the backbone features); pass latent_dim=None")
            self.penultimate: nn.Module = nn.Identity()
            d = int(in_dim)
        else:
            if latent_dim is None or latent_dim <= 0:
                raise ValueError(f"penultimate={penultimate!r} needs a positive latent_dim, got {latent_dim}")
            d = int(latent_dim)
            linear = nn.Linear(in_dim, d)
            self.penultimate = linear if penultimate == "linear" else nn.Sequential(linear, nn.SiLU())
        if classifier == "cosine":
            if bias:
                raise ValueError("the cosine classifier has no bias; pass bias=False")
            self.classifier: nn.Module = CosineClassifier(d, num_classes)
        else:
            self.classifier = nn.Linear(d, num_classes, bias=bias)
        self.in_dim, self.num_classes, self.latent_dim = int(in_dim), int(num_classes), d
        self.penultimate_kind, self.classifier_kind = penultimate, classifier

    def forward(self, h: torch.Tensor) -> HeadOutput:
        z = self.penultimate(h)
        return HeadOutput(self.classifier(z), z, z.pow(2).sum(dim=-1))

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, num_classes={self.num_classes}, "
                f"penultimate={self.penultimate_kind!r}, latent_dim={self.latent_dim}, "
                f"classifier={self.classifier_kind!r}")


def build_head(row: Row | str, in_dim: int, num_classes: int, *, latent_dim: int | None = None,
               bias: bool = False) -> EuclideanHead:
    """Build the Euclidean head of an ablation row.

    Parameters
    ----------
    row : Row or str
        Ablation row (or its name, see :data:`lpc_geom.ablation.ROWS`). ``row.penultimate`` picks the
        penultimate layer; ArcFace / CosFace rows get the cosine classifier, all others a linear one.
    in_dim : int
        Size of the backbone features.
    num_classes : int
        Number of classes ``K``.
    latent_dim : int, optional
        Penultimate width; defaults to ``row.latent_dim(num_classes)`` (16/64/128 for K <= 10,
        32/128/256 otherwise). Must be None for rows without a penultimate layer.
    bias : bool, default False
        Classifier bias (paper: none). Must be False for the cosine-classifier rows (ArcFace, CosFace).

    Returns
    -------
    EuclideanHead
    """
    row = get_row(row) if isinstance(row, str) else row
    if row.penultimate == "none" and latent_dim is not None:
        raise ValueError(f"row {row.name} has no penultimate layer; latent_dim must be None, got {latent_dim}")
    d = row.latent_dim(num_classes) if latent_dim is None else latent_dim
    classifier: HeadClassifierKind = "linear" if row.classifier == "linear" else "cosine"
    return EuclideanHead(in_dim, num_classes, penultimate=row.penultimate, latent_dim=d,
                         classifier=classifier, bias=bias)
