r"""Certified L2 radii from a Lipschitz bound, and certified accuracy.

If the logit vector :math:`f` is :math:`L`-Lipschitz in L2, then for any perturbation :math:`\delta`
and classes :math:`i, j`,
:math:`|\Delta(f_i - f_j)| = |(e_i - e_j)^\top \Delta f| \le \sqrt 2\, L \lVert\delta\rVert_2`. The
prediction :math:`\hat k` therefore cannot change while :math:`\sqrt 2 L\lVert\delta\rVert_2` is below
the margin :math:`m = f_{\hat k} - \max_{j \ne \hat k} f_j`, which certifies the radius

.. math:: \rho(x) = \frac{m(x)}{\sqrt 2\, L}.

Every input within :math:`\rho(x)` of :math:`x` (strictly) gets the same prediction, so
:math:`\rho(x)` never exceeds the distance to the nearest adversarial example (DeepFool's included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lpc_geom.analysis.robustness._common import as_model_input, evaluation_mode, logits_of

__all__ = ["certified_accuracy", "certified_radius", "logit_margins", "radius_from_margins"]


def logit_margins(model: nn.Module, inputs: torch.Tensor, *,
                  batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Top logit minus runner-up, and the prediction, for every input (eval mode, no gradients).

    Parameters
    ----------
    model : nn.Module
        Returns logits or an object with ``.logits`` (at least 2 classes).
    inputs : Tensor, shape (N, *input_shape)
    batch_size : int, default 1024

    Returns
    -------
    margins : Tensor, shape (N,), on the CPU
        :math:`f_{\\hat k} - \\max_{j \\ne \\hat k} f_j \\ge 0`.
    predictions : Tensor, int64, shape (N,), on the CPU
    """
    x_all = as_model_input(inputs, model)
    margins, preds = [], []
    with evaluation_mode(model), torch.no_grad():
        for start in range(0, x_all.shape[0], batch_size):
            logits = logits_of(model(x_all[start:start + batch_size]))
            if logits.shape[1] < 2:
                raise ValueError(f"margins need at least 2 classes, the model returns {logits.shape[1]}")
            top = logits.topk(2, dim=1)
            margins.append((top.values[:, 0] - top.values[:, 1]).cpu())
            preds.append(top.indices[:, 0].cpu())
    if not margins:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(margins), torch.cat(preds)


def radius_from_margins(margins: torch.Tensor, lipschitz: float) -> torch.Tensor:
    r"""Certified radius :math:`m / (\sqrt 2 L)` for given margins.

    Parameters
    ----------
    margins : Tensor, shape (N,)
        Non-negative logit margins.
    lipschitz : float
        Upper bound ``L`` on the Lipschitz constant of the logits (a
        :class:`~lpc_geom.analysis.robustness.lipschitz.LipschitzBound` works). ``inf`` gives radius 0;
        ``0`` (a constant model) gives ``inf`` for positive margins and 0 for ties.

    Returns
    -------
    Tensor, shape (N,)
    """
    lip = float(lipschitz)
    if math.isnan(lip) or lip < 0:
        raise ValueError(f"the Lipschitz bound must be a non-negative number, got {lip}")
    margins = margins.double()
    if lip == 0:
        return torch.where(margins > 0, math.inf, 0.0).to(margins.dtype)
    return margins / (math.sqrt(2.0) * lip)


def certified_radius(model: nn.Module, inputs: torch.Tensor, lipschitz: float, *,
                     batch_size: int = 1024) -> torch.Tensor:
    r"""Per-sample certified L2 radius :math:`\rho(x) = m(x) / (\sqrt 2 L)` (see module docstring).

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor, shape (N, *input_shape)
    lipschitz : float or LipschitzBound
        A *certified* upper bound on the Lipschitz constant of the logits over the input domain, e.g.
        :func:`~lpc_geom.analysis.robustness.lipschitz.lipschitz_upper_bound` (an empirical lower bound
        would give radii that are not certificates).
    batch_size : int, default 1024

    Returns
    -------
    Tensor, float64, shape (N,), on the CPU
        No input within (strictly less than) this distance is classified differently.
    """
    margins, _ = logit_margins(model, inputs, batch_size=batch_size)
    return radius_from_margins(margins, lipschitz)


def certified_accuracy(radius: torch.Tensor | np.ndarray, correct: torch.Tensor | np.ndarray,
                       eps: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
    r"""Fraction of samples that are correctly classified *and* certified at radius ``eps``.

    .. math:: \operatorname{CA}(\epsilon) = \frac1N \sum_i
              \mathbb 1[\hat k_i = y_i]\; \mathbb 1[\rho_i > \epsilon].

    Parameters
    ----------
    radius : array-like, shape (N,)
        Certified radii (:func:`certified_radius`).
    correct : array-like of bool, shape (N,)
        Whether each prediction matches the true label.
    eps : float or sequence of float
        Perturbation budget(s) in L2 (``eps = 0`` gives the accuracy among samples with a positive
        margin).

    Returns
    -------
    float, or ndarray of shape (len(eps),) for a sequence (NaN when N = 0)
    """
    r = np.asarray(radius.cpu() if isinstance(radius, torch.Tensor) else radius, dtype=np.float64)
    c = np.asarray(correct.cpu() if isinstance(correct, torch.Tensor) else correct, dtype=bool)
    if r.shape != c.shape or r.ndim != 1:
        raise ValueError(f"radius and correct must be 1-D of equal length, got {r.shape} and {c.shape}")
    e = np.asarray(eps, dtype=np.float64)
    if r.size == 0:
        out = np.full(e.shape, np.nan)
    else:
        out = ((r[None, :] > e.reshape(-1, 1)) & c[None, :]).mean(axis=1).reshape(e.shape)
    return float(out) if e.ndim == 0 else out
