"""Input validation for the analyzers, done once at the public boundary.

Everything behind :func:`lpc_geom.analyze` and :class:`lpc_geom.CollapseAccumulator` trusts what these
functions return: a float64 tensor without NaN/Inf, integer class codes ``0..K-1`` that follow the
sorted order of the original labels, and classifier weights whose rows line up with those codes.
Every rejection is a ``TypeError`` (wrong kind of object) or a ``ValueError`` (right kind, bad value)
whose message names the argument and the problem.

Its modules: :mod:`~lpc_geom.analysis._validation.options` (the errors, small-subset notes and scalar
options), :mod:`~lpc_geom.analysis._validation.manifolds`, :mod:`~lpc_geom.analysis._validation.arrays`
(latents, weights, logits, classifier heads) and :mod:`~lpc_geom.analysis._validation.labels` (class
codes and their match to a classifier's outputs); every name is importable from here.
"""

from lpc_geom.analysis._validation.arrays import (
    ClassifierHead,
    check_array,
    check_classifier,
    check_head,
    check_latents,
    check_logits,
)
from lpc_geom.analysis._validation.labels import (
    EncodedLabels,
    align_to_classes,
    check_min_class_size,
    check_output_classes,
    class_order,
    encode_labels,
    labels_to_array,
)
from lpc_geom.analysis._validation.manifolds import check_curvature, check_manifold, work_device
from lpc_geom.analysis._validation.options import (
    SMALL_SUBSET_FRACTION,
    SmallSubsetWarning,
    UndefinedMetricError,
    check_bimodality_threshold,
    check_bool,
    check_entropy_options,
    check_groups,
    check_int,
    check_real,
    check_seed,
    small_subset_note,
)

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
    "check_entropy_options",
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
