"""Geometry heads for latent point collapse: sphere, Poincaré ball, Stiefel (geoopt manifolds).

Every head takes backbone features ``h`` and returns ``HeadOutput(logits, latents, energy)``; it exposes
``.classifier`` (the final layer) and ``.manifold`` (the geoopt manifold of the latents, ``None`` when they
are Euclidean). Train heads with manifold parameters through
``lpc_geom.optim.build_optimizer(model, "riemannian-adam")``; check them with :func:`check_on_manifold`.

>>> import geoopt
>>> head = ManifoldHead(64, 16, 10, manifold=geoopt.Sphere())          # from a geoopt manifold
>>> head = build_geometry_head("poincare", 64, 16, 10, c=0.5)           # from a name
"""

from __future__ import annotations

from lpc_geom.models.geometry.base import GEOMETRY_HEADS, ManifoldHead, head_class_for, supported_manifolds
from lpc_geom.models.geometry.checks import (
    ManifoldConstraintError,
    check_on_manifold,
    manifold_violation,
    project_manifold_parameters,
)

# The heads register themselves as their modules are imported: this order is that of GEOMETRIES (and of the
# names every error and the CLI list).
from lpc_geom.models.geometry.sphere import SphereClassifier, SphereHead, sphere_normalize  # isort: split

from lpc_geom.models.geometry.poincare import (
    HyperbolicMLR,
    HyperbolicPrototypes,
    PoincareHead,
    ball_sqdist,
    expmap0,
    hyperbolic_mlr_logits,
    mobius_add,
)
from lpc_geom.models.geometry.stiefel import StiefelHead, StiefelLinear, random_stiefel

#: What :func:`head_class_for` accepts, in the words of the error message.
SUPPORTED_MANIFOLDS = supported_manifolds()
#: Geometry names understood by the trainer (and the CLI's ``--geometry``): the reference Euclidean head and
#: those of :data:`GEOMETRY_HEADS`.
GEOMETRIES = ("euclidean", *GEOMETRY_HEADS)


def build_geometry_head(geometry: str, in_dim: int, latent_dim: int, num_classes: int, **options) -> ManifoldHead:
    """Build a geometry head by name.

    Parameters
    ----------
    geometry : {"sphere", "poincare", "stiefel"}
        ``"euclidean"`` is accepted as a name but raises: the Euclidean LPC head lives in
        ``lpc_geom.models.heads``.
    in_dim, latent_dim, num_classes : int
        Feature size, latent dimension and number of classes.
    **options
        Keyword options of the head: :class:`SphereHead` (``radius``, ``radius_mode``, ``within_class``,
        ``bias``, ``eps``), :class:`PoincareHead` (``c``, ``learnable_c``, ``classifier``,
        ``class_points``, ``temperature``, ``bias``) or :class:`StiefelHead` (``bias``,
        ``classifier_bias``); each may also take ``manifold``.

    Raises
    ------
    ValueError
        For ``"euclidean"`` and for unknown names (the message lists the accepted ones).
    """
    key = geometry.lower()
    if key == "euclidean":
        raise ValueError(
            "geometry 'euclidean' is the reference LPC head, built by lpc_geom.models.heads; "
            f"build_geometry_head builds {', '.join(GEOMETRY_HEADS)}"
        )
    if key not in GEOMETRY_HEADS:
        raise ValueError(f"unknown geometry {geometry!r}; accepted geometries: {', '.join(GEOMETRIES)}")
    return GEOMETRY_HEADS[key](in_dim, latent_dim, num_classes, **options)


__all__ = [
    "GEOMETRIES",
    "GEOMETRY_HEADS",
    "SUPPORTED_MANIFOLDS",
    "HyperbolicMLR",
    "HyperbolicPrototypes",
    "ManifoldConstraintError",
    "ManifoldHead",
    "PoincareHead",
    "SphereClassifier",
    "SphereHead",
    "StiefelHead",
    "StiefelLinear",
    "ball_sqdist",
    "build_geometry_head",
    "check_on_manifold",
    "expmap0",
    "head_class_for",
    "hyperbolic_mlr_logits",
    "manifold_violation",
    "mobius_add",
    "project_manifold_parameters",
    "random_stiefel",
    "sphere_normalize",
    "supported_manifolds",
]
