"""Input validation for the analyzers, done once at the public boundary.

Everything behind :func:`lpc_geom.analyze` and :class:`lpc_geom.CollapseAccumulator` trusts what these
functions return: a float64 tensor without NaN/Inf, integer class codes ``0..K-1`` that follow the
sorted order of the original labels, and classifier weights whose rows line up with those codes.
Every rejection is a ``TypeError`` (wrong kind of object) or a ``ValueError`` (right kind, bad value)
whose message names the argument and the problem.
"""

from __future__ import annotations

import copy
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "SMALL_SUBSET_FRACTION",
    "ClassifierHead",
    "EncodedLabels",
    "SmallSubsetWarning",
    "UndefinedMetricError",
    "align_to_classes",
    "check_array",
    "check_bimodality_threshold",
    "check_bool",
    "check_classifier",
    "check_curvature",
    "check_groups",
    "check_head",
    "check_int",
    "check_latents",
    "check_logits",
    "check_manifold",
    "check_min_class_size",
    "check_output_classes",
    "check_real",
    "check_seed",
    "class_order",
    "encode_labels",
    "labels_to_array",
    "small_subset_note",
    "work_device",
]


class UndefinedMetricError(ValueError):
    """A figure that is mathematically undefined for the given data (the message says why)."""


SMALL_SUBSET_FRACTION = 0.1
"""A figure that averages over a masked subset (Fisher log-volume and curvature over the unmasked points,
separation ratio over the samples off their class centre) is flagged when that subset holds fewer than
this fraction of the points it summarises: it then describes a minority of the data (e.g. the few points
near a confident network's decision boundaries), not the data."""


class SmallSubsetWarning(UserWarning):
    """A figure was computed from a small fraction of the points it summarises (:data:`SMALL_SUBSET_FRACTION`)."""


def small_subset_note(used: int, total: int, what: str, why: str) -> str | None:
    """The note recorded for a figure computed from ``used`` of ``total`` points, or ``None`` when
    ``used`` is 0 (the figure is then undefined, not thin) or at least ``SMALL_SUBSET_FRACTION * total``.

    ``what`` names the points (``"points analysed"``), ``why`` says why the others were left out.
    """
    if used <= 0 or total <= 0 or used >= SMALL_SUBSET_FRACTION * total:
        return None
    return (
        f"computed from {used} of {total} {what} ({used / total:.2%}, below {SMALL_SUBSET_FRACTION:.0%}): {why}; "
        "it describes those points, not the data"
    )


# -- options -------------------------------------------------------------------------------------------
def _shown(value) -> str:
    """``repr`` of a rejected value with its type, cut short for large objects."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def check_bool(value, name: str, *, allow_none: bool = False) -> bool | None:
    """``value`` as a ``bool``: only ``True``/``False`` (and numpy booleans) are accepted.

    Strings such as ``"no"`` and numbers such as ``0`` are refused rather than read through their truth
    value (``bool("no")`` is ``True``).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    accepted = "True, False or None" if allow_none else "True or False"
    raise TypeError(f"{name} must be {accepted}; got {_shown(value)}")


def check_int(
    value, name: str, *, minimum: int | None = None, maximum: int | None = None, allow_none: bool = False
) -> int | None:
    """``value`` as an ``int`` in ``[minimum, maximum]``; Python or numpy integers only.

    Booleans and floats (``2.0`` included) are refused: a count that arrives as a float is a sign of an
    upstream mistake, and ``True`` is not the number 1.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        what = "an integer" + (" or None" if allow_none else "")
        raise TypeError(f"{name} must be {what}; got {_shown(value)}")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        lo = "" if minimum is None else f">= {minimum}"
        hi = "" if maximum is None else f"<= {maximum}"
        raise ValueError(f"{name} must be an integer {' and '.join(x for x in (lo, hi) if x)}; got {v}")
    return v


def check_real(
    value,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> float | None:
    """``value`` as a finite ``float`` in the interval given by ``low``/``high`` (open or closed ends).

    Booleans, strings and NaN/Inf are refused.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.integer, np.floating)):
        what = "a real number" + (" or None" if allow_none else "")
        raise TypeError(f"{name} must be {what}; got {_shown(value)}")
    v = float(value)
    interval = (
        ("(" if low_open else "[")
        + ("-inf" if low is None else f"{low:g}")
        + ", "
        + ("inf" if high is None else f"{high:g}")
        + (")" if high_open or high is None else "]")
    )
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        raise ValueError(f"{name} must be a finite number in {interval}; got {v!r}")
    return v


