"""Helpers shared by the robustness measures: reading logits, evaluation mode, placement, boxes, bisection,
the attacks' result summary, Lipschitz errors and the writer of the Lipschitz rule registries."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

#: A box bound: a float, or a tensor broadcastable to one input.
Bound = float | torch.Tensor


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
    frozen backbone left in eval mode inside a model that is otherwise training. The parameters stop
    requiring gradients for the block (and require them again after): the attacks differentiate with
    respect to the inputs only, and no graph is then built towards the weights.
    """
    flags = [(m, m.training) for m in model.modules()]
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        for p in trainable:
            p.requires_grad_(False)
        yield model
    finally:
        for p in trainable:
            p.requires_grad_(True)
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


def prepare_bounds(bounds: tuple[Bound, Bound] | Sequence[Bound] | None, x: torch.Tensor,
                   attack: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Check a box ``(lo, hi)`` against the clean inputs ``x`` and return it as tensors (or None).

    Raises
    ------
    ValueError
        For anything but a pair, bounds that do not broadcast to one input, ``lo > hi`` somewhere, or
        inputs outside the box (the message names ``attack``).
    """
    if bounds is None:
        return None
    if len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (lo, hi), got {bounds!r}")
    lo, hi = (torch.as_tensor(b, device=x.device, dtype=x.dtype) for b in bounds)
    try:
        torch.broadcast_shapes(lo.shape, x.shape[1:])
        torch.broadcast_shapes(hi.shape, x.shape[1:])
    except RuntimeError:
        raise ValueError(f"bounds of shapes {tuple(lo.shape)} and {tuple(hi.shape)} do not broadcast "
                         f"to one input of shape {tuple(x.shape[1:])}") from None
    if bool((lo > hi).any()):
        raise ValueError("bounds: lo must not exceed hi")
    if x.numel() and bool(((x < lo) | (x > hi)).any()):
        raise ValueError(f"inputs lie outside bounds; {attack} with bounds needs clean inputs inside the box")
    return lo, hi


@torch.no_grad()
def bisect_to_boundary(model: nn.Module, x0: torch.Tensor, x_adv: torch.Tensor, labels: torch.Tensor,
                       success: torch.Tensor, steps: int, tolerance: torch.Tensor | None = None) -> torch.Tensor:
    r"""Per sample, the smallest :math:`t \in (0, 1]` found by bisection with :math:`x_0 + t (x_{adv} - x_0)`
    not predicted ``labels``.

    After ``steps`` halvings :math:`x_0 + t (x_{adv} - x_0)` is misclassified (it was evaluated) and
    :math:`x_0 + (t - 2^{-\text{steps}})(x_{adv} - x_0)` is not. Rows where ``success`` is False keep
    :math:`t = 1`. One forward pass of the successful rows per halving. With ``tolerance`` (per sample),
    a point counts as misclassified only when its :func:`margin` is below ``-tolerance``.
    """
    direction = x_adv - x0
    hi = torch.ones(x0.shape[0], device=x0.device, dtype=x0.dtype)  # misclassified (where success)
    lo = torch.zeros_like(hi)  # classified as labels
    rows = success.nonzero().squeeze(1)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    for _ in range(steps if rows.numel() else 0):
        mid = (lo[rows] + hi[rows]) / 2
        logits = logits_of(model(x0[rows] + mid.view(shape) * direction[rows]))
        if tolerance is None:
            flipped = logits.argmax(dim=1) != labels[rows]
        else:
            flipped = margin(logits, labels[rows]) < -tolerance[rows]
        hi[rows] = torch.where(flipped, mid, hi[rows])
        lo[rows] = torch.where(flipped, lo[rows], mid)
    return hi


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""The logit margin :math:`f_y - \max_{j \ne y} f_j` of each row (negative: misclassified).

    Parameters
    ----------
    logits : Tensor, shape (N, K), K >= 2
    labels : Tensor of int, shape (N,)

    Returns
    -------
    Tensor, shape (N,)
        Differentiable with respect to ``logits``.
    """
    own = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], -math.inf)
    return own - others.max(dim=1).values


