r"""Inference copies of a model with every evaluation-mode batch norm folded into the layer before it.

In evaluation mode a batch norm after a convolution :math:`z = W * x + c` is the
per-channel affine map :math:`y_o = s_o (z_o - \mu_o) + \beta_o` with
:math:`s_o = \gamma_o / \sqrt{v_o + \epsilon}` (running mean :math:`\mu`, running variance :math:`v`,
scale :math:`\gamma`, shift :math:`\beta`), so the pair is one layer with weight and bias

.. math::

    W'_{o\cdots} = s_o\, W_{o\cdots}, \qquad c'_o = s_o (c_o - \mu_o) + \beta_o

(:math:`c = 0` for a layer without bias). The composition is exact; the folded weights are computed in
double precision and rounded once to the layer's type, so outputs and input gradients of the copy equal
the model's up to float rounding. Evaluating the copy skips one pass over every activation of the batch
norms, forward and backward: that is what the per-epoch evaluation and the attacks (DeepFool, FMN), which
differentiate the evaluated model with respect to its inputs hundreds of times, run on.

Which pairs are folded: consecutive children ``(layer, batch norm)`` of an :class:`torch.nn.Sequential`,
and the pairs a module lists in a ``conv_bn_pairs`` attribute (attribute names ``(layer, batch norm)``
whose forward applies the batch norm directly to the layer's output, as the ResNet blocks of
:mod:`lpc_geom.models.resnet` declare). A layer is an ``nn.Conv1d/2d/3d`` (any padding, stride or groups:
the batch norm acts on the outputs, whose channel axis is the batch norm's); the batch norm must keep
running statistics (without them evaluation mode normalises with the batch's own) and have one channel
per output channel. Linear layers are left alone: a batch norm after one normalises axis 1, which is the
linear layer's output axis only for two-dimensional inputs, and the module structure does not say which
inputs it gets. Every other module is copied as it is.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator
from itertools import pairwise

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["fold_batch_norms", "folds_for_evaluation", "has_foldable_batch_norms", "has_hooks"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Per-module hook registries: a copy starts without hooks (the model's act on the model's own state).
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """An evaluation-mode copy of ``model`` with its batch norms folded into the preceding convolutions.

    Parameters
    ----------
    model : nn.Module
        Left unchanged (modes, parameters, gradients, hooks).

    Returns
    -------
    nn.Module
        A copy of the module tree in evaluation mode whose folded batch norms are ``nn.Identity`` and whose
        folded convolutions carry new parameters, the composed weight and bias of the module docstring
        (requiring no gradients). Every other parameter and buffer is the model's own object, not a copy of
        its data: the copy is meant for immediate evaluation (creating it costs no pass over the weights),
        and the model's modes and hooks are not touched by using it. It has no hooks: the model's (e.g. an
        optimiser's statistics hooks) act on the model's own state. Outputs and input gradients equal the
        evaluation-mode model's up to float rounding.
    """
    folded = _module_tree_copy(model, {})
    with torch.no_grad():
        for parent, layer, bn_name in list(_pairs(folded)):
            _fold_pair(layer, getattr(parent, bn_name))
            setattr(parent, bn_name, nn.Identity())
    return folded.eval()


def _module_tree_copy(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    """A new object for every module of the tree (shared ones stay shared) holding the same parameters and
    buffers, without hooks."""
    if id(module) in memo:
        return memo[id(module)]
    new = copy.copy(module)
    memo[id(module)] = new
    state = new.__dict__
    for name in _HOOK_DICTS:
        if name in state:
            state[name] = OrderedDict()
    state["_parameters"] = dict(module._parameters)
    state["_buffers"] = dict(module._buffers)
    state["_modules"] = {name: None if child is None else _module_tree_copy(child, memo)
                         for name, child in module._modules.items()}
    return new


def has_foldable_batch_norms(model: nn.Module) -> bool:
    """Whether :func:`fold_batch_norms` would fold at least one batch norm of ``model``."""
    return next(_pairs(model), None) is not None


def has_hooks(model: nn.Module) -> bool:
    """Whether a module of ``model`` carries forward or backward hooks (which a folded copy would not run)."""
    return any(getattr(module, name, None) for module in model.modules() for name in _HOOK_DICTS)


def folds_for_evaluation(model: nn.Module) -> bool:
    """Whether evaluation should run on :func:`fold_batch_norms`'s copy of ``model``.

    True when it has a batch norm to fold and no hooks (the copy would not run them, so a hooked model is
    evaluated as it is).
    """
    return has_foldable_batch_norms(model) and not has_hooks(model)


def _pairs(model: nn.Module) -> Iterator[tuple[nn.Module, nn.Module, str]]:
    """``(parent, layer, batch norm attribute name)`` of every foldable pair of the module docstring.

    A layer or batch norm that the model uses in more than one place is left alone (folding it into one
    use would change the others).
    """
    uses: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            for (_, layer), (bn_name, bn) in pairwise(list(module._modules.items())):
                if _foldable(layer, bn, uses):
                    yield module, layer, bn_name
        for layer_name, bn_name in getattr(module, "conv_bn_pairs", ()):
            layer = getattr(module, layer_name)
            if _foldable(layer, getattr(module, bn_name), uses):
                yield module, layer, bn_name


def _foldable(layer: nn.Module | None, bn: nn.Module | None, uses: dict[int, int]) -> bool:
    return (isinstance(layer, _LAYERS) and isinstance(bn, _BatchNorm) and uses[id(layer)] == 1
            and uses.get(id(bn)) == 1 and bn.running_mean is not None and bn.running_var is not None
            and bn.num_features == layer.out_channels)


def _fold_pair(layer: nn.Module, bn: _BatchNorm) -> None:
    """Fold ``bn`` into ``layer`` in place (the formula of the module docstring, in double precision)."""
    weight = layer.weight
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double()
    if layer.bias is not None:
        shift = shift + layer.bias.double()
    shift = shift * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    folded = weight.double() * scale.view((-1,) + (1,) * (weight.dim() - 1))
    layer.weight = nn.Parameter(folded.to(weight.dtype), requires_grad=False)
    layer.bias = nn.Parameter(shift.to(weight.dtype), requires_grad=False)
