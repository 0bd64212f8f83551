"""Errors, small-subset notes and the checks of scalar options (bools, counts, reals, seeds, group names)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

import numpy as np


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


def check_entropy_options(
    k, max_samples, seed, floor, *, max_samples_name: str = "max_entropy_samples", floor_name: str = "entropy_floor"
) -> tuple[int, int, int, float | None]:
    """The entropy options checked: ``k >= 1`` and ``max_samples >= 2`` integers, ``seed >= 0``, ``floor`` a
    positive finite distance or ``None``."""
    return (
        check_int(k, "k", minimum=1),
        check_int(max_samples, max_samples_name, minimum=2),
        check_seed(seed),
        check_real(floor, floor_name, low=0.0, low_open=True, allow_none=True),
    )
