r"""Batched Fast Minimum-Norm L2 attack (Pintor et al., NeurIPS 2021): minimal adversarial perturbations.

For one input :math:`x_0` with logits :math:`f(x)` and label :math:`y` (the model's own prediction
:math:`\arg\max_k f_k(x_0)` unless labels are given), the attack minimises :math:`\lVert\delta\rVert_2`
subject to :math:`\arg\max_k f_k(x_0 + \delta) \ne y` through the logit margin

.. math::

    L(x) = f_y(x) - \max_{j \ne y} f_j(x) \qquad (x \text{ is adversarial when the prediction leaves } y,
    \text{ i.e. } L(x) < 0 \text{ up to ties}),

a point counting as adversarial only when :math:`L < -\tau \max_k |f_k(x_0)|` (``tolerance`` :math:`\tau`,
so that rounding cannot flip it back).

Starting from :math:`\delta_0 = 0` and no norm constraint (:math:`\varepsilon_0 = \infty`), step
:math:`k = 0, \dots, K-1` evaluates the current point :math:`x_k = x_0 + \delta_k` and its gradient
:math:`g_k = \nabla_x L(x_k)`, keeps the shortest adversarial point seen (:math:`\delta^*`), adapts the
radius of the constraint,

.. math::

    \varepsilon_{k+1} =
    \begin{cases}
      \min\big(\varepsilon_k (1 - \gamma_k),\ \lVert\delta^*\rVert\big) & x_k \text{ adversarial},\\
      \varepsilon_k (1 + \gamma_k) & \text{not, but an adversarial point was seen before},\\
      \lVert\delta_k\rVert + |L(x_k)| / \lVert g_k\rVert & \text{no adversarial point yet (the linearised
      distance to the boundary)},
    \end{cases}

and takes a normalised gradient step on the margin, projected onto the ball of radius
:math:`\varepsilon_{k+1}` (and clipped into the box when ``bounds`` are given):

.. math::

    \delta_{k+1} = \Pi_{\varepsilon_{k+1}}\!\Big(\delta_k - \alpha_k \frac{g_k}{\lVert g_k\rVert}\Big),
    \qquad \Pi_\varepsilon(\delta) = \delta \min\Big(1, \frac{\varepsilon}{\lVert\delta\rVert}\Big).

So the constraint shrinks while the iterate is adversarial and grows again when it is not: the iterate
walks along the decision boundary towards shorter perturbations, unlike DeepFool, which stops at the first
point past it. Both step sizes follow a cosine annealing from their initial to their final value,
:math:`h_k = h_K + (h_0 - h_K)(1 + \cos(\pi k / K)) / 2`, for :math:`\alpha` (final :math:`\alpha_0 / 100`
unless given) and :math:`\gamma` (0.05 to 0.001, the paper's). This is Algorithm 1 of the paper
(``arXiv:2102.12827``) for the L2 norm.

Step size: the paper's :math:`\alpha_0 = 1` is in the units of images in :math:`[0, 1]`. The inputs here are
normalised and their scale differs between datasets, so by default (``step_size=None``) every sample starts
with its own :math:`\alpha_0 = |L(x_0)| / \lVert g_0\rVert`, the linearised distance to the boundary: the
first step lands on DeepFool's first estimate of it (without overshoot) and later steps are fractions of
that length. A float ``step_size`` is used as :math:`\alpha_0` for every sample, in input units (the
paper's choice, and foolbox's ``L2FMNAttack(max_stepsize=...)``).

Starting points (``init``): the iteration is local, it follows the boundary of the runner-up class nearest
in its walk. The paper starts from :math:`\delta_0 = 0` (``init="zero"``); it may also start from an
adversarial point :math:`x_1`, first moved to the boundary on the segment :math:`[x_0, x_1]` by bisection
(20 halvings; foolbox's ``starting_points`` do the same with 10). ``init="deepfool"`` starts from DeepFool's point
(:func:`~lpc_geom.analysis.robustness.deepfool`, which compares the linearised boundaries of the top 10
classes); the default ``init="both"`` runs the attack from both starts in one batch and keeps, per sample,
the shorter result, so that it is never longer than either (up to the tolerance), and in particular never
longer than DeepFool's refined distance.

Refinement (``refine_steps > 0``): the shortest adversarial point found is moved back along the segment
from :math:`x_0` by bisection (as DeepFool's refinement, :func:`~lpc_geom.analysis.robustness.deepfool`),
to the first point on it that the model still misclassifies; it never lengthens the perturbation.

Success: every returned point is evaluated once more after the attack; a sample succeeds when that
evaluation is misclassified. Unsuccessful samples carry no perturbation: their norms are ``inf``, their
perturbations and adversarial points NaN, and :attr:`FMNResult.reasons` says why. Samples the model
already misclassifies at :math:`x_0` (possible only with given labels) succeed with distance 0.

Batching: the per-sample updates are independent, so a batch advances together with one forward and one
backward pass per step, with respect to the inputs only (the parameters' ``.grad`` are never touched).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lpc_geom.analysis.robustness import _common as shared
from lpc_geom.analysis.robustness._common import AttackResult, Bound
from lpc_geom.analysis.robustness.deepfool import attack_docs, deepfool

__all__ = ["FMNResult", "fmn"]

#: Why a sample has no adversarial point (:attr:`FMNResult.reasons`; the empty string for a success).
REASON_ZERO_GRADIENT = "the margin's gradient vanishes at the input: the attack cannot move"
REASON_NOT_FOUND = "no misclassified point found within the steps (more steps, a larger step size or bounds?)"
REASON_NOT_VERIFIED = "the best point found was not misclassified when evaluated again"

#: The ``init`` choices of :func:`fmn`.
INITS = ("both", "zero", "deepfool")

# Bisection halvings from a starting point to the boundary on its segment: a starting point from DeepFool
# ends within 2^-20 of the segment's length from the crossing (DeepFool's refined point, with the tolerance).
_WARM_START_HALVINGS = 20


@dataclass
class FMNResult(AttackResult):
    """Per-sample outcome of :func:`fmn` (all tensors on the CPU).

    Attributes
    ----------
    norms : Tensor, float, shape (N,)
        :math:`\\lVert\\delta^*\\rVert_2`, the L2 norm of the returned perturbation; ``inf`` where the attack
        failed (no misclassified point: the minimal distance is not bounded by this attack).
    relative_norms : Tensor, float, shape (N,)
        :math:`\\lVert\\delta^*\\rVert_2 / \\lVert x_0\\rVert_2` (``inf`` where the attack failed, ``inf`` or
        ``nan`` for an all-zero input).
    success : Tensor, bool, shape (N,)
        Whether the returned point :math:`x_0 + \\delta^*` was evaluated as misclassified.
    labels : Tensor, int64, shape (N,)
        The label the attack moves away from: the model's prediction on :math:`x_0`, or the given labels.
    adversarial_labels : Tensor, int64, shape (N,)
        The model's prediction on the returned point; -1 where the attack failed (there is no point).
    reasons : tuple of str, length N
        Empty for a success; otherwise why the sample failed (one of the module's ``REASON_*`` texts).
    refine_scales : Tensor, float, shape (N,), or None
        The fraction of the attack's best perturbation that the refinement kept (1 without gain; NaN where
        the attack failed; ``None`` unless ``refine_steps > 0``).
    perturbations : Tensor, shape (N, *input_shape), or None
        :math:`\\delta^*` (NaN rows where the attack failed; ``None`` when ``return_perturbations=False``).
    adversarial : Tensor, shape (N, *input_shape), or None
        The returned points :math:`x_0 + \\delta^*` exactly as the model evaluated them (NaN rows where the
        attack failed). Evaluate these rather than ``inputs + perturbations``, which can differ by rounding.

    Notes
    -----
    :meth:`~lpc_geom.analysis.robustness._common.AttackResult.summary` reports the shared figures under
    the prefix ``"fmn_"``, with the usual median (the mean of the two middle values). An unsuccessful
    sample counts as ``inf`` (no upper bound on its distance), so the means are ``inf`` as soon as one
    sample is not fooled; the medians stay finite while more than half are.
    """

    norms: torch.Tensor
    relative_norms: torch.Tensor
    success: torch.Tensor
    labels: torch.Tensor
    adversarial_labels: torch.Tensor
    reasons: tuple[str, ...]
    refine_scales: torch.Tensor | None = None
    perturbations: torch.Tensor | None = None
    adversarial: torch.Tensor | None = None

    summary_prefix: ClassVar[str] = "fmn_"
    # torch.median returns the lower of the two middle values; the usual median averages them.
    summary_median: ClassVar[Callable[[torch.Tensor], torch.Tensor]] = staticmethod(
        lambda t: torch.quantile(t, 0.5) if t.numel() else t.new_tensor(math.nan))


@attack_docs
def fmn(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None, *, steps: int = 100,
        step_size: float | None = None, final_step_size: float | None = None, gamma: float = 0.05,
        final_gamma: float = 0.001, batch_size: int = 512, bounds: tuple[Bound, Bound] | None = None,
        refine_steps: int = 10, tolerance: float = 1e-5, init: str | torch.Tensor = "both",
        return_perturbations: bool = True, deepfool_points: torch.Tensor | None = None) -> FMNResult:
    r"""Minimal L2 adversarial perturbations by the Fast Minimum-Norm attack (batched).

    See the module docstring for the iteration. The model runs in eval mode (batch norm uses its running
    statistics, so each sample is attacked independently of its batch) and every submodule's train/eval
    flag is restored afterwards; the parameters' gradients are neither computed into ``.grad`` nor modified.

    Parameters
    ----------
    ${model}
    inputs : Tensor, shape (N, *input_shape)
        Clean inputs :math:`x_0`, in the space the model reads (normalised). Nothing is clipped unless
        ``bounds`` are given.
    labels : Tensor of int, shape (N,), optional
        The labels to move away from; default: the model's own prediction on ``inputs`` (what
        :func:`~lpc_geom.analysis.robustness.deepfool` does). Samples already misclassified succeed at
        distance 0.
    steps : int, default 100
        Steps :math:`K` (one forward and one backward pass of the batch each).
    step_size : float, optional
        Initial gradient step :math:`\alpha_0` in input units for every sample; default: per sample, the
        linearised distance to the boundary at :math:`x_0` (module docstring).
    final_step_size : float, optional
        :math:`\alpha_K`; default :math:`\alpha_0 / 100`.
    gamma, final_gamma : float, default 0.05 and 0.001
        Initial and final relative change :math:`\gamma` of the radius per step, in (0, 1).
    batch_size : int, default 512
        Samples attacked together.
    bounds : (lo, hi), optional
        Box constraint :math:`lo \le x_0 + \delta \le hi` (floats, or tensors broadcastable to one input);
        ``inputs`` must lie inside. Without it (the default) the inputs are unconstrained, as for DeepFool's
        figure of the LPC paper.
    refine_steps : int, default 10
        Bisection halvings shortening the best point along its segment from :math:`x_0` (0: none).
    tolerance : float, default 1e-5
        A point counts as adversarial (during the attack and the refinement) only when its margin
        :math:`L` is below :math:`-\tau \max_k |f_k(x_0)|`, ``tolerance`` :math:`\tau` times the scale of
        the clean logits. The shortest points lie within rounding of the boundary, where another batch
        composition or device can flip the prediction; the tolerance keeps them misclassified at a cost
        in distance of about :math:`\tau \max_k |f_k| / \lVert\nabla L\rVert`. 0 counts every
        misclassified point (foolbox's criterion).
    init : {"both", "zero", "deepfool"} or Tensor, default "both"
        Where the attack starts (module docstring): from 0 (the paper), from DeepFool's adversarial point
        (run with its defaults, and ``bounds``), from both (twice the rows per batch; the shorter result of
        each sample is kept), or from given starting points of the shape of ``inputs`` (rows that are not
        finite or not misclassified start from 0).
    return_perturbations : bool, default True
        Keep the perturbations and adversarial points (two tensors the size of ``inputs``).
    deepfool_points : Tensor, optional
        DeepFool's adversarial points of ``inputs`` (``deepfool(model, inputs, batch_size=batch_size,
        bounds=bounds).adversarial``, any ``refine_steps``), for ``init`` ``"deepfool"`` and ``"both"``: a
        caller that has already run that DeepFool passes them instead of paying for it again. Ignored for
        the other ``init`` values.

    Returns
    -------
    FMNResult

    Raises
    ------
    ValueError
        For ``steps < 1``, ``batch_size < 1``, a step size that is not positive and finite, ``gamma`` or
        ``final_gamma`` outside (0, 1), a negative or non-integer ``refine_steps``, labels of the wrong shape
        or outside the classes, fewer than 2 classes, an unknown ``init`` or starting points of another shape,
        or (with ``bounds``) ``lo > hi`` somewhere or inputs outside the box.
    """
    _check_int("steps", steps, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("refine_steps", refine_steps, 0)
    for name, value in (("step_size", step_size), ("final_step_size", final_step_size)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number or None, got {value!r}")
    for name, value in (("gamma", gamma), ("final_gamma", final_gamma)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
        raise ValueError(f"tolerance must be a number in [0, 1), got {tolerance!r}")
    x_all = shared.as_model_input(inputs, model)
    n = x_all.shape[0]
    if labels is not None:
        labels = torch.as_tensor(labels, device=x_all.device)
        if labels.shape != (n,) or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} {tuple(labels.shape)}")
        labels = labels.long()
    box = shared.prepare_bounds(bounds, x_all, "FMN")
    starts = _starting_points(model, x_all, init, batch_size, bounds, deepfool_points)
    options = {"steps": steps, "step_size": step_size, "final_step_size": final_step_size, "gamma": float(gamma),
               "final_gamma": float(final_gamma), "box": box, "refine_steps": refine_steps,
               "tolerance": float(tolerance), "keep": return_perturbations}
    parts: list[dict] = []
    with shared.evaluation_mode(model), torch.enable_grad():
        for first in range(0, n, batch_size):
            rows = slice(first, first + batch_size)
            x0 = x_all[rows]
            given = None if labels is None else labels[rows]
            if len(starts) == 1:
                parts.append(_fmn_batch(model, x0, given, None if starts[0] is None else starts[0][rows], **options))
                continue
            # Several starts: one batch of copies, then the shortest success of each sample.
            copies = len(starts)
            start = torch.cat([torch.full_like(x0, math.nan) if s is None else s[rows] for s in starts])
            run = _fmn_batch(model, x0.repeat((copies,) + (1,) * (x0.dim() - 1)),
                             None if given is None else given.repeat(copies), start, **options)
            parts.append(_shortest_of(run, copies))
    if not parts:
        empty = x_all.new_zeros(0).cpu()
        idx = torch.zeros(0, dtype=torch.int64)
        return FMNResult(empty, empty.clone(), idx.bool(), idx, idx.clone(), (),
                         empty.clone() if refine_steps else None,
                         x_all.cpu() if return_perturbations else None,
                         x_all.cpu().clone() if return_perturbations else None)
    cat = {key: torch.cat([p[key] for p in parts]) for key in parts[0] if key != "reasons"}
    return FMNResult(reasons=tuple(r for p in parts for r in p["reasons"]), **cat)


def _starting_points(model: nn.Module, x0: torch.Tensor, init: str | torch.Tensor, batch_size: int,
                     bounds: tuple[Bound, Bound] | None,
                     deepfool_points: torch.Tensor | None = None) -> list[torch.Tensor | None]:
    """The starting points of each run (None: from 0) that ``init`` asks for."""
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(map(repr, INITS))} or a tensor of starting points, "
                             f"got {init!r}")
        if init == "zero":
            deepfool_points = None
        elif deepfool_points is None:
            deepfool_points = deepfool(model, x0, batch_size=batch_size, bounds=bounds).adversarial.to(x0.device)
        else:
            deepfool_points = torch.as_tensor(deepfool_points).detach().to(device=x0.device, dtype=x0.dtype)
            if deepfool_points.shape != x0.shape:
                raise ValueError(f"deepfool_points must have the shape of inputs {tuple(x0.shape)}, "
                                 f"got {tuple(deepfool_points.shape)}")
        return {"zero": [None], "deepfool": [deepfool_points], "both": [None, deepfool_points]}[init]
    starts = torch.as_tensor(init).detach().to(device=x0.device, dtype=x0.dtype)
    if starts.shape != x0.shape:
        raise ValueError(f"starting points must have the shape of inputs {tuple(x0.shape)}, got {tuple(starts.shape)}")
    return [starts]


def _shortest_of(run: dict, copies: int) -> dict:
    """Per sample, the copy of ``run`` (``copies`` stacked blocks of rows) with the smallest norm."""
    n = run["norms"].shape[0] // copies
    norms = run["norms"].view(copies, n)
    # Failures have norm inf; among equal norms the first copy wins.
    pick = norms.argmin(dim=0) * n + torch.arange(n)
    out = {key: value[pick] for key, value in run.items() if key != "reasons"}
    out["reasons"] = tuple(run["reasons"][i] for i in pick.tolist())
    return out


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _cosine(start: float | torch.Tensor, end: float | torch.Tensor, k: int, steps: int):
    return end + (start - end) * (1 + math.cos(math.pi * k / steps)) / 2


def _fmn_batch(model: nn.Module, x0: torch.Tensor, given: torch.Tensor | None, start: torch.Tensor | None, *,
               steps: int, step_size: float | None, final_step_size: float | None, gamma: float,
               final_gamma: float, box: tuple[torch.Tensor, torch.Tensor] | None, refine_steps: int,
               tolerance: float, keep: bool) -> dict:
    n = x0.shape[0]
    shape = (-1,) + (1,) * (x0.dim() - 1)
    tiny = torch.finfo(x0.dtype).tiny
    x = x0.clone().requires_grad_(True)
    clean_logits = shared.logits_of(model(x))
    if clean_logits.shape[1] < 2:
        raise ValueError(f"FMN needs at least 2 classes, the model returns {clean_logits.shape[1]}")
    if given is not None and bool(((given < 0) | (given >= clean_logits.shape[1])).any()):
        raise ValueError(f"labels must lie in [0, {clean_logits.shape[1]}), got values outside")
    labels = clean_logits.detach().argmax(dim=1) if given is None else given
    # A point counts as adversarial only when its margin is below -tol, so that rounding differences
    # (another batch, another device) cannot put it back on the label's side.
    tol = tolerance * clean_logits.detach().abs().amax(dim=1)
    gap0 = shared.margin(clean_logits, labels)
    (grad0,) = torch.autograd.grad(gap0.sum(), x)
    grad0_norm = grad0.flatten(1).norm(dim=1)
    zero_gradient = (gap0.detach() >= -tol) & (grad0_norm == 0)
    if step_size is None:  # the linearised distance to the boundary at x0
        alpha0 = torch.where(grad0_norm > 0, gap0.detach().abs() / grad0_norm.clamp_min(tiny), 0.0)
    else:
        alpha0 = torch.full((n,), float(step_size), device=x0.device, dtype=x0.dtype)
    alpha_end = alpha0 / 100 if final_step_size is None else torch.full_like(alpha0, final_step_size)

    inf = torch.full((n,), math.inf, device=x0.device, dtype=x0.dtype)
    # The largest perturbation the box allows: a cap on the radius (none without a box).
    worst = inf if box is None else torch.maximum(x0 - box[0], box[1] - x0).flatten(1).norm(dim=1)
    delta = torch.zeros_like(x0) if start is None else _warm_start(model, x0, start, labels, tol, box)
    radius = inf.clone()
    best_norm = inf.clone()
    best_x = torch.full_like(x0, math.nan)
    found = torch.zeros(n, dtype=torch.bool, device=x0.device)

    for k in range(steps):
        x = (x0 + delta).requires_grad_(True)
        gap = shared.margin(shared.logits_of(model(x)), labels)
        (grad,) = torch.autograd.grad(gap.sum(), x)
        gap = gap.detach()
        adversarial = gap < -tol
        norm = delta.flatten(1).norm(dim=1)
        better = adversarial & (norm < best_norm)
        best_norm = torch.where(better, norm, best_norm)
        best_x[better] = x.detach()[better]
        found |= adversarial
        grad_norm = grad.flatten(1).norm(dim=1)

        g = _cosine(gamma, final_gamma, k, steps)
        to_boundary = norm + gap.abs() / grad_norm.clamp_min(tiny)
        radius = torch.where(adversarial, torch.minimum(radius * (1 - g), best_norm),
                             torch.where(found, radius * (1 + g), to_boundary))
        radius = torch.minimum(radius, worst)

        alpha = _cosine(alpha0, alpha_end, k, steps)
        delta = delta - (alpha / grad_norm.clamp_min(tiny)).view(shape) * grad
        length = delta.flatten(1).norm(dim=1)
        delta = delta * torch.clamp(radius / length.clamp_min(tiny), max=1.0).view(shape)
        if box is not None:
            delta = torch.clamp(x0 + delta, box[0], box[1]) - x0

    out: dict = {}
    if refine_steps:
        # Rows at distance 0 (misclassified inputs) have no segment to shorten.
        segment = found & (best_norm > 0)
        t = shared.bisect_to_boundary(model, x0, torch.where(segment.view(shape), best_x, x0), labels, segment,
                                      refine_steps, tol)
        moved = segment & (t < 1)
        best_x[moved] = x0[moved] + t[moved].view(shape) * (best_x[moved] - x0[moved])
    with torch.no_grad():  # the whole batch, as in the attack's own evaluations
        final_pred = shared.logits_of(model(torch.where(found.view(shape), best_x, x0))).argmax(dim=1)
    success = found & (final_pred != labels)
    best_x[~success] = math.nan
    final_pred[~success] = -1
    pert = best_x - x0
    norms = torch.where(success, pert.flatten(1).norm(dim=1), math.inf)
    reasons = tuple("" if ok else REASON_ZERO_GRADIENT if zero else REASON_NOT_VERIFIED if seen
                    else REASON_NOT_FOUND
                    for ok, zero, seen in zip(success.tolist(), zero_gradient.tolist(), found.tolist(), strict=True))
    if refine_steps:
        out["refine_scales"] = torch.where(success, t, math.nan)
    out.update({
        "norms": norms,
        "relative_norms": norms / x0.flatten(1).norm(dim=1),
        "success": success,
        "labels": labels,
        "adversarial_labels": final_pred,
    })
    if keep:
        out["perturbations"] = pert
        out["adversarial"] = best_x
    out = {key: value.detach().cpu() for key, value in out.items()}
    out["reasons"] = reasons
    return out


@torch.no_grad()
def _warm_start(model: nn.Module, x0: torch.Tensor, start: torch.Tensor, labels: torch.Tensor, tol: torch.Tensor,
                box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """The first perturbation from given starting points: the boundary on the segment to each adversarial one.

    Rows whose starting point is not finite or not misclassified by more than the tolerance start at 0.
    """
    shape = (-1,) + (1,) * (x0.dim() - 1)
    finite = torch.isfinite(start.flatten(1)).all(dim=1)
    start = torch.where(finite.view(shape), start, x0)
    if box is not None:
        start = torch.clamp(start, box[0], box[1])
    usable = finite & (shared.margin(shared.logits_of(model(start)), labels) < -tol)
    t = shared.bisect_to_boundary(model, x0, start, labels, usable, _WARM_START_HALVINGS, tol)
    return torch.where(usable.view(shape), t.view(shape) * (start - x0), torch.zeros_like(x0))
