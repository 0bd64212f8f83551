"""The contract every model and head in lpc_geom follows.

A *backbone* maps inputs to features ``h`` of size ``backbone.out_dim``. A *head* maps ``h`` to a
:class:`HeadOutput`: the logits, the penultimate latents ``z`` the analyzers read, and the per-sample
collapse energy the LPC compression term penalises (``||z||^2`` for Euclidean heads, the squared geodesic
distance to the origin for manifold heads). A :class:`Classifier` chains the two, so that every model
returns logits *and* latents and no analyzer ever needs a forward hook.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class HeadOutput(NamedTuple):
    """What a head (and therefore a :class:`Classifier`) returns.

    Attributes
    ----------
    logits : Tensor, shape (N, K)
        Class scores; ``argmax`` is the prediction. Cosine heads return cosines in [-1, 1]
        (the margin losses apply their scale).
    latents : Tensor, shape (N, d)
        Penultimate representation (the points whose collapse is studied).
    energy : Tensor, shape (N,)
        Per-sample collapse energy ``E_i``; the compression term is ``gamma * mean_i E_i``.
    """

    logits: torch.Tensor
    latents: torch.Tensor
    energy: torch.Tensor


class Classifier(nn.Module):
    """``backbone -> head``; ``forward(x)`` returns a :class:`HeadOutput`.

    Parameters
    ----------
    backbone : nn.Module
        Must expose ``out_dim`` (the feature size it produces).
    head : nn.Module
        Called as ``head(h)``; must return a :class:`HeadOutput` and expose ``classifier``
        (the final layer, used by the LR schedule that leaves the classifier alone).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> HeadOutput:
        return self.head(self.backbone(x))

    def classifier_parameters(self) -> list[nn.Parameter]:
        """Parameters of the final classifier layer (kept at a constant learning rate)."""
        return list(self.head.classifier.parameters())
