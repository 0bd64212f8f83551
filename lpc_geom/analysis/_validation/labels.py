"""Labels: class codes in the analyzers' order, class sizes, and the match of classes to classifier outputs."""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

import numpy as np
import torch

from lpc_geom.analysis._validation.options import _shown, check_int

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