def check_seed(value, name: str = "seed") -> int:
    """A seed for ``numpy.random.default_rng``: an integer >= 0."""
    return check_int(value, name, minimum=0)


def check_bimodality_threshold(value, name: str = "bimodality_threshold") -> float:
    r"""A threshold on the bimodality coefficient :math:`b = (g^2 + 1)/\kappa`: a number in (0, 1).

    :math:`b \in (0, 1]` for every non-constant unit (Pearson's inequality :math:`\kappa \ge g^2 + 1`),
    so the fraction of units with :math:`b >` threshold is the fraction of non-constant units for any
    threshold <= 0 and 0 for any threshold >= 1: neither measures bimodality.
    """
    return check_real(value, name, low=0.0, high=1.0, low_open=True, high_open=True)


def check_groups(groups, registered: Iterable[str]) -> tuple[str, ...] | None:
    """Metric group names: ``None`` (the defaults), one name as a string, or an iterable of names.

    Raises
    ------
    TypeError
        Not a string or an iterable of strings.
    ValueError
        An empty selection, or names that are not registered (listed with the accepted ones).
    """
    if groups is None:
        return None
    accepted = list(registered)
    if isinstance(groups, str):
        names = (groups,)
    elif isinstance(groups, Iterable) and not isinstance(groups, (bytes, Mapping)):
        names = tuple(groups)
        bad = [g for g in names if not isinstance(g, str)]
        if bad:
            raise TypeError(f"groups must be metric group names (strings); got {_shown(bad[0])}; accepted: {accepted}")
    else:
        raise TypeError(f"groups must be a group name or an iterable of names; got {_shown(groups)}")
    if not names:
        raise ValueError(f"groups is empty: name at least one of {accepted} (or pass None for the defaults)")
    unknown = [g for g in names if g not in accepted]
    if unknown:
        raise ValueError(f"unknown metric group(s) {unknown} in groups; accepted: {accepted}")
    return tuple(dict.fromkeys(names))


# -- manifolds ------------------------------------------------------------------------------------------
def _curvature_value(manifold, attr: str) -> float:
    k = getattr(manifold, attr)
    k = k.detach() if isinstance(k, torch.Tensor) else torch.as_tensor(k)
    if k.numel() != 1:
        raise ValueError(f"a {type(manifold).__name__} with per-coordinate curvature is not supported")
    return float(k.to(torch.float64))


def check_curvature(manifold) -> None:
    """Refuse a geoopt manifold whose curvature parameter is non-finite or of the wrong sign.

    geoopt stores ``PoincareBall(c)`` as ``k = -softplus(softplus^{-1}(c))``, so ``c <= 0`` or ``c = nan``
    gives ``k = nan`` (and ``c = inf`` gives ``k = -inf``) without complaint; ``SphereProjection(k)`` does
    the same for ``k <= 0``. Checked: the stereographic family (``k`` finite; ``< 0`` for a Poincaré ball,
    ``> 0`` for a projected sphere) and ``Lorentz`` (``k`` finite and ``> 0``). Other manifolds have no
    curvature parameter and pass.
    """
    import geoopt

    if isinstance(manifold, geoopt.Stereographic):
        k = _curvature_value(manifold, "k")
        if isinstance(manifold, geoopt.PoincareBall):
            ok, want, given = math.isfinite(k) and k < 0, "c > 0 and finite", f"c = {-k!r}"
        elif isinstance(manifold, geoopt.SphereProjection):
            ok, want, given = math.isfinite(k) and k > 0, "k > 0 and finite", f"k = {k!r}"
        else:
            ok, want, given = math.isfinite(k), "a finite k", f"k = {k!r}"
        if not ok:
            hint = " (geoopt turns c <= 0, k <= 0 or NaN into k = nan)" if math.isnan(k) else ""
            raise ValueError(f"manifold {type(manifold).__name__} has curvature {given}{hint}; it needs {want}")
    elif isinstance(manifold, geoopt.Lorentz):
        k = _curvature_value(manifold, "k")
        if not (math.isfinite(k) and k > 0):
            raise ValueError(f"manifold Lorentz has k = {k!r}; it needs k > 0 and finite")


