r"""Fisher geometry that a classifier induces on its latent space.

A classifier with predictive distribution :math:`p(z) \in \Delta^{K-1}` on latents :math:`z \in \mathbb{R}^d`
pulls the Fisher-Rao metric of the simplex back to the latent space. The simplex with the Fisher-Rao metric
is isometric, through :math:`p \mapsto \phi = 2\sqrt{p}`, to the positive orthant of the radius-2 sphere in
:math:`\mathbb{R}^K` (sectional curvature :math:`1/4`), so everything here is the intrinsic geometry of the
map :math:`z \mapsto 2\sqrt{p(z)}`.

Linear head, :math:`p = \mathrm{softmax}(Wz + b)` with :math:`W \in \mathbb{R}^{K \times d}`
(closed forms, :func:`fisher_pointwise`, :func:`sectional_curvature`, :func:`pullback_metric`,
:func:`third_cumulant`). With the centred class weights :math:`c_a = W_a - W^\top p`:

.. math::

    G(z) = W^\top(\mathrm{diag}\,p - pp^\top)W = \sum_a p_a c_a c_a^\top = B^\top B,
    \qquad B = (\mathrm{diag}\sqrt{p} - \sqrt{p}\,p^\top)W,\ B_a = \sqrt{p_a}\,c_a,

    T_{ijk}(z) = \partial_k G_{ij} = \sum_a p_a c_{ai} c_{aj} c_{ak}.

:math:`G` is the Hessian of :math:`\mathrm{logsumexp}(Wz + b)`, so the Christoffel symbols are
:math:`\Gamma^l_{ij} = \tfrac12 G^{lk} T_{ijk}` and the sectional curvature of the plane :math:`(u, v)` is

.. math::

    K(u, v) = \frac{1}{4}\,
    \frac{T(u,v)^\top G^{-1} T(u,v) - T(u,u)^\top G^{-1} T(v,v)}{|u|_G^2 |v|_G^2 - \langle u, v\rangle_G^2}.

Write :math:`B = U S V^\top` (thin SVD) and :math:`P = UU^\top`, the orthogonal projector onto the range of
:math:`B` in :math:`\mathbb{R}^K`. Since :math:`c_k^\top G^{-1} c_l = P_{kl}/\sqrt{p_k p_l}`, summing
:math:`K` over a :math:`G`-orthonormal frame gives the scalar curvature without forming :math:`T` or
:math:`G^{-1}`:

.. math::

    R = \sum_{a \ne b} K(e_a, e_b)
      = \frac14 \sum_{k,l} \frac{P_{kl}\,(P_{kl}^2 - P_{kk}P_{ll})}{\sqrt{p_k p_l}},

which costs :math:`O(K^2 r)` per point. The volume element is computed from the singular values of
:math:`B` (never by squaring them into :math:`G`): :math:`\tfrac12\log\det G = \sum_i \log s_i`.

Rank-deficient heads (``d > K - 1``, or a rank-deficient centred ``W``). The null space of :math:`G(z)` is
:math:`\{v : Wv \in \mathrm{span}(\mathbf 1)\}`, the directions that shift every logit equally; it does not
depend on :math:`z`. :math:`p` is therefore a function of the projection :math:`y = V_r^\top z` onto the
row space of the centred weights :math:`W - \mathbf{1}\bar W^\top` (rank :math:`r \le \min(d, K-1)`), and
every quantity here is that of the :math:`r`-dimensional Riemannian manifold in the coordinates
:math:`y` ("the range of :math:`G`"): the log-volume is :math:`\tfrac12\log\mathrm{pdet}\,G`, the scalar
curvature that of the quotient, sectional curvature is defined for planes whose projection is 2-dimensional.
The rank :math:`r` is reported (:attr:`FisherPointwise.range_rank`, summary key ``fisher_rank``).

Manifold heads (ball MLR, cosine head, any differentiable ``logits_fn``): :func:`fisher_pointwise_autograd`
and :func:`sectional_curvature_autograd` use autograd Jacobians and Hessians of
:math:`\phi(z) = 2\sqrt{p(z)} = 2\exp(\tfrac12\log\mathrm{softmax}(f(z)))` (``torch.func``, vectorised
with ``vmap``). :math:`G = J_\phi^\top J_\phi = J_f^\top(\mathrm{diag}\,p - pp^\top)J_f`, and the curvature
follows from the Gauss equation for the image of :math:`\phi` in flat :math:`\mathbb{R}^K`: with the
second fundamental form :math:`\mathrm{II}(u,v) = (I - P)\,D^2\phi(u,v)`,

.. math::

    K(u,v) = \frac{\langle \mathrm{II}(u,u), \mathrm{II}(v,v)\rangle - |\mathrm{II}(u,v)|^2}
                  {|u|_G^2|v|_G^2 - \langle u,v\rangle_G^2},
    \qquad R = \Big|\sum_a \mathrm{II}(e_a,e_a)\Big|^2 - \sum_{a,b}|\mathrm{II}(e_a,e_b)|^2.

This holds wherever :math:`J_\phi` has locally constant rank (then the image is an immersed submanifold and
:math:`D^2\phi(u,v)` has normal part :math:`\mathrm{II}(J_\phi u, J_\phi v)` for all :math:`u, v`), which is
how a head with a :math:`z`-dependent null direction (the radial direction of a cosine head) is handled: the
quantities are those of the image, computed in the range of :math:`G(z)` at each point, with a per-point
numerical rank. Latents on ``geoopt.Sphere`` are handled by evaluating the head at :math:`z/\|z\|`, which
restricts the metric to the tangent spaces of the sphere. For a linear head this route agrees with the closed
forms (tested).

Numerics. Everything is float64. A point whose smallest class probability is below ``min_prob`` is masked: its
log-volume and curvatures are NaN in the per-point arrays and excluded from summaries, and the masked fraction
is reported. The curvature formulas divide by :math:`\sqrt{p_k p_l}`; their absolute error grows like
:math:`K^2 \cdot 10^{-16}/\min p`, hence the default ``min_prob = 1e-8``. The trace :math:`\mathrm{tr}\,G =
\sum_a p_a|c_a|^2` is well conditioned and is reported at every point. Very confident networks (collapsed
latents far from the decision boundaries) can have every point masked; the summary then reports NaN for the
masked means and a masked fraction of 1.

Modules: :mod:`~lpc_geom.analysis.fisher.closed_form` (linear heads), :mod:`~lpc_geom.analysis.fisher.autograd`
(any differentiable head), :mod:`~lpc_geom.analysis.fisher.summary` (Fisher-Rao distances, the summary
figures) and :mod:`~lpc_geom.analysis.fisher.group` (the report's ``fisher`` group and its cost policy);
their public functions are importable from here.
"""

from lpc_geom.analysis.fisher._common import DEFAULT_MIN_PROB, RANK_RTOL, FisherPointwise
from lpc_geom.analysis.fisher.autograd import (
    fisher_pointwise_autograd,
    pullback_metric_autograd,
    sectional_curvature_autograd,
)
from lpc_geom.analysis.fisher.closed_form import (
    class_probabilities,
    fisher_pointwise,
    pullback_metric,
    sectional_curvature,
    third_cumulant,
)
from lpc_geom.analysis.fisher.summary import fisher_rao_distance, fisher_summary

__all__ = [
    "DEFAULT_MIN_PROB",
    "RANK_RTOL",
    "FisherPointwise",
    "class_probabilities",
    "fisher_pointwise",
    "fisher_pointwise_autograd",
    "fisher_rao_distance",
    "fisher_summary",
    "pullback_metric",
    "pullback_metric_autograd",
    "sectional_curvature",
    "sectional_curvature_autograd",
    "third_cumulant",
]
