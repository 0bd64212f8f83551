r"""Gromov-Wasserstein comparison of latent configurations, each measured in its own geometry (POT).

Two configurations :math:`X = (x_i)_{i \le n}` and :math:`Y = (y_j)_{j \le m}`, possibly living in different
spaces (Euclidean, sphere, Poincaré ball), are compared through their own distance matrices only:

.. math::

    \mathrm{GW}(X, Y) = \min_{T \in \Pi(\mathbf 1/n, \mathbf 1/m)}
        \sum_{i,j,k,l} \big(\hat C^X_{ik} - \hat C^Y_{jl}\big)^2 \, T_{ij} T_{kl},
    \qquad \hat C = C / \operatorname{mean}_{i \ne k} C_{ik},

with uniform weights and :math:`C` the geodesic distance matrix of the space the points live in
(Euclidean, ``manifold.dist`` of a geoopt manifold: great-circle distance on ``geoopt.Sphere``, hyperbolic
distance on ``geoopt.PoincareBall``). This is the square-loss objective that POT's
``ot.gromov.gromov_wasserstein2`` minimises (POT's "GW loss"; the metric of Mémoli 2011 is
:math:`\tfrac12\sqrt{\mathrm{GW}}`). It is invariant to isometries and relabelling of either configuration,
and, because each matrix is divided by its mean off-diagonal distance, to a global rescaling of either one.

The problem is non-convex and POT's conditional-gradient solver finds a local minimum that depends on the
start. :func:`gw_distance` runs it from

1. the optimal plan (``ot.emd``) for the cost of Mémoli's third lower bound,
   :math:`c_{ij} = W_1\big(\text{law of } \hat C^X_{i\cdot},\ \text{law of } \hat C^Y_{j\cdot}\big)`, which matches
   points with similar distance profiles (exactly the right matching for generic isometric configurations);
2. the product coupling :math:`\mathbf 1\mathbf 1^\top/(nm)`;
3. a known correspondence when one is given (``coupling0``: :func:`gw_hypercube` matches each class to its
   own code, :func:`compare` matches equal class labels);
4. ``restarts`` random vertices of the transport polytope (optimal plans of ``ot.emd`` for uniformly random
   costs: random permutations scaled by :math:`1/n` when :math:`n = m`),

and returns the smallest value: an upper bound on the global minimum. On noisy hypercube configurations
the product and random starts alone can miss the right matching where the lower-bound start reaches the
noise level (tests/test_transport.py). Exactly symmetric
configurations (all hypercube vertices) defeat every generic start, hence start 3.

Against the regular simplex (an ETF: all normalised distances equal to 1) the optimum is known in closed form
for :math:`n = m`: the objective equals a constant plus :math:`2\sum_i T_i^\top \hat C^Y T_i` over the rows
of :math:`T`, which is zero exactly for permutation couplings, so

.. math::

    \mathrm{GW}(\text{simplex}_n, Y) = \frac{1}{n^2}\sum_{j \ne l}(1 - \hat C^Y_{jl})^2
    = \frac{n-1}{n}\,\mathrm{CV}^2, \qquad \mathrm{CV} = \frac{\operatorname{std}_{j\ne l} C^Y_{jl}}
    {\operatorname{mean}_{j\ne l} C^Y_{jl}},

the squared coefficient of variation of the pairwise distances (population standard deviation). For
:math:`n` i.i.d. standard Gaussian points in :math:`\mathbb R^d` this is about
:math:`\tfrac{n-1}{n}\,\mathrm{Var}(\chi_d)/\mathbb E[\chi_d]^2 \approx \tfrac{n-1}{n}\cdot\tfrac{1}{2d}`
(random points in high dimension look like a simplex); e.g. :math:`0.025` for :math:`d = 20`.
"""

from __future__ import annotations

import math

import geoopt
import numpy as np
import ot
import torch
from scipy.spatial.distance import cdist

from lpc_geom.analysis._validation import (
    UndefinedMetricError,
    check_bool,
    check_curvature,
    check_int,
    check_latents,
    check_seed,
    encode_labels,
)
from lpc_geom.analysis.geometry import class_centres as geometry_class_centres
from lpc_geom.analysis.geometry import class_means, geometry_from_manifold
from lpc_geom.analysis.hypercube import class_codes
from lpc_geom.analysis.options import AnalyzeOptions