def check_manifold(manifold) -> tuple[str, float]:
    """The latent geometry of a manifold accepted by the analyzers: ``(kind, k)``.

    ``kind`` is ``"euclidean"`` (``None`` or ``geoopt.Euclidean``), ``"sphere"`` (unconstrained
    ``geoopt.Sphere``) or ``"stereographic"`` (``PoincareBall``, ``SphereProjection``, ``Stereographic``
    and their ``Exact`` variants) with ``k`` the signed curvature of geoopt's model (0 otherwise).

    Raises
    ------
    TypeError
        Another kind of manifold.
    ValueError
        A Sphere restricted to a subspace, a non-scalar curvature, or a curvature refused by
        :func:`check_curvature`.
    """
    if manifold is None:
        return "euclidean", 0.0
    import geoopt  # the caller built a geoopt manifold, so the import is already paid for

    if isinstance(manifold, geoopt.Euclidean):
        if manifold.ndim not in (0, 1):
            raise ValueError(f"geoopt.Euclidean(ndim={manifold.ndim}) is not a manifold of latent vectors")
        return "euclidean", 0.0
    if isinstance(manifold, geoopt.Sphere):
        if getattr(manifold, "projector", None) is not None:
            raise ValueError("a geoopt.Sphere restricted to a subspace (intersection/complement) is not supported")
        return "sphere", 0.0
    if isinstance(manifold, geoopt.Stereographic):
        check_curvature(manifold)
        return "stereographic", _curvature_value(manifold, "k")
    raise TypeError(
        f"unsupported manifold {type(manifold).__name__}: use None (Euclidean), geoopt.Sphere, "
        "geoopt.PoincareBall, geoopt.SphereProjection or geoopt.Stereographic"
    )


def work_device(device: torch.device) -> torch.device:
    """Device the float64 computation runs on: the input's own, except MPS (no float64 there)."""
    return torch.device("cpu") if device.type == "mps" else device


# Squared distances of larger entries overflow float64.
_MAX_ABS = 1e150


def _float_eps(dtype) -> float:
    """Machine epsilon of the *input* dtype (integers are exact: treated as float64)."""
    if isinstance(dtype, torch.dtype):
        return torch.finfo(dtype).eps if dtype.is_floating_point else float(np.finfo(np.float64).eps)
    dtype = np.dtype(dtype)
    return float(np.finfo(dtype).eps) if dtype.kind == "f" else float(np.finfo(np.float64).eps)


def check_latents(
    latents, *, name: str = "latents", min_dim: int = 2, min_samples: int = 2
) -> tuple[torch.Tensor, float]:
    """Validate an (N, d) array of real numbers and return it as a float64 tensor.

    Parameters
    ----------
    latents : numpy.ndarray or torch.Tensor, shape (N, d)
        Any real dtype (float16/bfloat16/32/64 or integer); any torch device.
    name : str
        Argument name used in error messages.
    min_dim : int
        Smallest accepted ``d`` (the analyzers need ``d >= 2``).
    min_samples : int
        Smallest accepted ``N`` (2 for an analysis; a streamed batch may hold 1).

    Returns
    -------
    z : torch.Tensor, float64, shape (N, d)
        On the input's device (CPU for numpy input and for MPS tensors).
    eps : float
        Machine epsilon of the input dtype: the relative resolution the input was stored with.

    Raises
    ------
    TypeError
        Not an array/tensor, or a complex, boolean, string or object dtype.
    ValueError
        Not 2-D, fewer than ``min_samples`` samples, ``d < min_dim``, any NaN/Inf (the count and first
        row are named), or entries above 1e150 in magnitude (their squares overflow).
    """
    if isinstance(latents, torch.Tensor):
        t = latents.detach()
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be real-valued; got torch dtype {t.dtype}")
        eps = _float_eps(t.dtype)
        t = t.to(device=work_device(t.device))
    elif isinstance(latents, (np.ndarray, list, tuple)):
        arr = np.asarray(latents)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be a real numeric array; got numpy dtype {arr.dtype}")
        eps = _float_eps(arr.dtype)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor of shape (N, d); got {type(latents)!r}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, d); got shape {tuple(t.shape)}")
    n, d = t.shape
    if n < min_samples:
        raise ValueError(f"{name} must hold at least {min_samples} samples; got N = {n}")
    if d < min_dim:
        raise ValueError(
            f"{name} has d = {d}; the analyzers need d >= {min_dim} (angles, ETF and hypercube figures "
            "are undefined in one dimension)"
        )
    # A sum in float64 is finite when every entry is (NaN/Inf propagate); it can also overflow on finite
    # float64 entries, so only a non-finite sum leads to the entrywise check (in the input dtype).
    if t.is_floating_point() and not math.isfinite(float(t.sum(dtype=torch.float64))):
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad_rows = (~finite).any(dim=1)
            first = int(torch.nonzero(bad_rows)[0, 0])
            raise ValueError(
                f"{name} contains {int((~finite).sum())} NaN/Inf entries in {int(bad_rows.sum())} rows "
                f"(first at row {first})"
            )
    z = t.to(torch.float64)
    # Only float64 can hold such entries (the float32 maximum is 3.4e38); aminmax makes no |z| copy.
    if t.dtype == torch.float64 and z.numel():
        lo, hi = torch.aminmax(z)
        if max(-float(lo), float(hi)) > _MAX_ABS:
            raise ValueError(
                f"{name} has entries above {_MAX_ABS:.0e} in magnitude: their squares overflow float64; rescale them"
            )
    return z, eps


