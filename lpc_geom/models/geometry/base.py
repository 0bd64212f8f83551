"""The common base of the geometry heads and the dispatch from a geoopt manifold to a head.

Each concrete head declares, in its class statement, the geometry name it answers to, the geoopt manifold
classes it serves and how it describes them::

    class SphereHead(ManifoldHead, geometry="sphere", manifolds=(geoopt.Sphere,),
                     supports=("geoopt.Sphere / geoopt.SphereExact without a subspace constraint",)):

Declaring it registers it (:data:`GEOMETRY_HEADS`, and its row factory :meth:`ManifoldHead.from_row` in
:data:`lpc_geom.models.build.HEADS`), so this module imports none of its subclasses.

``ManifoldHead(in_dim, latent_dim, num_classes, manifold=M, **options)`` builds the head that belongs to the
geoopt manifold ``M`` (the same pattern as ``geoopt.Stiefel(canonical=...)``, whose constructor returns
the concrete subclass): calling the base class returns the registered head serving ``M``, and every one of
them is an instance of :class:`ManifoldHead`. Manifolds without a sound head are refused with a
:class:`ValueError` that lists what is supported.
"""

from __future__ import annotations

from typing import ClassVar

import geoopt
from torch import nn

from lpc_geom.ablation import ROWS, Row
from lpc_geom.models.build import register_head
from lpc_geom.models.geometry.checks import project_manifold_parameters

#: The head class of each curved or constrained geometry, in the order they were declared (its keyword-only
#: parameters are its options).
GEOMETRY_HEADS: dict[str, type[ManifoldHead]] = {}

_EUCLIDEAN_HINT = (
    "Euclidean latents are the reference LPC head, built by lpc_geom.models.heads (geometry 'euclidean'); "
    "ManifoldHead only builds curved or constrained heads"
)


def supported_manifolds() -> tuple[str, ...]:
    """What :func:`head_class_for` accepts, in the words of its error message (one line per declaration)."""
    return tuple(f"{line} ({cls.__name__})" for cls in GEOMETRY_HEADS.values() for line in cls.supports)