__all__ = [
    "check_points_on_manifold",
    "class_centres",
    "compare",
    "distance_matrix",
    "gw_distance",
    "gw_etf",
    "gw_hypercube",
    "gw_to_simplex_closed_form",
    "hypercube_codes",
    "regular_simplex",
    "transport_summary",
]

_DTYPE = torch.float64
DEFAULT_RESTARTS = AnalyzeOptions.gw_restarts
"""Default number of random solver starts (:class:`~lpc_geom.analysis.options.AnalyzeOptions`)."""


def _as_points(x, name: str) -> torch.Tensor:
    """A configuration of at least 2 points as a float64 CPU tensor (arrays checked by
    :func:`~lpc_geom.analysis._validation.check_latents`)."""
    t = check_latents(x, name=name, min_dim=1, min_samples=1)[0].cpu()
    if t.shape[0] < 2:
        raise ValueError(f"{name} must contain at least 2 points, got {t.shape[0]}")
    return t


def _is_hyperbolic_ball(manifold) -> bool:
    return isinstance(manifold, geoopt.Stereographic) and float(manifold.k) < 0


def check_points_on_manifold(x, manifold, name: str = "points") -> None:
    """Raise ``ValueError`` unless every row of ``x`` lies on ``manifold``.

    ``None`` and ``geoopt.Euclidean`` accept any finite point. A curvature parameter that is non-finite or
    of the wrong sign (``PoincareBall(c=-1)``) is refused first
    (:func:`~lpc_geom.analysis._validation.check_curvature`). For a Poincaré ball
    (``geoopt.PoincareBall`` or ``geoopt.Stereographic`` with :math:`k < 0`) the norm must be strictly below
    the radius :math:`1/\\sqrt{-k}`; other manifolds use geoopt's ``check_point_on_manifold`` with its default
    tolerances (unit norm within 1e-5 on ``geoopt.Sphere``).

    Parameters
    ----------
    x : array_like or Tensor, shape (n, d)
    manifold : geoopt.Manifold or None
    name : str
        Used in the error message.
    """
    if manifold is None or isinstance(manifold, geoopt.Euclidean):
        return
    if not isinstance(manifold, geoopt.Manifold):
        raise TypeError(f"manifold must be a geoopt manifold or None, got {type(manifold).__name__}")
    check_curvature(manifold)
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=_DTYPE)
    if _is_hyperbolic_ball(manifold):
        radius = 1.0 / math.sqrt(-float(manifold.k))
        outside = t.norm(dim=-1) >= radius
        if outside.any():
            raise ValueError(
                f"{int(outside.sum())} of {t.shape[0]} {name} lie on or outside the Poincaré ball of "
                f"radius {radius:g} (largest norm {float(t.norm(dim=-1).max()):.6g})"
            )
        return
    ok, reason = manifold.check_point_on_manifold(t.to(_DTYPE), explain=True)
    if not ok:
        raise ValueError(f"{name} are not on the manifold {manifold.name}: {reason}")


def distance_matrix(x, manifold=None) -> np.ndarray:
    r"""Pairwise geodesic distances of a configuration, float64, zero diagonal, symmetric.

    Euclidean (``manifold`` None or ``geoopt.Euclidean``): ``ot.dist(x, x, metric="euclidean")`` (not POT's
    default squared distance). Otherwise ``manifold.dist`` (geoopt) on all pairs; its diagonal is set to 0
    because geoopt's ``Sphere.dist`` clamps the cosine to :math:`1 - 10^{-7}` and returns
    :math:`4.5\cdot10^{-4}` for identical points.

    Parameters
    ----------
    x : array_like or Tensor, shape (n, d)
        Points, on ``manifold`` (checked with :func:`check_points_on_manifold`).
    manifold : geoopt.Manifold, optional

    Returns
    -------
    ndarray, shape (n, n)
    """
    t = _as_points(x, "points")
    check_points_on_manifold(t, manifold)
    if manifold is None or isinstance(manifold, geoopt.Euclidean):
        C = ot.dist(t.numpy(), t.numpy(), metric="euclidean")
    else:
        with torch.no_grad():
            C = manifold.dist(t.unsqueeze(1), t.unsqueeze(0)).numpy()
    C = 0.5 * (C + C.T)
    np.fill_diagonal(C, 0.0)
    if not np.isfinite(C).all():
        raise ValueError("non-finite pairwise distances (points too close to the boundary of the ball?)")
    return C