_INTEGER_STRING = re.compile(r"[+-]?[0-9]+")


def _integer_string_values(classes: np.ndarray) -> list[int] | None:
    """The integer value of each string class when every one is a decimal integer ("0", "10", "-3") and
    no two share a value ("1" and "01" would); otherwise ``None``."""
    texts = classes.tolist()
    if not texts or not all(_INTEGER_STRING.fullmatch(t) for t in texts):
        return None
    values = [int(t) for t in texts]
    return values if len(set(values)) == len(values) else None


@dataclass(frozen=True)
class EncodedLabels:
    """Labels mapped to class codes.

    Attributes
    ----------
    codes : numpy.ndarray of int64, shape (N,)
        ``codes[i]`` is the index of ``labels[i]`` in ``classes``.
    classes : numpy.ndarray, shape (K,)
        The distinct original labels in the analyzers' order (:func:`class_order`): ints (int64, or
        uint64 when some exceed 2**63 - 1) in increasing order, or strings, in numeric order when they are
        all decimal integers and in lexicographic order otherwise.
    integer : bool
        True when the original labels are integers (bool and integral floats included).
    """

    codes: np.ndarray
    classes: np.ndarray
    integer: bool

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def values(self) -> list[int] | None:
        """The integer value of each class (integer labels, or strings that are all decimal integers),
        used to index a classifier's outputs; ``None`` for other string labels."""
        if self.integer:
            return [int(c) for c in self.classes.tolist()]
        return _integer_string_values(self.classes)


def class_order(classes: np.ndarray) -> np.ndarray:
    """Permutation putting distinct labels in the analyzers' order: numeric for integers and for strings
    that are all decimal integers ("2" before "10"), lexicographic for other strings."""
    if classes.dtype.kind == "U":
        values = _integer_string_values(classes)
        if values is not None:
            return np.array(sorted(range(len(values)), key=values.__getitem__), dtype=np.int64)
    return np.argsort(classes, kind="stable")


def _integer_array(values, what: str) -> np.ndarray:
    """Python/numpy integers as an int64 array, or uint64 when some exceed 2**63 - 1 (never wrapped)."""
    try:
        return np.asarray(values, dtype=np.int64)
    except OverflowError:
        pass
    try:
        return np.asarray(values, dtype=np.uint64)
    except OverflowError:
        raise ValueError(
            f"{what} must be integers in [-2**63, 2**63 - 1], or all in [0, 2**64 - 1]; got values outside "
            "both ranges"
        ) from None


