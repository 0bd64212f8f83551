"""A backbone written as a user would, outside lpc_geom: functional style, no ``out_dim``.

Importable as ``own_backbone`` with ``tests/`` on ``PYTHONPATH``, so that
``lpc-geom train --backbone own_backbone:make`` trains it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    """``flatten -> Linear -> relu -> (h + relu(Linear h)) -> flatten``: F.relu, torch.flatten, a residual add."""

    def __init__(self, input_shape: tuple[int, ...], width: int = 32):
        super().__init__()
        self.inp = nn.Linear(math.prod(input_shape), width)
        self.mid = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(torch.flatten(x, 1)))
        h = h + F.relu(self.mid(h))
        return torch.flatten(h, 1)


def make(input_shape: tuple[int, ...], width: int = 32) -> nn.Module:
    """The factory ``lpc-geom train --backbone own_backbone:make`` calls."""
    return Residual(tuple(input_shape), width=width)


def not_a_factory(input_shape, width=1):
    return "not a module"


NOT_CALLABLE = 3