def summary_stat(values: torch.Tensor, fn) -> float:
    """``fn`` of ``values`` in float64, as a float; NaN when there are no values."""
    return float(fn(values.double())) if values.numel() else float("nan")


def distance_summary(prefix: str, norms: torch.Tensor, relative_norms: torch.Tensor, success: torch.Tensor,
                     median=torch.median) -> dict[str, float]:
    """The figures every attack reports: mean and median (by ``median``) of the norms and of the relative
    norms, and the success rate, under keys starting with ``prefix``; NaN when empty."""
    return {
        f"{prefix}mean_norm": summary_stat(norms, torch.mean),
        f"{prefix}median_norm": summary_stat(norms, median),
        f"{prefix}mean_relative_norm": summary_stat(relative_norms, torch.mean),
        f"{prefix}median_relative_norm": summary_stat(relative_norms, median),
        f"{prefix}success_rate": summary_stat(success, torch.mean),
    }


class AttackResult:
    """What the per-sample results of the attacks share: their length and their flat summary.

    A subclass is a dataclass with the tensors ``norms``, ``relative_norms`` and ``success`` of shape
    (N,); it names the prefix of its summary keys in :attr:`summary_prefix`, the median its summary takes
    in :attr:`summary_median`, and adds its own figures in :meth:`_extra_summary`.
    """

    #: Prepended to every summary key by default.
    summary_prefix: ClassVar[str]
    #: The median of the summary (``torch.median``: the lower of the two middle values).
    summary_median: ClassVar[Callable[[torch.Tensor], torch.Tensor]] = staticmethod(torch.median)

    def __len__(self) -> int:
        return int(self.norms.shape[0])

    def summary(self, prefix: str | None = None) -> dict[str, float]:
        """Flat ``name -> float`` summary over all samples, the unsuccessful ones included.

        Parameters
        ----------
        prefix : str, optional
            Prepended to every key; default :attr:`summary_prefix` (``"deepfool_"``, ``"fmn_"``).

        Returns
        -------
        dict
            ``mean_norm``, ``median_norm``, ``mean_relative_norm``, ``median_relative_norm`` and
            ``success_rate`` (NaN when empty), then the figures of the attack (see its result class).
        """
        prefix = self.summary_prefix if prefix is None else prefix
        summary = distance_summary(prefix, self.norms, self.relative_norms, self.success,
                                   median=type(self).summary_median)
        summary.update(self._extra_summary(prefix))
        return summary

    def _extra_summary(self, prefix: str) -> dict[str, float]:
        """The attack's own summary figures, under keys starting with ``prefix``."""
        return {}


def add_rule(registry: dict, key: Any, rule: Callable, *, replace: bool, describe: Callable[[Any], str]) -> Callable:
    """Put ``rule`` into ``registry`` under ``key`` (the one writer of both Lipschitz rule registries).

    Parameters
    ----------
    registry : dict
        The function rules (``FUNCTION_RULES``) or the module rules (``LIPSCHITZ_RULES``).
    key
        What the rule covers.
    rule : callable
    replace : bool
        Allow replacing another rule already registered under ``key``.
    describe : callable
        Names ``key`` in the error message.

    Returns
    -------
    callable
        ``rule``.

    Raises
    ------
    TypeError
        ``rule`` is not callable.
    ValueError
        Another rule is registered under ``key`` and ``replace`` is False.
    """
    if not callable(rule):
        raise TypeError(f"a Lipschitz rule must be callable, got {type(rule).__name__}")
    if key in registry and not replace and registry[key] is not rule:
        raise ValueError(f"a Lipschitz rule for {describe(key)} is already registered; "
                         "pass replace=True to override it")
    registry[key] = rule
    return rule