def _labels_to_numpy(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        if labels.is_complex():
            raise TypeError(f"labels must be integers or strings; got torch dtype {labels.dtype}")
        return labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray):
        return labels
    if isinstance(labels, (list, tuple)):
        # np.asarray would silently turn [1, "a"] into strings (and [1, 2**63] into floats); check the
        # element types first.
        kinds = set(map(type, labels))
        if kinds and all(issubclass(k, str) for k in kinds):
            return np.asarray(labels, dtype=str)
        if kinds and all(issubclass(k, (numbers.Integral, np.bool_)) for k in kinds):
            return _integer_array([int(v) for v in labels], "labels")
        if kinds and all(issubclass(k, (numbers.Real, np.bool_)) for k in kinds):
            return np.asarray(labels, dtype=np.float64)
        if not kinds:
            return np.asarray(labels, dtype=np.int64)
        raise TypeError(
            "labels mix types that cannot be mapped consistently to classes: "
            + ", ".join(sorted(k.__name__ for k in kinds))
        )
    raise TypeError(f"labels must be a numpy array, torch tensor or list; got {type(labels)!r}")


def labels_to_array(labels, n: int) -> tuple[np.ndarray, bool]:
    """Check ``n`` labels and return them as an integer (int64, or uint64 beyond 2**63 - 1) or str numpy
    array, and whether they are integers.

    Raises
    ------
    TypeError
        Complex, datetime, byte or mixed-type labels.
    ValueError
        Not 1-D, a count different from ``n``, non-integral or non-finite float labels, integers that
        fit neither int64 nor uint64 together.
    """
    arr = _labels_to_numpy(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D with one label per sample; got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(
            f"label count mismatch: {n} latent rows but {arr.shape[0]} labels (labels must have shape ({n},))"
        )
    kind = arr.dtype.kind
    integer = True
    if kind == "b":
        arr = arr.astype(np.int64)
    elif kind == "u":
        fits = not arr.size or int(arr.max()) <= np.iinfo(np.int64).max
        arr = arr.astype(np.int64 if fits else np.uint64)
    elif kind == "i":
        arr = arr.astype(np.int64)
    elif kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError("labels contain NaN/Inf; they cannot be mapped to classes")
        if arr.size and float(np.abs(arr).max()) > 2.0**53:
            raise ValueError("float labels beyond 2**53 are not exact integers and cannot be mapped to classes")
        if not np.array_equal(arr, np.round(arr)):
            bad = arr[arr != np.round(arr)][0]
            raise ValueError(f"float labels must be integral to be mapped to classes; got e.g. {bad!r}")
        arr = arr.astype(np.int64)
    elif kind == "U":
        integer = False
    elif kind == "O":
        kinds = set(map(type, arr.tolist()))
        if kinds and all(issubclass(k, str) for k in kinds):
            arr = arr.astype(str)
            integer = False
        elif kinds and all(issubclass(k, (numbers.Integral, np.bool_)) for k in kinds):
            arr = _integer_array([int(v) for v in arr.tolist()], "labels")
        else:
            raise TypeError(
                "object labels must be all strings or all integers; got "
                + ", ".join(sorted(k.__name__ for k in kinds))
            )
    else:
        raise TypeError(f"labels must be integers or strings; got numpy dtype {arr.dtype}")
    return arr, integer


def encode_labels(labels, n: int, *, min_classes: int = 2) -> EncodedLabels:
    """Map labels (integers, integral floats, booleans or strings) to codes ``0..K-1``.

    Classes are numbered in :func:`class_order`: increasing integers; strings that are all decimal
    integers ("0".."10") in numeric order, so that they line up with a classifier's outputs like the
    integers they name; other strings in lexicographic order.

    Raises
    ------
    TypeError, ValueError
        As :func:`labels_to_array`; ``ValueError`` also for fewer than ``min_classes`` classes.
    """
    arr, integer = labels_to_array(labels, n)
    classes, codes = np.unique(arr, return_inverse=True)
    if len(classes) < min_classes:
        raise ValueError(
            f"labels name only one class ({classes[0].item()!r}); the collapse figures compare classes and "
            "need at least two classes (K >= 2)"
        )
    codes = codes.reshape(-1).astype(np.int64)
    order = class_order(classes)
    if not np.array_equal(order, np.arange(len(classes))):
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        classes, codes = classes[order], rank[codes]
    return EncodedLabels(codes=codes, classes=classes, integer=integer)


def check_min_class_size(counts: np.ndarray, classes: np.ndarray, min_class_size: int) -> None:
    """Raise if a class has fewer than ``min_class_size`` samples (default policy: 2).

    A class with one sample has its mean *at* that sample: its own-class distance is 0, so the sample's
    separation ratio is 0/0 (it is counted in ``separation_ratio_excluded``), and it adds an exact zero to
    the within-class scatter (``sigma_w``, ``sigma_w_rel``, ``nc1`` are then biased towards collapse).
    Those are the undefined or misleading figures; pass ``min_class_size=1`` to accept them.
    ``min_class_size`` must be an integer >= 1 (:func:`check_int`).
    """
    min_class_size = check_int(min_class_size, "min_class_size", minimum=1)
    small = np.flatnonzero(counts < min_class_size)
    if small.size:
        names = ", ".join(repr(c) for c in classes[small[:5]].tolist())
        more = f" and {small.size - 5} more" if small.size > 5 else ""
        raise ValueError(
            f"{small.size} class(es) have fewer than min_class_size={min_class_size} samples ({names}{more}). "
            "With one sample the class mean is the sample itself: its separation ratio is 0/0 and its "
            "within-class scatter is 0 by construction (sigma_w, sigma_w_rel, nc1 biased towards collapse). "
            "Pass min_class_size=1 to compute anyway (such samples are counted in separation_ratio_excluded)."
        )


def _as_float64(x, what: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, (np.ndarray, list, tuple, numbers.Real)):
        a = np.asarray(x)
        if a.dtype.kind not in "iuf":
            raise TypeError(f"{what} must be real-valued; got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    else:
        raise TypeError(f"{what} must be a numpy array or torch tensor; got {type(x)!r}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must be real-valued; got {t.dtype}")
    t = t.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN/Inf")
    return t


def check_array(x, name: str, ndim: int | None = None) -> torch.Tensor:
    """A real array or tensor (classifier weights, biases, plane vectors) as a float64 CPU tensor.

    Raises
    ------
    TypeError
        Not an array/tensor/number, or a complex or boolean dtype.
    ValueError
        ``ndim`` given and not matched, or NaN/Inf entries.
    """
    t = _as_float64(x, name, torch.device("cpu"))
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    return t


def _is_linear_module(module: torch.nn.Module) -> bool:
    """An ``nn.Linear`` whose forward pass is ``nn.Linear``'s own (``W z + b``)."""
    return isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward


def _check_weights(w, b, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    W = _as_float64(w, "classifier weight W", device)
    if W.ndim != 2 or W.shape[1] != d:
        hint = " (looks transposed: W must be (K, d) like nn.Linear.weight)" if W.ndim == 2 and W.shape[0] == d else ""
        raise ValueError(f"classifier weight W must have shape (K, d={d}); got {tuple(W.shape)}{hint}")
    B = None
    if b is not None:
        B = _as_float64(b, "classifier bias b", device).reshape(-1)
        if B.shape[0] != W.shape[0]:
            raise ValueError(f"classifier bias b must have {W.shape[0]} entries (one per row of W); got {B.shape[0]}")
    return W, B


def check_classifier(classifier, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return the weights ``(W, b)`` as float64 tensors from ``(W, b)``, ``(W,)``, ``W`` or an object with
    ``.weight`` (and optional ``.bias``): an ``nn.Linear``, a duck-typed linear layer, or a module head whose
    ``.weight`` holds its class rows (e.g. ``HyperbolicMLR``'s normals, ``SphereClassifier``'s directions).

    ``W`` must have shape (K_w, d) (torch's ``nn.Linear`` layout); ``b`` shape (K_w,) or ``None``. Only the
    weight-based figures (``nc3``) use this for a module head; its logits come from :func:`check_head`.
    """
    if hasattr(classifier, "weight") and not isinstance(classifier, (torch.Tensor, np.ndarray)):
        w, b = classifier.weight, getattr(classifier, "bias", None)
    elif isinstance(classifier, (tuple, list)):
        if len(classifier) not in (1, 2):
            raise TypeError(f"classifier must be (W, b) or (W,); got a sequence of length {len(classifier)}")
        w = classifier[0]
        b = classifier[1] if len(classifier) == 2 else None
    elif isinstance(classifier, (torch.Tensor, np.ndarray)):
        w, b = classifier, None
    else:
        raise TypeError(
            f"classifier must be (W, b), W, or a module with .weight (and optional .bias); got {type(classifier)!r}"
        )
    return _check_weights(w, b, d, device)


@dataclass(frozen=True, eq=False)
class ClassifierHead:
    """A validated classifier head: linear ``f(z) = W z + b``, or a differentiable module.

    Attributes
    ----------
    weight : Tensor or None
        (K_out, d) float64 on the work device: the linear weights, or a module head's ``.weight`` (its
        class rows, used by ``nc3``); ``None`` for a module without a (K_out, d) ``.weight``.
    bias : Tensor or None
        (K_out,) float64 bias of a linear head.
    module : torch.nn.Module or None
        ``None`` for a linear head. Otherwise a float64 copy of the given module on the CPU, in eval mode
        (``copy.deepcopy(module).to("cpu", torch.float64).eval()``; the caller's module is untouched):
        its outputs are the logits, and its Fisher geometry is computed through autograd.
    n_out : int
        Number of outputs K_out.
    """

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    module: torch.nn.Module | None
    n_out: int

    @property
    def linear(self) -> bool:
        return self.module is None

    def logits(self, z: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """Float64 logits (N, K_out) of float64 latents ``z`` (N, d), on ``z``'s device."""
        if self.module is None:
            out = z @ self.weight.T
            return out if self.bias is None else out + self.bias
        with torch.no_grad():
            parts = [self.module(z[s : s + chunk].cpu()) for s in range(0, z.shape[0], chunk)]
        L = torch.cat(parts).to(z.device)
        if not bool(torch.isfinite(L).all()):
            raise ValueError("the classifier module returned NaN/Inf logits at the given latents")
        return L


def check_head(classifier, z: torch.Tensor) -> ClassifierHead:
    """Validate a classifier against float64 latents ``z`` (N, d) and return a :class:`ClassifierHead`.

    * ``(W, b)``, ``(W,)``, ``W``, an ``nn.Linear`` (with ``nn.Linear``'s own forward), or a non-module
      object with ``.weight``/``.bias``: linear, :math:`f(z) = Wz + b` (see :func:`check_classifier`).
    * Any other ``torch.nn.Module`` (a manifold head's classifier such as ``HyperbolicMLR``,
      ``HyperbolicPrototypes``, ``SphereClassifier``, a cosine classifier, a wrapper that scales logits):
      evaluated by calling a float64 CPU copy of it in eval mode on the latents. It must map (n, d)
      latents to (n, K_out) logits, K_out >= 2. Its ``.weight``, when it is a (K_out, d) array, is kept
      for ``nc3``.

    Parameters
    ----------
    classifier : tuple, array, torch.nn.Module or object with ``.weight``
        As accepted by :func:`lpc_geom.analyze`.
    z : torch.Tensor, shape (N, d)
        The validated float64 latents (the first row is used to check a module's output).

    Returns
    -------
    ClassifierHead

    Raises
    ------
    TypeError
        An unsupported object, a module that cannot be copied or converted to float64, or whose output
        is not a tensor.
    ValueError
        Bad shapes, NaN/Inf weights, fewer than 2 outputs, or non-finite logits at the first latent.
    """
    d = z.shape[1]
    if not isinstance(classifier, torch.nn.Module) or _is_linear_module(classifier):
        W, B = check_classifier(classifier, d, z.device)
        if W.shape[0] < 2:
            raise ValueError(f"classifier must have at least 2 outputs (rows of W); got {W.shape[0]}")
        return ClassifierHead(W, B, None, W.shape[0])
    try:
        module = copy.deepcopy(classifier).to(device="cpu", dtype=torch.float64).eval()
    except Exception as err:  # deepcopy/conversion failures of arbitrary user modules
        raise TypeError(
            f"classifier module {type(classifier).__name__} could not be copied and converted to float64: {err}"
        ) from err
    with torch.no_grad():
        out = module(z[:1].cpu())
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        raise TypeError(
            f"classifier module {type(classifier).__name__} must map (n, d) latents to an (n, K) logits tensor; "
            f"got {type(out).__name__}{'' if not isinstance(out, torch.Tensor) else tuple(out.shape)}"
        )
    if out.shape[1] < 2:
        raise ValueError(f"classifier module must return at least 2 logits; got {out.shape[1]}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("the classifier module returned NaN/Inf logits at the first latent")
    if out.dtype != torch.float64:
        raise TypeError(
            f"classifier module {type(classifier).__name__} returned {out.dtype} logits after .double(); "
            "it must compute in the dtype of its parameters and input"
        )
    weight = None
    w = getattr(classifier, "weight", None)
    if isinstance(w, (torch.Tensor, np.ndarray)) and tuple(w.shape) == (out.shape[1], d):
        weight = _as_float64(w, "classifier weight", z.device)
    return ClassifierHead(weight, None, module, int(out.shape[1]))


def check_logits(logits, n: int, device: torch.device) -> torch.Tensor:
    """Validate network outputs of shape (N, K_l) without NaN/Inf; returned as float64."""
    L = _as_float64(logits, "logits", device)
    if L.ndim != 2 or L.shape[0] != n:
        raise ValueError(f"logits must have shape (N={n}, K); got {tuple(L.shape)}")
    if L.shape[1] < 2:
        raise ValueError(f"logits must have at least 2 columns; got {L.shape[1]}")
    return L


def check_output_classes(classes) -> EncodedLabels:
    """Validate ``classes=``: the class of each classifier output (row of W, column of the logits).

    Returns an :class:`EncodedLabels` whose ``codes`` are the outputs in order and whose ``classes`` are
    the distinct names; the names must be distinct (one output per class).
    """
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple, np.ndarray, torch.Tensor)):
        raise TypeError(f"classes must be a sequence with the class of each classifier output; got {_shown(classes)}")
    n = len(classes)
    enc = encode_labels(classes, n, min_classes=0) if n else None
    if enc is None or enc.n_classes != n:
        raise ValueError(
            "classes must name each classifier output's class once (distinct labels, at least one); got "
            f"{n} entries naming {0 if enc is None else enc.n_classes} distinct classes"
        )
    return enc


def _preview(items: list, limit: int = 5) -> str:
    shown = ", ".join(repr(c) for c in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def align_to_classes(
    n_out: int, labels: EncodedLabels, what: str, output_classes: EncodedLabels | None = None
) -> np.ndarray:
    """Indices of the outputs (rows of W, columns of the logits) that belong to ``labels.classes``.

    * With ``output_classes`` (from :func:`check_output_classes`: the class of each of the ``n_out``
      outputs): each label class is matched to the output that names it. Integer labels and strings that
      are all decimal integers match by value (label ``"3"`` and output class ``3`` are one class),
      other strings by text; every label class must have an output (outputs without samples are fine).
    * Without it: integer labels (or decimal-integer strings) that all lie in ``0..n_out-1`` index the
      outputs directly, so absent classes are allowed. Any other labels are ambiguous (is label ``"cat"``
      output 0? is label 1 output 0 or 1?) and raise ``ValueError`` asking for ``classes=``.
    """
    names = labels.classes.tolist()
    values = labels.values
    if output_classes is not None:
        if len(output_classes.codes) != n_out:
            raise ValueError(
                f"classes names {len(output_classes.codes)} outputs but the {what} has {n_out}: give the class "
                "of every output, in output order"
            )
        out_values = output_classes.values
        out_names = output_classes.classes[output_classes.codes].tolist()  # in output order
        if values is not None and out_values is not None:
            out_keys = [out_values[c] for c in output_classes.codes.tolist()]
            keys = values
        elif values is None and out_values is None:
            out_keys, keys = out_names, names
        else:
            kinds = ("integers", "non-integer strings") if values is not None else ("non-integer strings", "integers")
            raise ValueError(f"the labels are {kinds[0]} but classes holds {kinds[1]}: they name no common class")
        where = {key: i for i, key in enumerate(out_keys)}
        missing = [name for name, key in zip(names, keys, strict=True) if key not in where]
        if missing:
            raise ValueError(
                f"classes has no output for label class(es) {_preview(missing)}; it names {_preview(out_names)}"
            )
        return np.array([where[key] for key in keys], dtype=np.int64)
    if values is not None and min(values) >= 0 and max(values) < n_out:
        return np.array(values, dtype=np.int64)
    kind = (
        f"integer labels outside 0..{n_out - 1}" if values is not None
        else "labels that are not integers"
    )
    raise ValueError(
        f"the {what} has {n_out} outputs and the labels name {len(names)} classes ({_preview(names)}): "
        f"with {kind} they cannot be matched to the outputs unambiguously. Pass classes=[the class of "
        "output 0, of output 1, ...]; integer labels in 0..K_out-1 index the outputs directly"
    )