def _normalised(C: np.ndarray, name: str) -> np.ndarray:
    n = C.shape[0]
    scale = C.sum() / (n * (n - 1))
    if not scale > 0:
        raise UndefinedMetricError(
            f"{name} has zero extent (all points coincide): a scale-normalised comparison is undefined"
        )
    return C / scale


def _lower_bound_cost(Ca: np.ndarray, Cb: np.ndarray) -> np.ndarray:
    r""":math:`c_{ij} = W_1(\text{distances from } i, \text{distances from } j)` for uniform weights.

    Both empirical distributions are evaluated as quantile functions on the merged grid of breakpoints
    :math:`\{k/n\} \cup \{l/m\}`, where both are constant, so the integral of their difference is exact.
    """
    n, m = Ca.shape[0], Cb.shape[0]
    grid = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    width = np.diff(grid, prepend=0.0)
    mid = grid - width / 2
    qa = np.sort(Ca, axis=1)[:, np.minimum((mid * n).astype(int), n - 1)]
    qb = np.sort(Cb, axis=1)[:, np.minimum((mid * m).astype(int), m - 1)]
    return cdist(qa, qb, metric="minkowski", p=1, w=width)


def _swap(Ca: np.ndarray, Cb: np.ndarray) -> bool:
    """Whether (Cb, Ca) is the canonical orientation: smaller first, then smaller sorted distances."""
    if Ca.shape[0] != Cb.shape[0]:
        return Ca.shape[0] > Cb.shape[0]
    sa, sb = np.sort(Ca, axis=None), np.sort(Cb, axis=None)
    diff = np.flatnonzero(sa != sb)
    return bool(diff.size) and sa[diff[0]] > sb[diff[0]]


def gw_distance(
    a,
    b,
    *,
    manifold_a=None,
    manifold_b=None,
    restarts: int = DEFAULT_RESTARTS,
    seed: int = 0,
    coupling0=None,
) -> float:
    r"""Gromov-Wasserstein discrepancy between two point configurations, each in its own geometry.

    .. math::

        \mathrm{GW} = \min_{T \in \Pi(\mathbf 1/n, \mathbf 1/m)}
            \sum_{ijkl}(\hat C^a_{ik} - \hat C^b_{jl})^2 T_{ij}T_{kl},
        \qquad \hat C = C/\operatorname{mean}_{i\ne k}C_{ik}

    (module notes), solved with ``ot.gromov.gromov_wasserstein2(..., loss_fun="square_loss")`` from the
    lower-bound coupling, the product coupling, ``coupling0`` if given and ``restarts`` random vertex
    couplings; the smallest value is returned. Values are :math:`\ge 0`; 0 for isometric configurations up
    to scale; for :math:`n = m` against a regular simplex the value is :math:`\tfrac{n-1}{n}\mathrm{CV}^2`
    of the other configuration's distances (:func:`gw_to_simplex_closed_form`).

    The value is a local solver's, an upper bound on the global minimum. Highly symmetric configurations
    (hypercube vertices: every point has the same distance profile, so the lower-bound cost is constant)
    leave the solver in local minima from every generic start (a cube against a permuted copy stays well
    above 0, however many random starts); pass a known correspondence as ``coupling0`` there, as
    :func:`gw_hypercube` and :func:`compare` do. The problem is solved in a canonical orientation (the
    smaller configuration first; for equal sizes the one with the lexicographically smaller sorted distances),
    so ``gw_distance(a, b) == gw_distance(b, a)``.

    Parameters
    ----------
    a : array_like, shape (n, d_a)
    b : array_like, shape (m, d_b)
        At least 2 points each, not all coincident.
    manifold_a, manifold_b : geoopt.Manifold, optional
        Geometry of each configuration (None: Euclidean). Points are checked to lie on it.
    restarts : int
        Number of random starts in addition to the lower-bound and product couplings.
    seed : int
        Seed of the random starts.
    coupling0 : array_like, shape (n, m), optional
        An additional start: a coupling with uniform marginals (rows sum to 1/n, columns to 1/m), e.g. a
        known correspondence ``np.eye(n) / n``.

    Returns
    -------
    float
        The smallest value the solver reached over all starts, :math:`\ge 0`.

    Raises
    ------
    ValueError
        Fewer than 2 points, non-finite values, points off their manifold (e.g. outside the ball), or a
        ``coupling0`` that is not a coupling of the uniform weights.
    UndefinedMetricError
        A configuration of zero extent (all points coincide); a ``ValueError`` subclass.
    """
    restarts, seed = check_int(restarts, "restarts", minimum=0), check_seed(seed)
    Ca = _normalised(distance_matrix(a, manifold_a), "configuration a")
    Cb = _normalised(distance_matrix(b, manifold_b), "configuration b")
    n, m = Ca.shape[0], Cb.shape[0]
    p, q = ot.unif(n), ot.unif(m)
    extra = []
    if coupling0 is not None:
        G = np.asarray(coupling0, dtype=np.float64)
        if G.shape != (n, m) or (G < 0).any() or not (np.allclose(G.sum(1), p) and np.allclose(G.sum(0), q)):
            raise ValueError(f"coupling0 must be an ({n}, {m}) coupling with uniform marginals")
        extra.append(G)
    if _swap(Ca, Cb):
        Ca, Cb, p, q, n, m = Cb, Ca, q, p, m, n
        extra = [G.T for G in extra]
    rng = np.random.default_rng(seed)
    starts = [ot.emd(p, q, _lower_bound_cost(Ca, Cb)), np.outer(p, q), *extra]
    starts += [ot.emd(p, q, rng.random((n, m))) for _ in range(restarts)]
    best = math.inf
    for G0 in starts:
        value = ot.gromov.gromov_wasserstein2(
            Ca, Cb, p, q, loss_fun="square_loss", symmetric=True, G0=G0, max_iter=10_000
        )
        best = min(best, float(value))
    # The objective is a non-negative sum; POT evaluates it as a difference of terms, so rounding can leave
    # a value of about -1e-17 at an exact match.
    return max(best, 0.0)


