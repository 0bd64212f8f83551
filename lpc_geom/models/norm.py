r"""Batch norms whose evaluation mode has a vectorised input gradient.

In evaluation mode (running statistics) a batch norm is the affine map

.. math::

    y = \frac{x - \mu_c}{\sqrt{v_c + \epsilon}}\, w_c + b_c,

with running mean :math:`\mu_c`, running variance :math:`v_c`, scale :math:`w_c` and shift :math:`b_c`,
whose input gradient is :math:`\bar x = (\bar y\, \sigma_c^{-1})\, w_c` with
:math:`\sigma_c^{-1} = (v_c + \epsilon)^{-1/2}`. torch's CPU batch-norm backward computes that product one
element at a time, at about the cost of a convolution's backward pass: the attacks (DeepFool, FMN), which
differentiate the evaluated model with respect to its inputs hundreds of times, spent a large share of
their time there. :class:`BatchNorm1d` and :class:`BatchNorm2d` keep torch's forward and compute that
gradient with two vectorised products, in the order of torch's kernel (:math:`\sigma_c^{-1}` in double
precision, rounded to the input's type), so that outputs and input gradients equal
``torch.nn.BatchNorm{1,2}d``'s. The gradients of :math:`w` and :math:`b`, when asked for, are
:math:`\sum \bar y\,(x - \mu_c)\,\sigma_c^{-1}` and :math:`\sum \bar y` over all but the channel
axis (torch's up to the rounding of the sums). Training mode, modules without running statistics and
passes that need no input gradient are torch's own. Parameters, buffers and state-dict keys are those of
the torch classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _EvalBatchNorm(torch.autograd.Function):
    """torch's evaluation-mode batch norm (channels on axis 1), with the vectorised gradients above."""

    generate_vmap_rule = True  # torch.func transforms and batched gradients go through it

    @staticmethod
    def forward(x, weight, bias, mean, var, eps):
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, mean, var, eps = inputs
        ctx.shape, ctx.dims = (1, -1) + (1,) * (x.dim() - 2), [d for d in range(x.dim()) if d != 1]
        invstd = torch.rsqrt(var.double() + eps).to(x.dtype)
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight, mean, invstd)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * invstd.view(ctx.shape)
            if weight is not None:
                grad_x = grad_x * weight.view(ctx.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * (x - mean.view(ctx.shape)) * invstd.view(ctx.shape)).sum(ctx.dims)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(ctx.dims)
        return grad_x, grad_weight, grad_bias, None, None, None


class _VectorisedEvalGradient:
    """The evaluation-mode forward shared by the batch norms below (a mixin ahead of the torch class)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training or self.running_mean is None or self.running_var is None
                or not (torch.is_grad_enabled() and x.requires_grad)):
            return super().forward(x)
        self._check_input_dim(x)
        return _EvalBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps)


class BatchNorm1d(_VectorisedEvalGradient, nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` with the vectorised evaluation-mode input gradient of the module docstring."""


class BatchNorm2d(_VectorisedEvalGradient, nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` with the vectorised evaluation-mode input gradient of the module docstring."""
