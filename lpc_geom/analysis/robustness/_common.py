"""Helpers shared by the robustness measures: reading logits, evaluation mode, placement, Lipschitz errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class LipschitzRuleError(TypeError):
    """No Lipschitz rule covers a module or a traced node (or a rule does not match what it covers)."""


class UnboundedLipschitzError(ValueError):
    """The module has no finite global Lipschitz constant (e.g. a normalisation)."""


def logits_of(output: object) -> torch.Tensor:
    """Return the logits of a model's output.

    Parameters
    ----------
    output : Tensor or object with a ``logits`` attribute
        What ``model(x)`` returned: a tensor of logits of shape (N, K), or a
        :class:`~lpc_geom.models.base.HeadOutput` (or anything else exposing ``.logits``).

    Returns
    -------
    Tensor, shape (N, K)

    Raises
    ------
    TypeError
        If the output is neither a tensor nor carries ``logits``, or the logits are not 2-D.
    """
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model must return a tensor of logits or an object with a `.logits` tensor, "
                        f"got {type(output).__name__}")
    if logits.dim() != 2:
        raise TypeError(f"logits must have shape (N, K), got {tuple(logits.shape)}")
    return logits


def primary_output(output: object) -> torch.Tensor:
    """The tensor a Lipschitz bound of a module describes: the logits, the first entry of a tuple, or the tensor.

    Parameters
    ----------
    output : Tensor, object with ``logits``, or tuple
        What a module returned.

    Returns
    -------
    Tensor
    """
    if isinstance(output, tuple) and not hasattr(output, "logits"):
        output = output[0]
    return output if isinstance(output, torch.Tensor) else logits_of(output)


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every submodule's own flag afterwards.

    Restoring per submodule (not just ``model.train(was_training)``) keeps a mixed state intact, e.g. a
    frozen backbone left in eval mode inside a model that is otherwise training.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def model_placement(model: nn.Module, fallback: torch.Tensor | None = None) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a model's first parameter (or buffer).

    Parameters
    ----------
    model : nn.Module
    fallback : Tensor, optional
        Used when the model has neither parameters nor floating buffers.

    Returns
    -------
    device, dtype
    """
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    if fallback is not None and fallback.is_floating_point():
        return fallback.device, fallback.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def as_model_input(inputs: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Detached floating copy of ``inputs`` on the model's device and in its dtype.

    A copy (not a view) so that tensors created under ``torch.inference_mode`` can require gradients.
    """
    if not isinstance(inputs, torch.Tensor):
        inputs = torch.as_tensor(inputs)
    device, dtype = model_placement(model, inputs)
    return inputs.detach().to(device=device, dtype=dtype).clone()