def gw_to_simplex_closed_form(x, manifold=None) -> float:
    r"""Exact GW discrepancy between a configuration and the regular simplex with as many vertices.

    :math:`\frac{1}{n^2}\sum_{j\ne l}(1 - \hat C_{jl})^2 = \frac{n-1}{n}\mathrm{CV}^2` with
    :math:`\hat C` the mean-normalised distance matrix of ``x`` (module notes for the proof that the optimum
    is attained at permutation couplings).

    Parameters
    ----------
    x : array_like, shape (n, d)
    manifold : geoopt.Manifold, optional

    Returns
    -------
    float
    """
    C = _normalised(distance_matrix(x, manifold), "configuration")
    n = C.shape[0]
    off = ~np.eye(n, dtype=bool)
    return float(np.square(1.0 - C[off]).sum() / n**2)


def regular_simplex(K: int) -> np.ndarray:
    """Vertices of the regular simplex with K vertices, centred: :math:`e_k - \\mathbf 1/K` in R^K.

    Parameters
    ----------
    K : int
        At least 2.

    Returns
    -------
    ndarray, shape (K, K); all pairwise distances equal :math:`\\sqrt 2`.
    """
    if K < 2:
        raise ValueError(f"a simplex needs at least 2 vertices, got {K}")
    return np.eye(K) - 1.0 / K


def hypercube_codes(class_means, *, centre: bool = False) -> np.ndarray:
    r"""Nearest hypercube-vertex configuration: the sign codes :math:`s_c = \mathrm{sign}(\mu_c) \in \{\pm1\}^d`.

    For a fixed scale :math:`a`, :math:`a\,\mathrm{sign}(\mu_c)` is the vertex of the cube
    :math:`\{\pm a\}^d` nearest to :math:`\mu_c`; GW is scale invariant, so the codes suffice. The codes are
    taken from the uncentred means by default: under latent point collapse each unit settles on two values
    symmetric about 0, and centring would move that origin. ``centre=True`` uses
    :math:`\mu_c - \bar\mu`. Zero coordinates get the code +1. The test is basis dependent: a rotated cube
    does not produce cube codes.

    Parameters
    ----------
    class_means : array_like, shape (K, d)
    centre : bool

    Returns
    -------
    ndarray, shape (K, d), entries ±1.
    """
    mu = _as_points(class_means, "class_means").numpy()
    if centre:
        mu = mu - mu.mean(axis=0, keepdims=True)
    return np.where(mu < 0, -1.0, 1.0)


