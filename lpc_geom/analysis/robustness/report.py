"""One flat ``name -> float`` robustness record per model (DeepFool, FMN, Lipschitz bounds, certified radii).

:func:`robustness_report` is what a command line or a training loop calls on a test set (:func:`robustness_of`
on a seeded subsample of a dataset split);
:func:`write_robustness_json` / :func:`read_robustness_json` store it next to the other reports of a run
so that the records of many runs join into one table.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from lpc_geom.analysis.robustness._common import Bound
from lpc_geom.analysis.robustness.certify import certified_accuracy, logit_margins, radius_from_margins
from lpc_geom.analysis.robustness.deepfool import deepfool
from lpc_geom.analysis.robustness.fmn import fmn
from lpc_geom.analysis.robustness.lipschitz import (
    LipschitzRuleError,
    UnboundedLipschitzError,
    lipschitz_lower_bound,
    lipschitz_upper_bound,
)
from lpc_geom.models.fold import fold_batch_norms, folds_for_evaluation

__all__ = ["read_robustness_json", "robustness_of", "robustness_report", "write_robustness_json"]

#: DeepFool's default ``(candidates, overshoot, max_iter)``: the DeepFool that FMN's starting points come from.
_DEEPFOOL_DEFAULTS = tuple(inspect.signature(deepfool).parameters[name].default
                           for name in ("candidates", "overshoot", "max_iter"))


def robustness_report(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None, *,
                      candidates: int = 10, overshoot: float = 0.02, max_iter: int = 50,
                      batch_size: int = 512, bounds: tuple[Bound, Bound] | None = None,
                      refine_steps: int = 20, fmn_steps: int = 100, eps: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
                      lipschitz: bool = True, lower_bound_candidates: int | None = 10) -> dict[str, float]:
    r"""DeepFool and minimum-norm robustness, Lipschitz bounds and certified radii of a model on a set of inputs.

    Parameters
    ----------
    model : nn.Module
        Returns logits or an object with ``.logits``; evaluated in eval mode (flags restored), its
        parameters' ``.grad`` untouched.
    inputs : Tensor, shape (N, *input_shape)
        Test inputs, as the model reads them (normalised).
    labels : Tensor of int, shape (N,), optional
        True labels; enable the accuracy entries.
    candidates, overshoot, max_iter, batch_size, bounds
        Passed to :func:`~lpc_geom.analysis.robustness.deepfool.deepfool` (defaults: the paper's).
    refine_steps : int, default 20
        Bisection halvings of DeepFool's refinement (0: none); the paper's figure is unaffected.
    fmn_steps : int, default 100
        Steps of the Fast Minimum-Norm attack (:func:`~lpc_geom.analysis.robustness.fmn.fmn`, its defaults
        otherwise, ``bounds`` included; from 0 and from DeepFool's point); 0 skips it.
    eps : sequence of float, default (0.1, 0.25, 0.5, 1.0)
        L2 budgets for the accuracy-at-radius entries (in input units, not relative).
    lipschitz : bool, default True
        Compute the Lipschitz bounds and certified radii.
    lower_bound_candidates : int or None, default 10
        Classes in the Jacobian of the empirical lower bound (None: all).

    Returns
    -------
    dict of str -> float
        ``n_samples``; ``deepfool_mean_norm``, ``deepfool_median_norm``, ``deepfool_mean_relative_norm``
        (the paper's robustness figure, :math:`\mathrm{mean}_i \lVert r_i\rVert/\lVert x_i\rVert`),
        ``deepfool_median_relative_norm``, ``deepfool_success_rate``, ``deepfool_mean_iterations`` and
        the settings ``deepfool_candidates``, ``deepfool_overshoot``, ``deepfool_max_iter``,
        ``deepfool_bounded`` (0/1), ``deepfool_refine_steps``; with ``refine_steps``:
        ``deepfool_refined_mean_relative_norm`` and ``deepfool_refined_median_relative_norm`` (the
        shortest misclassified point on the segment to DeepFool's, a tighter upper bound on the minimal
        distance) and ``deepfool_median_refine_scale`` (their ratio to DeepFool's norms; well below 1
        when DeepFool's linear steps overshoot). With ``fmn_steps``: ``fmn_mean_norm``, ``fmn_median_norm``,
        ``fmn_mean_relative_norm``, ``fmn_median_relative_norm`` (the shortest adversarial perturbations
        found, the tightest upper bound on the minimal distance here; an unfooled sample counts as ``inf``),
        ``fmn_success_rate`` and the setting ``fmn_steps``. With ``lipschitz``: ``lipschitz_upper``
        (certified; ``inf`` for a model with no finite bound, e.g. a cosine head; NaN when a module or traced
        node has no rule, with a warning), ``lipschitz_lower`` (empirical), ``lipschitz_looseness`` (upper / lower),
        ``margin_mean``, ``certified_radius_mean``, ``certified_radius_median``. With ``labels``:
        ``accuracy``, and per budget ``e``: ``deepfool_accuracy@e`` (correct and not fooled by DeepFool
        within ``e``, an upper bound on the robust accuracy), with ``fmn_steps`` ``fmn_accuracy@e`` (the same
        for FMN, a tighter upper bound) and, with ``lipschitz``,
        ``certified_accuracy@e`` (a lower bound on it); ``e`` is formatted with ``%g``.
    """
    n = int(inputs.shape[0])
    report: dict[str, float] = {"n_samples": float(n)}
    # The attacks and the empirical figures evaluate the model with its batch norms folded (same outputs up to
    # float rounding, one pass less per forward and backward) unless it has hooks, which the folded copy would
    # not run; the certified bound keeps the model's own layers.
    attacked = fold_batch_norms(model) if folds_for_evaluation(model) else model
    # FMN starts from DeepFool with its defaults: when this DeepFool is that one, its points are reused.
    reuse = bool(fmn_steps) and (candidates, overshoot, max_iter) == _DEEPFOOL_DEFAULTS
    result = deepfool(attacked, inputs, candidates=candidates, overshoot=overshoot, max_iter=max_iter,
                      batch_size=batch_size, bounds=bounds, refine_steps=refine_steps,
                      return_perturbations=reuse)
    report.update(result.summary())
    report.update({"deepfool_candidates": float(candidates), "deepfool_overshoot": float(overshoot),
                   "deepfool_max_iter": float(max_iter), "deepfool_bounded": float(bounds is not None),
                   "deepfool_refine_steps": float(refine_steps)})
    if isinstance(fmn_steps, bool) or not isinstance(fmn_steps, int) or fmn_steps < 0:
        raise ValueError(f"fmn_steps must be an integer >= 0 (0: no FMN attack), got {fmn_steps!r}")
    minimum = None
    if fmn_steps:
        minimum = fmn(attacked, inputs, steps=fmn_steps, batch_size=batch_size, bounds=bounds,
                      return_perturbations=False, deepfool_points=result.adversarial if reuse else None)
        report.update(minimum.summary())
        report["fmn_steps"] = float(fmn_steps)
    correct = None
    eps = [float(e) for e in eps]
    if labels is not None:
        labels = torch.as_tensor(labels).cpu().long()
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        correct = result.labels == labels
        report["accuracy"] = float(correct.double().mean()) if n else math.nan
        for e in eps:
            fooled = result.success & (result.norms <= e)
            report[f"deepfool_accuracy@{e:g}"] = float((correct & ~fooled).double().mean()) if n else math.nan
            if minimum is not None:
                fooled = minimum.success & (minimum.norms <= e)
                report[f"fmn_accuracy@{e:g}"] = float((correct & ~fooled).double().mean()) if n else math.nan

    if lipschitz:
        try:
            upper = lipschitz_upper_bound(model, tuple(inputs.shape[1:])).value
        except UnboundedLipschitzError as err:
            warnings.warn(f"no finite Lipschitz bound: {err}", stacklevel=2)
            upper = math.inf
        except LipschitzRuleError as err:
            warnings.warn(f"Lipschitz upper bound not computed: {err}", stacklevel=2)
            upper = math.nan
        lower = lipschitz_lower_bound(attacked, inputs, candidates=lower_bound_candidates,
                                      batch_size=max(1, batch_size // 2)).value if n else math.nan
        margins, _ = logit_margins(attacked, inputs, batch_size=batch_size)
        report["lipschitz_upper"] = upper
        report["lipschitz_lower"] = lower
        report["lipschitz_looseness"] = upper / lower if lower > 0 else math.nan
        report["margin_mean"] = float(margins.double().mean()) if n else math.nan
        if math.isnan(upper) or n == 0:
            radius = None
            report["certified_radius_mean"] = report["certified_radius_median"] = math.nan
        else:
            radius = radius_from_margins(margins, upper)
            report["certified_radius_mean"] = float(radius.mean())
            report["certified_radius_median"] = float(radius.median())
        if correct is not None:
            for e in eps:
                report[f"certified_accuracy@{e:g}"] = (
                    math.nan if radius is None else certified_accuracy(radius, correct, e))
    return report


def robustness_of(model: nn.Module, data, *, samples: int = 1000, seed: int = 0, split: str = "test",
                  **report_options) -> dict[str, float]:
    """:func:`robustness_report` on a seeded subsample of one of ``data``'s splits.

    ``samples`` inputs of ``split`` (``"test"``, as the LPC paper measures it, or ``"train"``: the inputs
    whose latents the training collapsed) are drawn without replacement with ``seed`` (all of them when
    there are fewer). ``data`` is a :class:`~lpc_geom.data.Dataset`.
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be one of 'test', 'train', got {split!r}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
    index = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[: min(samples, len(y))]
    parameter = next(model.parameters())
    inputs = x[index].to(device=parameter.device, dtype=parameter.dtype)
    return robustness_report(model, inputs, y[index].to(parameter.device), **report_options)


def write_robustness_json(report: Mapping[str, float], path: str | Path, *,
                          source: Mapping[str, str] | None = None) -> Path:
    """Write a report as a flat JSON object (sorted keys; ``inf``/NaN written as ``null``), atomically.

    Strict JSON has no infinities or NaN; ``null`` keeps the file readable by any JSON reader, and
    :func:`read_robustness_json` turns it back into NaN.

    Parameters
    ----------
    report : mapping of str -> float
    path : str or Path
        Parent directories are created.
    source : mapping of str -> str, optional
        What the report was computed from (a run's ``{"file": "checkpoint.pt", "sha256": ...}``), stored
        under ``"source"`` so that a cached report can be recognised as stale.

    Returns
    -------
    Path
    """
    from lpc_geom.train.checkpoint import write_text

    path = Path(path)
    clean: dict[str, object] = {str(k): (float(v) if math.isfinite(float(v)) else None) for k, v in report.items()}
    if source is not None:
        clean["source"] = dict(source)
    write_text(json.dumps(clean, indent=2, sort_keys=True, allow_nan=False) + "\n", path)
    return path


def read_robustness_json(path: str | Path) -> dict[str, float]:
    """Read a report written by :func:`write_robustness_json` (``null`` becomes NaN; ``source`` is left out).

    Returns
    -------
    dict of str -> float
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of numbers")
    return {str(k): (math.nan if v is None else float(v)) for k, v in data.items() if k != "source"}