def _unsupported(manifold: object, why: str) -> ValueError:
    listing = "\n  - ".join(supported_manifolds())
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
        The registered head whose ``manifolds`` contain the type of ``manifold`` and which does not refuse
        it (:meth:`ManifoldHead.refusal`): :class:`~.sphere.SphereHead`, :class:`~.poincare.PoincareHead`
        or :class:`~.stiefel.StiefelHead` among the built-in ones.

    Raises
    ------
    ValueError
        For anything else; the message lists the supported manifolds. A learnable
        ``geoopt.Stereographic`` is refused because its raw ``k`` can cross zero during training (the
        hyperbolic formulas need ``k < 0``); ``geoopt.PoincareBall(c, learnable=True)`` keeps ``c > 0``
        through a softplus and is the supported way to learn the curvature.
    """
    if manifold is None:
        raise _unsupported(manifold, "a manifold is required (pass manifold=geoopt.PoincareBall(), ...)")
    if isinstance(manifold, type):
        raise _unsupported(manifold, f"pass an instance, e.g. {manifold.__name__}(), not the class")
    if isinstance(manifold, geoopt.Euclidean):
        raise _unsupported(manifold, _EUCLIDEAN_HINT)
    for cls in GEOMETRY_HEADS.values():
        if isinstance(manifold, cls.manifolds):
            why = cls.refusal(manifold)
            if why is not None:
                raise _unsupported(manifold, why)
            return cls
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

    A subclass declared with ``geometry=NAME, manifolds=(geoopt classes), supports=(descriptions)``
    registers itself under ``NAME`` (see the module docstring); one declared without them (a variant of
    a registered head) is not registered.

    Parameters
    ----------
    in_dim : int
        Feature size of the backbone (``backbone.out_dim``).
    latent_dim : int
        Dimension ``d`` of the latents.
    num_classes : int
        Number of classes ``K``.
    manifold : geoopt.Manifold
        Which head to build: see :func:`supported_manifolds` and :func:`head_class_for`.
    **options
        Passed on to the concrete head.

    Examples
    --------
    >>> head = ManifoldHead(64, 16, 10, manifold=geoopt.PoincareBall(c=1.0, learnable=True))
    >>> type(head).__name__, isinstance(head, ManifoldHead)
    ('PoincareHead', True)
    """

    geometry: ClassVar[str] = ""
    #: The geoopt manifold classes the head serves (``isinstance`` against them selects it).
    manifolds: ClassVar[tuple[type, ...]] = ()
    #: One description per kind of manifold served, for the error that lists the supported ones.
    supports: ClassVar[tuple[str, ...]] = ()
    manifold: geoopt.Manifold | None
    classifier: nn.Module

    def __init_subclass__(cls, *, geometry: str | None = None, manifolds: tuple[type, ...] = (),
                          supports: tuple[str, ...] = (), **kwargs):
        super().__init_subclass__(**kwargs)
        if geometry is None:
            return
        if not manifolds or not supports:
            raise TypeError(f"{cls.__name__}: a geometry head declares the manifolds it serves and their "
                            "descriptions (manifolds=..., supports=...)")
        key = geometry.lower()
        if key in GEOMETRY_HEADS or key == "euclidean":
            raise ValueError(f"{cls.__name__}: geometry {geometry!r} is already declared "
                             f"(declared: euclidean, {', '.join(GEOMETRY_HEADS)})")
        cls.geometry, cls.manifolds, cls.supports = key, tuple(manifolds), tuple(supports)
        GEOMETRY_HEADS[key] = cls
        register_head(key, cls.from_row)

    def __new__(cls, *args, **kwargs):
        if cls is ManifoldHead:
            manifold = kwargs["manifold"] if "manifold" in kwargs else (args[3] if len(args) > 3 else None)
            cls = head_class_for(manifold)
        # Python then calls ``cls.__init__`` with the same arguments (the result is a ManifoldHead).
        return super().__new__(cls)

    @classmethod
    def refusal(cls, manifold: geoopt.Manifold) -> str | None:
        """Why this head cannot serve ``manifold``, an instance of one of its ``manifolds`` (None: it can)."""
        return None

    @classmethod
    def from_row(cls, row: Row, in_dim: int, num_classes: int, *, latent_dim: int | None = None,
                 bias: bool = False, **options) -> ManifoldHead:
        """The head factory of :data:`lpc_geom.models.build.HEADS`: this head in place of a row's linear
        penultimate layer.

        Parameters
        ----------
        row : Row
            An ablation row with a linear penultimate layer (the rows without one exist only in Euclidean
            geometry).
        in_dim, num_classes : int
            Feature size and number of classes.
        latent_dim : int, optional
            Latent dimension; default ``row.latent_dim(num_classes)``.
        bias : bool, default False
            The Euclidean classifier's bias (``TrainConfig.classifier_bias``); not used: a geometry head
            takes its biases from its own ``options``.
        **options
            Keyword options of the head (``TrainConfig.geometry_options``).

        Raises
        ------
        ValueError
            For a row without a linear penultimate layer (the message lists the rows with one).
        """
        if row.penultimate != "linear":
            rows = ", ".join(name for name, r in ROWS.items() if r.penultimate == "linear")
            raise ValueError(f"geometry {cls.geometry!r} replaces a linear penultimate layer; row {row.name} "
                             f"has none (use a row with one: {rows})")
        return cls(in_dim, latent_dim or row.latent_dim(num_classes), num_classes, **options)

    def _apply(self, fn, recurse=True):
        # A float32 unit vector converted to float64 is unit only to float32 accuracy: re-project the
        # manifold parameters that a dtype (or device) conversion left off their manifolds.
        super()._apply(fn, recurse)
        project_manifold_parameters(self)
        return self

    def extra_repr(self) -> str:
        return f"geometry={self.geometry!r}"