def class_centres(latents, labels, manifold=None) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-class centres of latents: the same centres as :func:`lpc_geom.analyze` uses.

    See :mod:`lpc_geom.analysis.geometry` for the definitions and why: the mean (Euclidean), the
    normalised ambient mean (``geoopt.Sphere``; an error if that mean is ~0, i.e. the class is spread
    symmetrically over the sphere), and ``expmap0`` of the mean of ``logmap0`` (stereographic models:
    ``geoopt.PoincareBall``, ``SphereProjection``, ``Stereographic``).

    Parameters
    ----------
    latents : array_like, shape (N, d)
        On ``manifold``.
    labels : array_like, shape (N,)
        Integers, integral floats, booleans or strings
        (:func:`~lpc_geom.analysis._validation.encode_labels`).
    manifold : geoopt.Manifold, optional

    Returns
    -------
    classes : ndarray, shape (C,)
        Distinct labels in the analyzers' order (sorted; integer strings in numeric order).
    centres : ndarray, shape (C, d)

    Raises
    ------
    ValueError
        Bad shapes, points off the manifold, or a degenerate spherical mean.
    TypeError
        A manifold other than Euclidean, Sphere or a stereographic model.
    """
    geom = geometry_from_manifold(manifold)
    z = _as_points(latents, "latents")
    check_points_on_manifold(z, manifold, "latents")
    enc = encode_labels(labels, z.shape[0], min_classes=1)
    classes = enc.classes
    means, _ = class_means(geom.to_chart(z), torch.from_numpy(enc.codes), enc.n_classes)
    centres = geometry_class_centres(geom, means)
    undefined = torch.isnan(centres).any(dim=1)
    if bool(undefined.any()):
        raise UndefinedMetricError(
            f"class {classes[int(torch.nonzero(undefined)[0, 0])]}: the Euclidean mean of its points on the "
            "sphere is ~0, so it has no centre"
        )
    return classes, centres.numpy()


def compare(
    latents_a,
    labels_a,
    latents_b,
    labels_b,
    *,
    manifold_a=None,
    manifold_b=None,
    restarts: int = DEFAULT_RESTARTS,
    seed: int = 0,
) -> float:
    """GW discrepancy between two models' class-centre configurations, each in its own geometry.

    Class centres are taken with :func:`class_centres` and compared with :func:`gw_distance` (uniform weight
    per class; the two label sets need not match or have the same size). When both models have the same
    classes, the class-to-class matching is one more solver start; the value is still the minimum over all
    starts, so the correspondence is not imposed.

    Parameters
    ----------
    latents_a, latents_b : array_like, shapes (N_a, d_a), (N_b, d_b)
    labels_a, labels_b : array_like of int
        True labels; at least two classes each.
    manifold_a, manifold_b : geoopt.Manifold, optional
        Latent geometry of each model (None: Euclidean).
    restarts, seed
        As in :func:`gw_distance`.

    Returns
    -------
    float
    """
    classes_a, ca = class_centres(latents_a, labels_a, manifold_a)
    classes_b, cb = class_centres(latents_b, labels_b, manifold_b)
    same = classes_a.shape == classes_b.shape and bool((classes_a == classes_b).all())
    return gw_distance(
        ca,
        cb,
        manifold_a=manifold_a,
        manifold_b=manifold_b,
        restarts=restarts,
        seed=seed,
        coupling0=np.eye(len(ca)) / len(ca) if same else None,
    )


def gw_etf(class_means, *, manifold=None, restarts: int = DEFAULT_RESTARTS, seed: int = 0) -> float:
    r"""GW discrepancy between class means (in their own geometry) and the regular simplex with K vertices.

    Equals :math:`\tfrac{K-1}{K}\mathrm{CV}^2` of the pairwise class-mean distances (module notes): 0 for an
    ETF (all distances equal), and 0 for any configuration when :math:`K = 2`.

    Parameters
    ----------
    class_means : array_like, shape (K, d)
        On ``manifold``.
    manifold : geoopt.Manifold, optional
    restarts, seed
        As in :func:`gw_distance`.

    Returns
    -------
    float
        :math:`\ge 0`; 0 when all pairwise distances of the class means are equal.

    Raises
    ------
    UndefinedMetricError
        All class means coincide.
    """
    mu = _as_points(class_means, "class_means")
    return gw_distance(mu, regular_simplex(mu.shape[0]), manifold_a=manifold, restarts=restarts, seed=seed)


def gw_hypercube(
    class_means, *, manifold=None, restarts: int = DEFAULT_RESTARTS, seed: int = 0, centre_codes: bool = False
) -> float:
    r"""GW discrepancy between class means and their nearest hypercube-vertex configuration.

    The reference configuration is :func:`hypercube_codes` (sign codes, uncentred by default) with Euclidean
    distances, :math:`2\sqrt{\text{Hamming}}` between codes. 0 when the means sit on the vertices of an
    axis-aligned cube centred at the origin (up to isometry of the whole configuration); classes sharing a
    code are at distance 0 in the reference. The solver is also started from the matching of each class to
    its own code (cube configurations are too symmetric for generic starts, see :func:`gw_distance`).

    Parameters
    ----------
    class_means : array_like, shape (K, d)
        On ``manifold``; the codes are read from its coordinates (ball or sphere coordinates included).
    manifold : geoopt.Manifold, optional
    restarts, seed
        As in :func:`gw_distance`.
    centre_codes : bool
        Codes of the centred means (see :func:`hypercube_codes`).

    Returns
    -------
    float
        :math:`\ge 0`; 0 when the means are, up to isometry and scale, their sign codes.

    Raises
    ------
    UndefinedMetricError
        All class means share one sign code (the reference is a single vertex), or all class means coincide.
    """
    mu = _as_points(class_means, "class_means")
    codes = hypercube_codes(mu, centre=check_bool(centre_codes, "centre_codes"))
    if (codes == codes[0]).all():
        raise UndefinedMetricError(
            "all class means share one sign code: the hypercube reference configuration is a single vertex"
        )
    K = mu.shape[0]
    return gw_distance(
        mu, codes, manifold_a=manifold, restarts=restarts, seed=seed, coupling0=np.eye(K) / K
    )


def transport_summary(
    class_means,
    *,
    manifold=None,
    restarts: int = DEFAULT_RESTARTS,
    seed: int = 0,
    centre_codes: bool = False,
) -> dict[str, float]:
    r"""GW discrepancies of a class-mean configuration to two reference geometries (for ``analyze``).

    Keys: ``gw_etf`` (:func:`gw_etf`, against the regular simplex with the same K) and ``gw_hypercube``
    (:func:`gw_hypercube`, against the sign-code configuration). Both are GW square-loss values on
    mean-normalised distance matrices, :math:`\ge 0`, 0 for an exact match up to isometry and scale.
    To record one key as undefined while keeping the other, call :func:`gw_etf` and :func:`gw_hypercube`
    separately.

    Parameters
    ----------
    class_means : array_like, shape (K, d)
        Class centres (e.g. from :func:`class_centres`), on ``manifold``; K >= 2.
    manifold : geoopt.Manifold, optional
    restarts, seed
        As in :func:`gw_distance`.
    centre_codes : bool
        Take the sign codes of the centred means (see :func:`hypercube_codes`).

    Returns
    -------
    dict[str, float]
        ``gw_etf`` and ``gw_hypercube``.

    Raises
    ------
    ValueError
        Fewer than 2 classes, non-finite values, points off the manifold.
    UndefinedMetricError
        As :func:`gw_etf` or :func:`gw_hypercube`.
    """
    kwargs = {"manifold": manifold, "restarts": restarts, "seed": seed}
    return {
        "gw_etf": gw_etf(class_means, **kwargs),
        "gw_hypercube": gw_hypercube(class_means, centre_codes=centre_codes, **kwargs),
    }


def transport_group(ctx, out) -> None:
    """The ``transport`` group of :func:`~lpc_geom.analysis.analyze`: ``gw_etf`` and ``gw_hypercube`` of the
    class centres."""
    s, o = ctx.stats, ctx.options
    keys = ("gw_etf", "gw_hypercube")
    # Coordinates that are 0 in exact arithmetic (the hypercube figures' zero test) are set to 0, so that the
    # sign codes gw_hypercube reads agree with theirs, in memory and streamed.
    chart = torch.where(class_codes(s) == 0, torch.zeros_like(s.means), s.means)
    centres = s.geometry.from_chart(chart)
    bad = ~torch.isfinite(centres).all(dim=1)
    if s.geometry.kind == "stereographic" and s.geometry.k < 0:
        bad |= (centres * centres).sum(dim=1) * (-s.geometry.k) >= 1.0
    if bool(bad.any()):
        names = ", ".join(repr(c) for c in s.classes[bad.cpu().numpy()][:5].tolist())
        why = (
            f"the class centre of {names} is undefined (on the sphere: mean direction ~0; on the ball: it rounds "
            "onto the boundary)"
        )
        for key in keys:
            out.undefine(key, why)
        return
    c = centres.cpu().numpy()
    manifold = ctx.manifold
    out.attempt("gw_etf", lambda: gw_to_simplex_closed_form(c, manifold))
    out.attempt("gw_hypercube", lambda: gw_hypercube(c, manifold=manifold, restarts=o.gw_restarts, seed=o.seed))
