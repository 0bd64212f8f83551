"""The common base of the geometry heads and the dispatch from a geoopt manifold to a head.

``ManifoldHead(in_dim, latent_dim, num_classes, manifold=M, **options)`` builds the head that belongs to the
geoopt manifold ``M`` (the same pattern as ``geoopt.Stiefel(canonical=...)``, whose constructor returns
the concrete subclass): calling the base class returns a :class:`~.sphere.SphereHead`,
:class:`~.poincare.PoincareHead` or :class:`~.stiefel.StiefelHead`, and every one of them is an instance
of :class:`ManifoldHead`. Manifolds without a sound head are refused with a :class:`ValueError` that lists
what is supported.
"""

from __future__ import annotations

from typing import ClassVar

import geoopt
from torch import nn

from lpc_geom.models.geometry.checks import project_manifold_parameters

#: What :func:`head_class_for` accepts, in the words of the error message.
SUPPORTED_MANIFOLDS = (
    "geoopt.Sphere / geoopt.SphereExact without a subspace constraint (SphereHead)",
    "geoopt.PoincareBall / geoopt.PoincareBallExact with any c, fixed or learnable (PoincareHead)",
    "geoopt.Stereographic / geoopt.StereographicExact with a fixed k < 0 (PoincareHead)",
    "geoopt.EuclideanStiefel / geoopt.CanonicalStiefel / geoopt.EuclideanStiefelExact (StiefelHead)",
)

_EUCLIDEAN_HINT = (
    "Euclidean latents are the reference LPC head, built by lpc_geom.models.heads (geometry 'euclidean'); "
    "ManifoldHead only builds curved or constrained heads"
)


def _unsupported(manifold: object, why: str) -> ValueError:
    listing = "\n  - ".join(SUPPORTED_MANIFOLDS)
    return ValueError(f"unsupported manifold {manifold!r}: {why}. Supported manifolds:\n  - {listing}")


def head_class_for(manifold: object) -> type[ManifoldHead]:
    """The head class that puts latents (or the penultimate weight) on ``manifold``.

    Parameters
    ----------
    manifold : geoopt.Manifold
        An *instance* of a geoopt manifold.

    Returns
    -------
    type
        :class:`~.sphere.SphereHead`, :class:`~.poincare.PoincareHead` or :class:`~.stiefel.StiefelHead`.

    Raises
    ------
    ValueError
        For anything else; the message lists the supported manifolds. A learnable
        ``geoopt.Stereographic`` is refused because its raw ``k`` can cross zero during training (the
        hyperbolic formulas need ``k < 0``); ``geoopt.PoincareBall(c, learnable=True)`` keeps ``c > 0``
        through a softplus and is the supported way to learn the curvature.
    """
    from lpc_geom.models.geometry.poincare import PoincareHead
    from lpc_geom.models.geometry.sphere import SphereHead
    from lpc_geom.models.geometry.stiefel import StiefelHead

    if manifold is None:
        raise _unsupported(manifold, "a manifold is required (pass manifold=geoopt.PoincareBall(), ...)")
    if isinstance(manifold, type):
        raise _unsupported(manifold, f"pass an instance, e.g. {manifold.__name__}(), not the class")
    if isinstance(manifold, geoopt.Euclidean):
        raise _unsupported(manifold, _EUCLIDEAN_HINT)
    if isinstance(manifold, geoopt.Sphere):
        if manifold.projector is not None:
            raise _unsupported(manifold, "a Sphere restricted to a subspace (intersection/complement)")
        return SphereHead
    if isinstance(manifold, geoopt.PoincareBall):
        return PoincareHead
    if isinstance(manifold, geoopt.SphereProjection):
        raise _unsupported(manifold, "positive-curvature stereographic models have no head")
    if isinstance(manifold, geoopt.Stereographic):
        if manifold.k.requires_grad:
            raise _unsupported(
                manifold,
                "a learnable Stereographic k may change sign; use geoopt.PoincareBall(c, learnable=True)",
            )
        if not bool(manifold.k < 0):
            raise _unsupported(manifold, f"Stereographic with k = {float(manifold.k)} >= 0")
        return PoincareHead
    if isinstance(manifold, geoopt.Stiefel):
        return StiefelHead
    raise _unsupported(manifold, f"no head is defined for {type(manifold).__name__}")


class ManifoldHead(nn.Module):
    r"""Base class of the geometry heads; calling it dispatches on the geoopt manifold.

    Every head maps backbone features ``h`` (N, in_dim) to a :class:`~lpc_geom.models.base.HeadOutput`
    ``(logits, latents, energy)`` and exposes

    - ``classifier``: the final layer module (its parameters get the optimiser role ``"classifier"``);
    - ``manifold``: the geoopt manifold the latents live on (``None`` when they are Euclidean, as for the
      Stiefel head, whose *weight* is constrained instead), so that analyzers measure in the right
      geometry;
    - ``geometry``: the name used by :func:`~lpc_geom.models.geometry.build_geometry_head`.

    Converting a head (``.double()``, ``.to(...)``) re-projects the manifold parameters that the
    conversion left off their manifolds (see
    :func:`~lpc_geom.models.geometry.checks.project_manifold_parameters`), so ``model.double()`` is the
    float64 option.

    The per-sample ``energy`` is the geometry's analogue of the Euclidean LPC energy
    :math:`E_i = \|z_i\|^2`; the trainer adds :math:`\gamma \cdot \mathrm{mean}_i E_i` with the same
    gamma schedules as the Euclidean head. Each subclass documents its energy and why.

    Parameters
    ----------
    in_dim : int
        Feature size of the backbone (``backbone.out_dim``).
    latent_dim : int
        Dimension ``d`` of the latents.
    num_classes : int
        Number of classes ``K``.
    manifold : geoopt.Manifold
        Which head to build: see :data:`SUPPORTED_MANIFOLDS` and :func:`head_class_for`.
    **options
        Passed on to the concrete head.

    Examples
    --------
    >>> head = ManifoldHead(64, 16, 10, manifold=geoopt.PoincareBall(c=1.0, learnable=True))
    >>> type(head).__name__, isinstance(head, ManifoldHead)
    ('PoincareHead', True)
    """

    geometry: ClassVar[str] = ""
    manifold: geoopt.Manifold | None
    classifier: nn.Module

    def __new__(cls, *args, **kwargs):
        if cls is ManifoldHead:
            manifold = kwargs["manifold"] if "manifold" in kwargs else (args[3] if len(args) > 3 else None)
            cls = head_class_for(manifold)
        # Python then calls ``cls.__init__`` with the same arguments (the result is a ManifoldHead).
        return super().__new__(cls)

    def _apply(self, fn, recurse=True):
        # A float32 unit vector converted to float64 is unit only to float32 accuracy: re-project the
        # manifold parameters that a dtype (or device) conversion left off their manifolds.
        super()._apply(fn, recurse)
        project_manifold_parameters(self)
        return self

    def extra_repr(self) -> str:
        return f"geometry={self.geometry!r}"
