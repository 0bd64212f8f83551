r"""Batch norms whose evaluation mode is one per-channel affine map, cheap to differentiate.

In evaluation mode (running statistics) a batch norm is the affine map

.. math::

    y = \alpha_c x + \beta_c, \qquad \alpha_c = \frac{w_c}{\sqrt{v_c + \epsilon}}, \qquad
    \beta_c = b_c - \mu_c \alpha_c,

with running mean :math:`\mu_c`, running variance :math:`v_c`, scale :math:`w_c` and shift :math:`b_c`,
whose input gradient is :math:`\bar x = \alpha_c \bar y`. torch's CPU batch-norm backward computes that
product one element at a time, at about the cost of a convolution's backward pass: the attacks (DeepFool,
FMN), which differentiate the evaluated model with respect to its inputs hundreds of times, spent a large
share of their time there. :class:`BatchNorm1d` and :class:`BatchNorm2d` compute the map and its
gradient with vectorised tensor operations, in the order of torch's own CPU kernels (:math:`\alpha_c`
from the reciprocal square root and :math:`y` by fused multiply-adds; :math:`\bar x = (\bar y\,
\sigma_c^{-1})\, w_c` with :math:`\sigma_c^{-1}` computed in double precision), so that outputs and input
gradients equal ``torch.nn.BatchNorm{1,2}d``'s. The gradients of :math:`w` and :math:`b`, when asked
for, are those of the affine map (equal to torch's up to rounding). Training mode, and modules without
running statistics, are torch's own. Parameters, buffers and state-dict keys are those of the torch
classes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BatchNorm1d", "BatchNorm2d", "eval_affine"]


def eval_affine(module: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(alpha, beta)``, the per-channel scale and shift of a batch norm in evaluation mode.

    :math:`\alpha_c = w_c \operatorname{rsqrt}(v_c + \epsilon)` and :math:`\beta_c = b_c - \mu_c\alpha_c`
    (one fused multiply-add); :math:`w_c = 1`, :math:`b_c = 0` without affine parameters. Differentiable
    with respect to the module's weight and bias.
    """
    alpha = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        alpha = alpha * module.weight
    shift = module.bias if module.bias is not None else torch.zeros_like(alpha)
    return alpha, torch.addcmul(shift, module.running_mean, alpha, value=-1)


class _AffineMap(torch.autograd.Function):
    """``y = alpha x + beta`` per channel (axis 1), with torch's batch-norm input gradient ``(g * invstd) * w``."""

    generate_vmap_rule = True  # torch.func transforms and batched gradients go through it

    @staticmethod
    def forward(x, alpha, beta, invstd, weight):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(beta.view(shape), x, alpha.view(shape))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, _, invstd, weight = inputs
        ctx.shape, ctx.dims = (1, -1) + (1,) * (x.dim() - 2), [d for d in range(x.dim()) if d != 1]
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, invstd, weight)

    @staticmethod
    def backward(ctx, grad):
        x, invstd, weight = ctx.saved_tensors
        grad_x = grad_alpha = grad_beta = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * invstd.view(ctx.shape)
            if weight is not None:
                grad_x = grad_x * weight.view(ctx.shape)
        if ctx.needs_input_grad[1]:
            grad_alpha = (grad * x).sum(ctx.dims)
        if ctx.needs_input_grad[2]:
            grad_beta = grad.sum(ctx.dims)
        return grad_x, grad_alpha, grad_beta, None, None


class _AffineEval:
    """The evaluation-mode forward shared by the batch norms below (a mixin ahead of the torch class)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.running_mean is None or self.running_var is None:
            return super().forward(x)
        self._check_input_dim(x)
        alpha, beta = eval_affine(self)
        invstd = torch.rsqrt(self.running_var.double() + self.eps).to(x.dtype)
        weight = None if self.weight is None else self.weight.detach()
        return _AffineMap.apply(x, alpha, beta, invstd, weight)


class BatchNorm1d(_AffineEval, nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` whose evaluation mode is the affine map of the module docstring."""


class BatchNorm2d(_AffineEval, nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` whose evaluation mode is the affine map of the module docstring."""
