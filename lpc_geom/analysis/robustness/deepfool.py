r"""Batched DeepFool (Moosavi-Dezfooli et al. 2016), with the semantics the LPC paper measured.

For one input :math:`x_0` with logits :math:`f(x)`, let :math:`\hat k = \arg\max_k f_k(x_0)` (the model's
own prediction, not the true label) and :math:`c_1 = \hat k, c_2, \dots, c_C` the ``C`` classes with the
largest initial logits. Starting from :math:`r_{\text{tot}} = 0`, iteration :math:`i` linearises the
candidate decision boundaries at the current point :math:`x_i = x_0 + (1 + \eta)\, r_{\text{tot}}`,

.. math::

    w_k = \nabla_x f_{c_k}(x_i) - \nabla_x f_{c_1}(x_i), \qquad
    f'_k = f_{c_k}(x_i) - f_{c_1}(x_i), \qquad
    \ell = \arg\min_{k \ge 2} \frac{|f'_k|}{\lVert w_k \rVert_2},

steps to the nearest one (with a :math:`10^{-4}` push past it),

.. math::

    r_i = \Big(\frac{|f'_\ell|}{\lVert w_\ell\rVert_2} + 10^{-4}\Big) \frac{w_\ell}{\lVert w_\ell\rVert_2},
    \qquad r_{\text{tot}} \leftarrow r_{\text{tot}} + r_i,

and stops as soon as :math:`\arg\max_k f_k(x_0 + (1 + \eta) r_{\text{tot}}) \ne \hat k` or after
``max_iter`` iterations. The returned perturbation is :math:`r = (1 + \eta)\, r_{\text{tot}}` (the
overshoot :math:`\eta` multiplies the *cumulative* step) and the robustness figure is
:math:`\lVert r\rVert_2 / \lVert x_0\rVert_2`, averaged over samples. Nothing is clipped: the inputs live
in the model's (normalised) input space. These are the semantics of the reference implementation of
Moosavi-Dezfooli et al. (``LTS4/DeepFool``), the figure the LPC paper reports, applied to many samples at
once. Note the step length: the push :math:`10^{-4}` is added to the *distance*
:math:`|f'_\ell|/\lVert w_\ell\rVert`, not to :math:`|f'_\ell|`.

Refinement (``refine_steps > 0``): DeepFool's linear steps can land far past the boundary when the
logits are flat near :math:`x_0` and bend further out (its iterations rarely exceed one or two then). The
refinement bisects the segment from :math:`x_0` to the adversarial point :math:`x_0 + r` for the smallest
fraction :math:`t \in (0, 1]` at which the prediction still differs from :math:`\hat k`: after ``refine_steps``
halvings :math:`x_0 + t r` is misclassified and :math:`x_0 + (t - 2^{-\text{steps}}) r` is not (the first
crossing when the segment crosses one boundary). :math:`\lVert t r\rVert` is a valid adversarial
perturbation no longer than DeepFool's, so its mean relative norm bounds the minimal distance more tightly;
:math:`1 / t` is DeepFool's overshoot factor. Unsuccessful samples keep :math:`t = 1`.

Batching: the per-sample updates are independent, so a whole batch advances together. Each iteration
does one forward pass and ``C - 1`` backward passes (one per candidate class, over the whole batch), and
only the samples not yet fooled stay in the batch. Gradients are taken with :func:`torch.autograd.grad`
with respect to the inputs only, so the parameters' ``.grad`` are never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from string import Template
from typing import ClassVar, TypeVar

import torch
from torch import nn

from lpc_geom.analysis.robustness._common import (
    AttackResult,
    Bound,
    as_model_input,
    bisect_to_boundary,
    evaluation_mode,
    logits_of,
    prepare_bounds,
    summary_stat,
)

__all__ = ["DeepFoolResult", "deepfool"]

F = TypeVar("F", bound=Callable)

# The ``model`` entry of the minimal-perturbation attacks' parameter lists (deepfool, fmn), substituted
# for ``${model}`` by :func:`attack_docs`.
_MODEL_DOC = """model : nn.Module
        Returns logits of shape (N, K) or an object with ``.logits`` (e.g. a
        :class:`~lpc_geom.models.base.HeadOutput`). Runs on the device and in the dtype of its
        parameters; ``inputs`` are moved there."""


def attack_docs(fn: F) -> F:
    """Substitute the shared ``${model}`` entry into ``fn.__doc__`` (an unknown ``${name}`` raises ``KeyError``)."""
    fn.__doc__ = Template(fn.__doc__).substitute(model=_MODEL_DOC)
    return fn


# The push past the linearised boundary of the reference implementation.
_STEP_PUSH = 1e-4


@dataclass
class DeepFoolResult(AttackResult):
    """Per-sample outcome of :func:`deepfool` (all tensors on the CPU).

    Attributes
    ----------
    norms : Tensor, float, shape (N,)
        :math:`\\lVert r\\rVert_2`, the L2 norm of the returned perturbation.
    relative_norms : Tensor, float, shape (N,)
        :math:`\\lVert r\\rVert_2 / \\lVert x_0\\rVert_2` (``inf`` or ``nan`` for an all-zero input).
    iterations : Tensor, int64, shape (N,)
        DeepFool iterations the sample took (at most ``max_iter``).
    success : Tensor, bool, shape (N,)
        Whether ``x_0 + r`` is classified differently from ``x_0``. Samples that fail keep the
        perturbation reached at the last iteration; with ``bounds`` this happens when the box stops the
        walk, without it only when ``max_iter`` is too small or the logits' gradients vanish.
    labels : Tensor, int64, shape (N,)
        The model's prediction on ``x_0`` (the label DeepFool moves away from).
    adversarial_labels : Tensor, int64, shape (N,)
        The model's prediction on the final ``x_0 + r``.
    refined_norms, refined_relative_norms : Tensor, float, shape (N,), or None
        :math:`t \\lVert r\\rVert_2` and :math:`t \\lVert r\\rVert_2 / \\lVert x_0\\rVert_2` with ``refine_scales``
        :math:`t` (``None`` unless ``refine_steps > 0``).
    refine_scales : Tensor, float, shape (N,), or None
        The fraction :math:`t \\in (0, 1]` of the perturbation found by bisection (module docstring); 1 for
        unsuccessful samples.
    perturbations : Tensor, shape (N, *input_shape), or None
        The perturbations :math:`r` (``None`` when ``return_perturbations=False``).
    adversarial : Tensor, shape (N, *input_shape), or None
        The perturbed inputs :math:`x_0 + r`, clipped into ``bounds`` when given (``None`` when
        ``return_perturbations=False``). Use these rather than ``inputs + perturbations`` to evaluate the
        model: the sum can differ from them by rounding and, with ``bounds``, leave the box by an ulp.

    Notes
    -----
    :meth:`~lpc_geom.analysis.robustness._common.AttackResult.summary` reports, under the prefix
    ``"deepfool_"``, the shared figures (``mean_relative_norm`` is the paper's robustness figure), then
    ``mean_iterations`` and, with a refinement, ``refined_mean_relative_norm``,
    ``refined_median_relative_norm`` and ``median_refine_scale``.
    """

    norms: torch.Tensor
    relative_norms: torch.Tensor
    iterations: torch.Tensor
    success: torch.Tensor
    labels: torch.Tensor
    adversarial_labels: torch.Tensor
    perturbations: torch.Tensor | None = None
    adversarial: torch.Tensor | None = None
    refined_norms: torch.Tensor | None = None
    refined_relative_norms: torch.Tensor | None = None
    refine_scales: torch.Tensor | None = None

    summary_prefix: ClassVar[str] = "deepfool_"

    def _extra_summary(self, prefix: str) -> dict[str, float]:
        extra = {f"{prefix}mean_iterations": summary_stat(self.iterations, torch.mean)}
        if self.refine_scales is not None:
            extra[f"{prefix}refined_mean_relative_norm"] = summary_stat(self.refined_relative_norms, torch.mean)
            extra[f"{prefix}refined_median_relative_norm"] = summary_stat(self.refined_relative_norms, torch.median)
            extra[f"{prefix}median_refine_scale"] = summary_stat(self.refine_scales, torch.median)
        return extra


@attack_docs
def deepfool(model: nn.Module, inputs: torch.Tensor, *, candidates: int = 10, overshoot: float = 0.02,
             max_iter: int = 50, batch_size: int = 512,
             bounds: tuple[Bound, Bound] | None = None, refine_steps: int = 0,
             return_perturbations: bool = True) -> DeepFoolResult:
    r"""Minimal L2 perturbations that change a classifier's predictions (batched DeepFool).

    See the module docstring for the iteration. The model runs in eval mode (batch norm uses its running
    statistics, so each sample is processed independently of its batch) and every submodule's
    train/eval flag is restored afterwards; the parameters' gradients are neither computed into
    ``.grad`` nor modified.

    Parameters
    ----------
    ${model}
    inputs : Tensor, shape (N, *input_shape)
        Clean inputs :math:`x_0`, in the space the model reads (normalised, for the paper's figure).
    candidates : int, default 10
        Number ``C`` of classes considered, the top ``C`` by initial logit (the prediction included);
        capped at ``K``.
    overshoot : float, default 0.02
        :math:`\eta`; the evaluated point and the returned perturbation are :math:`(1+\eta) r_{tot}`.
    max_iter : int, default 50
        Iterations per sample at most.
    batch_size : int, default 512
        Samples processed together (memory: a few copies of a batch of inputs and one autograd graph).
    bounds : (lo, hi), optional
        Box constraint :math:`lo \le x_0 + r \le hi` (floats, or tensors broadcastable to one input).
        After every step :math:`x_0 + (1+\eta) r_{tot}` is clipped into the box (and :math:`r_{tot}`
        replaced by the clipped step, so the walk continues from the clipped point). This measures a
        *different quantity* from the paper's figure: the distance to the boundary within the box,
        which DeepFool's linear steps may fail to reach (``success`` is then False); the default, no
        clipping, is what the LPC paper reports. ``inputs`` must lie inside the box.
    refine_steps : int, default 0
        Bisection halvings of the refinement (module docstring; one forward pass of the batch each);
        0 skips it, 20 resolves :math:`t` to :math:`10^{-6}`. The refined points stay in the box, which
        is convex. The returned perturbations are DeepFool's; the refined ones are
        ``refine_scales * perturbations`` (per sample).
    return_perturbations : bool, default True
        Keep the perturbations and perturbed inputs (two tensors the size of ``inputs``) in the result.

    Returns
    -------
    DeepFoolResult

    Raises
    ------
    ValueError
        For ``candidates < 2``, fewer than 2 classes, ``max_iter < 1``, ``batch_size < 1``, a negative
        ``overshoot`` or ``refine_steps``, or (with ``bounds``) ``lo > hi`` somewhere or inputs outside the box.

    Notes
    -----
    Samples whose candidate gradients all coincide (:math:`w_k = 0` for every ``k``, e.g. a saturated
    region) cannot move; they stop at once with ``success`` False.
    """
    if candidates < 2:
        raise ValueError(f"candidates must be at least 2, got {candidates}")
    if max_iter < 1 or batch_size < 1:
        raise ValueError(f"max_iter and batch_size must be positive, got {max_iter} and {batch_size}")
    if overshoot < 0:
        raise ValueError(f"overshoot must be non-negative, got {overshoot}")
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
        raise ValueError(f"refine_steps must be an integer >= 0, got {refine_steps!r}")
    x_all = as_model_input(inputs, model)
    box = prepare_bounds(bounds, x_all, "DeepFool")
    parts: list[dict[str, torch.Tensor]] = []
    with evaluation_mode(model), torch.enable_grad():
        for start in range(0, x_all.shape[0], batch_size):
            parts.append(_deepfool_batch(model, x_all[start:start + batch_size], candidates,
                                         float(overshoot), int(max_iter), box, refine_steps,
                                         return_perturbations))
    if not parts:
        empty = x_all.new_zeros(0).cpu()
        idx = torch.zeros(0, dtype=torch.int64)
        pert = x_all.cpu() if return_perturbations else None
        refined = {"refined_norms": empty.clone(), "refined_relative_norms": empty.clone(),
                   "refine_scales": empty.clone()} if refine_steps else {}
        return DeepFoolResult(empty, empty.clone(), idx, idx.bool(), idx, idx.clone(), pert,
                              None if pert is None else pert.clone(), **refined)
    cat = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    return DeepFoolResult(**cat)


def _deepfool_batch(model: nn.Module, x0: torch.Tensor, candidates: int, overshoot: float, max_iter: int,
                    box: tuple[torch.Tensor, torch.Tensor] | None, refine_steps: int,
                    keep: bool) -> dict[str, torch.Tensor]:
    n = x0.shape[0]
    scale = 1.0 + overshoot
    x = x0.clone().requires_grad_(True)
    logits = logits_of(model(x))
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"DeepFool needs at least 2 classes, the model returns {num_classes}")
    order = logits.detach().topk(min(candidates, num_classes), dim=1).indices  # (n, C)
    labels = order[:, 0].clone()

    r_tot = torch.zeros_like(x0)
    x_adv = x0.clone()
    iterations = torch.zeros(n, dtype=torch.int64, device=x0.device)
    adv_labels = labels.clone()
    active = torch.arange(n, device=x0.device)  # rows of the batch still iterating

    for _ in range(max_iter):
        # `x`, `logits` (with graph) hold the current point of every active sample.
        top = logits.gather(1, order[active])
        best_pert = torch.full((active.numel(),), float("inf"), device=x0.device, dtype=x0.dtype)
        best_w = torch.zeros_like(x)
        for k in range(1, top.shape[1]):
            diff = top[:, k] - top[:, 0]
            (w_k,) = torch.autograd.grad(diff.sum(), x, retain_graph=k < top.shape[1] - 1)
            # 0/0 (identical logits and gradients) gives nan and x/0 gives inf: neither is chosen.
            pert_k = diff.detach().abs() / w_k.flatten(1).norm(dim=1)
            better = pert_k < best_pert
            best_pert = torch.where(better, pert_k, best_pert)
            best_w[better] = w_k[better]
        w_norm = best_w.flatten(1).norm(dim=1)
        movable = torch.isfinite(best_pert) & (w_norm > 0)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        # Same operation order as the reference: ((pert + 1e-4) * w) / ||w||.
        step = (best_pert + _STEP_PUSH).view(shape) * best_w / w_norm.clamp_min(
            torch.finfo(x0.dtype).tiny).view(shape)
        step[~movable] = 0
        r_act = r_tot[active] + step
        point = x0[active] + scale * r_act
        if box is not None:
            point = torch.clamp(point, box[0], box[1])
            r_act = (point - x0[active]) / scale
        r_tot[active] = r_act
        x_adv[active] = point
        iterations[active] += 1

        x = point.detach().requires_grad_(True)
        logits = logits_of(model(x))
        pred = logits.detach().argmax(dim=1)
        adv_labels[active] = pred
        still = (pred == labels[active]) & movable
        if not bool(still.any()):
            break
        if not bool(still.all()):
            # Re-run the survivors alone so the next backward passes skip the finished samples.
            active = active[still]
            x = x_adv[active].detach().requires_grad_(True)
            logits = logits_of(model(x))

    pert = scale * r_tot
    norms = pert.flatten(1).norm(dim=1)
    x_norms = x0.flatten(1).norm(dim=1)
    success = adv_labels != labels
    out = {
        "norms": norms,
        "relative_norms": norms / x_norms,
        "iterations": iterations,
        "success": success,
        "labels": labels,
        "adversarial_labels": adv_labels,
    }
    if refine_steps:
        t = bisect_to_boundary(model, x0, x_adv, labels, success, refine_steps)
        out["refine_scales"] = t
        out["refined_norms"] = t * (x_adv - x0).flatten(1).norm(dim=1)
        out["refined_relative_norms"] = out["refined_norms"] / x_norms
    if keep:
        out["perturbations"] = pert
        out["adversarial"] = x_adv
    return {key: value.detach().cpu() for key, value in out.items()}
