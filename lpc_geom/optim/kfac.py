r"""K-FAC: a Kronecker-factored natural-gradient preconditioner that composes with any optimiser.

(Also :class:`DiagonalFisher`, the diagonal natural gradient on the same statistics machinery.)

The preconditioner only rewrites ``.grad``; the optimiser that follows (``torch.optim.SGD``/``AdamW``,
``geoopt.optim.RiemannianSGD``/``RiemannianAdam``) is unchanged. For a manifold parameter the
optimiser receives the preconditioned *Euclidean* gradient and itself projects it to the tangent space
and retracts. One training step reads::

    precond = KFAC(model, fisher="mc", damping=1e-3, update_freq=10, lr=lr)
    out = model(x)                               # forward hooks record layer inputs and output edges
    precond.update_statistics(out.logits, y)     # Fisher statistics; touches no .grad
    loss = objective(out, y)                     # may contain terms outside the Fisher (LPC compression)
    loss.backward()
    precond.step()                               # .grad <- preconditioned gradient
    optimizer.step()

Mathematics
-----------
A supported layer is an affine map applied at positions ``t`` of each example ``n`` (one position for a
Linear layer on ``(N, d)`` inputs, the output locations for a convolution), ``s_{n,t} = W \bar a_{n,t}``
with the bias folded in as the homogeneous coordinate ``\bar a = (a, 1)``. Its Fisher block is

.. math::

    F = \mathbb E_n \mathbb E_{y \sim q_n}
        \Big[\operatorname{vec}(\nabla_W \ell_n)\operatorname{vec}(\nabla_W \ell_n)^\top\Big],
    \qquad \nabla_W \ell_n = \sum_t g_{n,t} \bar a_{n,t}^\top,
    \quad g_{n,t} = \partial(-\log q_n(y)) / \partial s_{n,t},

and K-FAC approximates it by a Kronecker product (Martens & Grosse 2015; for convolutions the KFC
factors of Grosse & Martens 2016, in which the position sum lives in ``G``):

.. math::

    F \approx G \otimes A, \qquad
    A = \mathbb E_{n,t}\big[\bar a_{n,t} \bar a_{n,t}^\top\big], \qquad
    G = \mathbb E_n \mathbb E_{y}\Big[\sum_t g_{n,t} g_{n,t}^\top\Big]

(row-major ``vec`` of the ``(d_out, d_in + 1)`` gradient matrix). ``g`` is the gradient of *one*
example's loss, so ``G`` does not depend on the batch size nor on how the training loss is reduced.
The distribution ``q_n`` over labels defines the Fisher type:

* ``"exact"``: the true Fisher, ``y`` summed over all ``K`` classes with weights ``p_n = softmax(logits_n)``.
  With ``H_n = \operatorname{diag}(p_n) - p_n p_n^\top = \sum_k v_{nk} v_{nk}^\top``,
  ``v_{nk} = \sqrt{p_{nk}}(e_k - p_n)``, it costs one batched backward with ``K`` cotangents.
* ``"mc"``: the true Fisher estimated with ``mc_samples`` labels drawn from ``p_n`` (one extra backward).
* ``"empirical"``: ``y`` the observed label. This is the *empirical* Fisher, a different matrix
  (the uncentred covariance of the observed gradients), not an estimate of the true Fisher.

Statistics come only from this separate backward of the cross-entropy cotangent, never from the
training loss, so extra loss terms (the LPC compression ``gamma * ||z||^2``) enter ``.grad`` but not
``F``, and nothing is counted twice.

Both factors are exponential moving averages (decay ``ema_decay``). The gradient matrix ``\nabla W``
is preconditioned with factored Tikhonov damping (Martens & Grosse 2015, section 6.3),

.. math::

    V = \Big(G + \frac{\sqrt\lambda}{\pi} I\Big)^{-1} \nabla W \big(A + \pi\sqrt\lambda\, I\big)^{-1},
    \qquad \pi = \sqrt{\frac{\operatorname{tr} A / \dim A}{\operatorname{tr} G / \dim G}},

whose two damped inverses are recomputed every ``update_freq`` steps (Cholesky; retried in float64
when the factorisation fails), so that a step costs two matrix products per layer. ``pi`` makes the
result invariant to the arbitrary scale split between ``A`` and ``G``. With ``damping_mode="eigen"``
the factors are eigendecomposed instead, ``A = Q_A \Lambda_A Q_A^\top``, ``G = Q_G \Lambda_G Q_G^\top``
(``eigh``, float64 retry), and

.. math::

    V = Q_G \frac{Q_G^\top \nabla W Q_A}{\lambda_G \lambda_A^\top + \lambda} Q_A^\top
      = \operatorname{vec}^{-1}\big((G \otimes A + \lambda I)^{-1} \operatorname{vec} \nabla W\big),

the exact damped inverse of the Kronecker product (four products per step).

Low-rank preconditioning. For a layer applied at ``R = N T`` rows the batch gradient is
``\nabla W = g^\top \bar a`` with ``g`` the ``(R, d_out)`` output gradients and ``\bar a`` the ``(R, d_in + 1)``
inputs of the *training* backward, so in the factored mode

.. math::

    V = G_\lambda^{-1} \nabla W A_\lambda^{-1} = \big(G_\lambda^{-1} g^\top\big)\big(\bar a A_\lambda^{-1}\big),

``R (d_{out}^2 + d_{in}^2 + d_{out} d_{in})`` multiply-adds instead of ``d_{out} d_{in} (d_{out} + d_{in})``:
fewer whenever ``R`` is below their ratio, which lies between ``2/3`` and ``1`` times
``\min(d_{out}, d_{in})``. A tensor hook on the layer output keeps ``g`` during the training backward (not during the
Fisher backward) when ``R`` is small enough, and :meth:`KFAC.step` uses the factored form only after checking
that ``.grad`` really is ``g^\top \bar a``: with fixed Gaussian probes ``U`` (``d_out x 4``) and ``P``
(``(d_in + 1) x 4``) it requires ``|U^\top \nabla W P - (g U)^\top (\bar a P)| \le 2\gamma (|g||U|)^\top(|\bar a||P|)``
elementwise, ``\gamma = (R + d_{out} + d_{in} + 1)\,\epsilon``, the rounding bound of the two products. A penalty
on the weight, gradient clipping, a DDP average or a backward the hooks did not see breaks the equality and
the layer is preconditioned densely; the two forms then agree to rounding.

Finally the update is
KL-clipped (Ba et al. 2017): with ``\eta`` the optimiser's learning rate, all ``V`` are scaled by
``\nu = \min(1, \sqrt{\kappa / (\eta^2 \sum_l \langle V_l, \nabla W_l \rangle)})`` so that the
second-order estimate of the KL divergence of an SGD step, ``\eta^2 \langle V, F V\rangle \approx
\eta^2 \langle V, \nabla W \rangle``, stays below ``\kappa = `` ``kl_clip``.

Implementation notes
--------------------
Layer outputs are captured as autograd *gradient edges* (``torch.autograd.graph.get_gradient_edge``) at
the moment the layer returns, before any in-place activation (``ReLU(inplace=True)``) rewrites the
tensor; the Fisher backward asks ``torch.autograd.grad`` for the gradient at those edges, which is the
gradient with respect to the pre-activation as the layer produced it. Full module backward hooks,
which break on in-place activations, are not used. Gradient accumulation: statistics of all
``update_statistics`` calls between two ``step`` calls are pooled (a running mean and its count) before they
enter the moving average, so ``k`` micro-batches give the same factors as one batch of their union. Cost:
each Gram product is one ``addmm`` into a buffer kept from step to step, with the bias column of ``A``
filled from the column sums of ``a`` (no concatenated ``abar``); for a factor larger than its batch (``R``
rows at most its size, the MLP layers at batch 128) the product waits for :meth:`KFAC.step` and goes
straight into the moving average, ``A <- beta A + (1 - beta) abar^T abar / R``, in the same ``addmm``
(the rows it keeps until then take no more memory than the factor); with a process group the sums are
all-reduced first, so they are never deferred. A factor at least two panels wide (``2 x 128``) is formed on its
upper triangle only, one ``addmm`` per panel of 128 columns ``x_i``, ``S[i, i:] = x_i^T x[:, i:]`` (five eighths
of the multiply-adds at width 512); its strict lower triangle is then stale and is mirrored from the upper one
when the factor is read (:meth:`KFAC.factors`, the refresh of the inverses, :meth:`KFAC.state_dict`), so the
factors read are exactly symmetric. Matrices kept from step to step (factors, inverses, work buffers) have
their rows padded to 64-byte boundaries: BLAS writes a ``d + 1`` wide product with misaligned rows markedly
slower. The low-rank product keeps the homogeneous column apart, ``abar A^{-1} = [a P + 1 r^T, a c + s]``
for ``A^{-1} = [[P, c], [r^T, s]]``, so that its products are ``d`` wide and need no concatenated gradient.

Diagonal variant
----------------
:class:`DiagonalFisher` shares the hooks, the Fisher backward and the clipping, and keeps the diagonal of
the same Fisher instead of its Kronecker factors,
``D = \mathbb E_n \mathbb E_y[(\nabla_W \ell_n)^{\odot 2}]`` with the per-example gradient
``\nabla_W \ell_n = \sum_t g_{n,t} \bar a_{n,t}^\top`` (exact, not a product of factor diagonals), and
preconditions elementwise, ``V = \nabla W / (D + \lambda)``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal

import torch
from torch import nn

from lpc_geom.optim._kfac_base import (
    _ALIGN,
    FisherType,
    _aligned_copy,
    _FisherPreconditioner,
    _fold,
    _LayerState,
)
from lpc_geom.optim._kfac_layers import KFACLayer, _Adapter

__all__ = ["KFAC", "DampingMode", "DiagonalFisher", "FisherType", "KFACLayer"]

DampingMode = Literal["factored", "eigen"]
_PROBES = 4  # random probe vectors per side that check .grad against the captured batch factors
_PROBE_SEED = 0x4B464143
_PANEL = 128  # columns per panel of a second-moment product formed on its upper triangle only


class KFAC(_FisherPreconditioner):
    """Kronecker-factored approximate natural-gradient preconditioner (rewrites ``.grad`` only).

    Parameters
    ----------
    model : nn.Module
        The network. Supported layers (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` with ``groups=1``,
        modules following the ``kfac_layout`` protocol and the layers in ``extra_layers``, see
        :class:`KFACLayer`) are preconditioned; parameters of any other module are left untouched and
        listed once in a warning (and in :attr:`unsupported`).
    fisher : {"mc", "empirical", "exact"}
        Which Fisher the factors estimate (see the module docstring). ``"exact"`` costs ``K`` backward
        cotangents per step (batched), so it is meant for a small number of classes ``K``.
    damping : float
        Tikhonov damping ``lambda > 0``. May be changed between steps (attribute ``damping``); a change
        triggers a refresh of the inverses at the next step.
    update_freq : int
        Recompute the damped inverses (or eigendecompositions) every ``update_freq`` calls of
        :meth:`step`, and on the first step that has factors.
    ema_decay : float
        Moving-average decay of the factors, in ``[0, 1)``; the first statistics initialise them.
    kl_clip : float or None
        KL-clipping bound ``kappa``; ``None`` or ``0`` disables clipping.
    lr : float, optional
        The optimiser's learning rate ``eta`` used by KL clipping (required when ``kl_clip`` is set).
        Keep it in sync with a schedule by setting the attribute ``lr`` or passing ``step(lr=...)``.
    damping_mode : {"factored", "eigen"}
        ``"factored"``: ``(G + sqrt(lambda)/pi I)^{-1} dW (A + pi sqrt(lambda) I)^{-1}``;
        ``"eigen"``: ``(G kron A + lambda I)^{-1} vec(dW)`` in the Kronecker eigenbasis.
    factor_freq : int
        Record statistics only on steps whose index is a multiple of ``factor_freq``;
        :meth:`update_statistics` is a no-op (no extra backward) on the other steps.
    mc_samples : int
        Labels drawn per example for ``fisher="mc"``.
    low_rank : bool
        In the factored mode, precondition a layer from the batch factors of its gradient,
        ``(G^{-1} g^T)(abar A^{-1})``, when the batch has fewer rows than that costs (see the module
        docstring); the result equals the dense product up to rounding. Default on.
    stats_examples : int, optional
        With ``fisher="mc"`` only: compute both factors of each batch from a uniformly random subset of
        this many examples (drawn with ``generator``). The Monte-Carlo factors are already random
        estimates of the batch's Fisher, and a uniform subset keeps them unbiased; it halves the factor
        products at half the batch, at the price of variance that the moving average spreads over
        ``1 / (1 - ema_decay)`` batches. ``None`` (default) uses the whole batch. The exact and empirical
        Fishers are deterministic functions of the batch and are never subsampled.
    extra_layers : mapping of str to KFACLayer, optional
        Linear-like layers K-FAC cannot recognise by type (e.g. a projection ``h @ W`` computed inside a
        head's forward whose weight is a ``geoopt.ManifoldParameter``), keyed by a name of your choice.
    exclude : iterable of str
        Module names (as in ``model.named_modules()``) not to precondition.
    generator : torch.Generator, optional
        Source of randomness for the sampled labels of ``fisher="mc"``.
    distributed : bool, optional
        Sum the pending statistics over the default process group before they enter the moving average,
        so that every replica preconditions with the same factors. Default: on when
        ``torch.distributed`` is initialised when the preconditioner is built. Every rank must then call
        :meth:`update_statistics` and :meth:`step` for the same layers.

    Attributes
    ----------
    layers : dict of str to str
        Preconditioned layers and their kind (``"linear"``, ``"conv2d"``, ...), in model order.
    unsupported : list of str
        Trainable parameters left untouched, as ``"name (ModuleType)"``.
    steps : int
        Number of :meth:`step` calls so far.
    last_kl_scale : float
        The KL-clipping factor ``nu`` applied by the last step (1.0 when no clipping happened).
    float64_retries : int
        How many factor inversions / eigendecompositions had to be retried in float64.
    last_low_rank : tuple of str
        The layers the last :meth:`step` preconditioned from the batch factors (``low_rank``).

    Notes
    -----
    A layer's recorded inputs are released at the next forward of ``model`` and after
    :meth:`update_statistics`; forwards under ``torch.no_grad()`` record nothing. ``update_statistics``
    must follow the forward whose logits it receives and precede ``loss.backward()`` (the Fisher backward
    uses ``retain_graph=True``, so the graph is intact for the real backward afterwards).
    Call :meth:`remove` to detach the hooks.

    The factors and their inverses (or eigenbases) are saved by :meth:`state_dict`; hyperparameters are
    constructor arguments and are not part of the state. Pending statistics (an accumulation cycle cut
    in the middle) are not saved either.
    """

    def __init__(
        self,
        model: nn.Module,
        fisher: FisherType = "mc",
        damping: float = 1e-3,
        update_freq: int = 10,
        ema_decay: float = 0.95,
        kl_clip: float | None = 1e-3,
        lr: float | None = None,
        *,
        damping_mode: DampingMode = "factored",
        low_rank: bool = True,
        **options: Any,
    ):
        # options: factor_freq, mc_samples, stats_examples, extra_layers, exclude, generator and
        # distributed, which the statistics machinery shared with DiagonalFisher reads (see above).
        if damping_mode not in ("factored", "eigen"):
            raise ValueError(f"damping_mode must be 'factored' or 'eigen', got {damping_mode!r}")
        if update_freq < 1:
            raise ValueError(f"update_freq must be >= 1, got {update_freq}")
        self.update_freq = int(update_freq)
        self.damping_mode = damping_mode
        self.low_rank = bool(low_rank)
        super().__init__(model, fisher, damping, ema_decay, kl_clip, lr, **options)

    def factors(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The moving-average factors ``(A, G)`` of layer ``name`` (``None`` before any statistics)."""
        st = self._state[name]
        return st.full("A"), st.full("G")

    def _accumulate(self, st: _LayerState, adapter: _Adapter, a: torch.Tensor, g: torch.Tensor, n: int) -> None:
        for key, rows, count, homogeneous in (
            ("A", a.reshape(-1, a.shape[-1]), None, adapter.has_bias),
            ("G", g.reshape(-1, g.shape[-1]), n, False),
        ):
            d = rows.shape[1] + int(homogeneous)
            st.mark_upper_only(key)
            # Deferred to the step (one product into the moving average) when keeping the rows until then
            # costs no more memory than a factor; with a process group the sums must be reduced first.
            st.accumulate(key, rows.shape[0] if count is None else count, (d, d), rows,
                          partial(_fold_second_moment, a=rows, homogeneous=homogeneous),
                          defer=not self.distributed and rows.shape[0] <= d)

    def _refresh_due(self, st: _LayerState) -> bool:
        return self.steps % self.update_freq == 0 or st.refreshed_damping != self.damping

    def _refresh(self, st: _LayerState) -> None:
        A, G = st.full("A"), st.full("G")
        mean_a, mean_g = A.diagonal().mean().item(), G.diagonal().mean().item()
        st.pi = math.sqrt(mean_a / mean_g) if mean_a > 0 and mean_g > 0 else 1.0
        if self.damping_mode == "factored":
            root = math.sqrt(self.damping)
            st.cache = {
                "inv_A": _aligned_copy(self._damped_inverse(A, root * st.pi)),
                "inv_G": _aligned_copy(self._damped_inverse(G, root / st.pi)),
            }
        else:
            (dA, QA), (dG, QG) = self._eigh(A), self._eigh(G)
            st.cache = {"dA": dA, "QA": _aligned_copy(QA), "dG": dG, "QG": _aligned_copy(QG)}

    def _damped_inverse(self, m: torch.Tensor, shift: float) -> torch.Tensor:
        """``(m + shift I)^{-1}`` through a Cholesky factorisation, retried in float64 when it fails."""
        m = _symmetric_part(m)
        m.diagonal().add_(shift)
        chol, info = torch.linalg.cholesky_ex(m)
        if info.item() == 0 and bool(torch.isfinite(chol).all()):
            return torch.cholesky_inverse(chol)
        if m.dtype != torch.float64:
            self.float64_retries += 1
            chol, info = torch.linalg.cholesky_ex(m.double())
            if info.item() == 0:
                return torch.cholesky_inverse(chol).to(m.dtype)
        raise torch.linalg.LinAlgError(
            "K-FAC could not factorise a damped curvature factor even in float64 (non-finite statistics?)"
        )

    def _eigh(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigendecomposition of a symmetric factor (eigenvalues clamped at 0), retried in float64."""
        m = _symmetric_part(m)
        try:
            d, q = torch.linalg.eigh(m)
            ok = bool(torch.isfinite(d).all() and torch.isfinite(q).all())
        except torch.linalg.LinAlgError:
            ok = False
        if not ok:
            if m.dtype == torch.float64:
                raise torch.linalg.LinAlgError("K-FAC factor eigendecomposition failed in float64")
            self.float64_retries += 1
            d, q = torch.linalg.eigh(m.double())
            d, q = d.to(m.dtype), q.to(m.dtype)
        return d.clamp_min(0.0), q

    def _low_rank_rows(self, adapter: _Adapter) -> int:
        # Low rank: R (d_out^2 + d_in^2 + d_out d_in) multiply-adds; dense: d_out d_in (d_out + d_in).
        if not self.low_rank or self.damping_mode != "factored":
            return 0
        d_out, d_in = adapter.matrix_shape
        return (d_out * d_in * (d_out + d_in) - 1) // (d_out * d_out + d_in * d_in + d_out * d_in)

    def _precondition_low_rank(
        self, st: _LayerState, gw: torch.Tensor, gb: torch.Tensor | None, a: torch.Tensor, g: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        rows, d = a.shape
        d_out = gw.shape[0]
        homogeneous = gb is not None
        d_bar = d + int(homogeneous)
        if st.probes is None or st.probes[0].dtype != gw.dtype or st.probes[0].device != gw.device:
            gen = torch.Generator(device=gw.device).manual_seed(_PROBE_SEED)
            kw = {"generator": gen, "dtype": gw.dtype, "device": gw.device}
            U, P = torch.randn(d_out, _PROBES, **kw), torch.randn(d_bar, _PROBES, **kw)
            # kept transposed: a product with few rows and the long axis last is what BLAS does fastest here
            st.probes = (U.T.contiguous(), P.T.contiguous(), U.T.abs(), P.T.abs())
        Ut, Pt, Ut_abs, Pt_abs = st.probes

        def right_t(m_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (abar @ m_t^T)^T without forming abar
            return torch.addmm(m_t[:, d:], m_t[:, :d], x.T) if homogeneous else m_t @ x.T

        # The gradient must be the product of the captured factors: anything else in .grad (a penalty on the
        # weight, clipping, a DDP average, a backward the hooks did not see) shows in the probes.
        probed = (Ut @ gw) @ Pt[:, :d].T
        if homogeneous:
            probed.addr_(Ut @ gb, Pt[:, d])
        diff = probed - (Ut @ g.T) @ right_t(Pt, a).T
        bound = (Ut_abs @ g.abs().T) @ right_t(Pt_abs, a.abs()).T
        gamma = (rows + d_out + d_bar) * torch.finfo(gw.dtype).eps
        if bool((diff.abs() > 2.0 * gamma * bound).any()):
            return None
        inv_A, inv_G = st.cache["inv_A"], st.cache["inv_G"]
        # (inv_G g^T)(abar inv_A), the homogeneous column of abar inv_A apart so that every product is d wide
        # (left_t = g inv_G^T, R x d_out, is inv_G g^T transposed: the wide axis last is the faster product)
        left_t = torch.mm(g, inv_G.T, out=st.buffer("low_rank_left", (rows, d_out), gw))
        right = st.buffer("low_rank_right", (rows, d), gw)
        if not homogeneous:
            torch.mm(a, inv_A, out=right)
            return torch.mm(left_t.T, right, out=st.buffer("update", (d_out, d), gw)), None
        torch.addmm(inv_A[d, :d], a, inv_A[:d, :d], out=right)
        right_b = torch.addmv(inv_A[d, d], a, inv_A[:d, d])
        return torch.mm(left_t.T, right, out=st.buffer("update", (d_out, d), gw)), torch.mv(left_t.T, right_b)

    def _precondition(self, st: _LayerState, grad: torch.Tensor) -> torch.Tensor:
        c = st.cache
        if self.damping_mode == "factored":
            inv_A, inv_G = c["inv_A"], c["inv_G"]
            d_out, d_bar = grad.shape
            if d_out > d_bar:
                # V^T = inv_A^T grad^T inv_G^T: the same products with the wide axis last (faster in BLAS)
                half = torch.mm(inv_A.T, grad.T, out=st.buffer("half", (d_bar, d_out), grad))
                return torch.mm(half, inv_G.T, out=st.buffer("update", (d_bar, d_out), grad)).T
            half = torch.mm(inv_G, grad, out=st.buffer("half", (d_out, d_bar), grad))
            update = st.buffer("update", (d_out, d_bar), grad)
            d = d_bar - 1
            if d and d % _ALIGN == 0:  # the homogeneous column apart: the large product is d wide, rows aligned
                torch.mm(half, inv_A[:, :d], out=update[:, :d])
                torch.mv(half, inv_A[:, d], out=update[:, d])
            else:
                torch.mm(half, inv_A, out=update)
            return update
        t = c["QG"].T @ grad @ c["QA"]
        t = t / (c["dG"][:, None] * c["dA"][None, :] + self.damping)
        return c["QG"] @ t @ c["QA"].T


class DiagonalFisher(_FisherPreconditioner):
    r"""Diagonal natural-gradient preconditioner: ``V = grad / (D + lambda)`` elementwise.

    ``D`` is the moving average of the exact diagonal of the chosen Fisher over the supported layers,
    ``D = E_n E_y[(sum_t g_{n,t} abar_{n,t}^T)^2]`` (squares of per-example gradients, computed from the
    same hooks and Fisher backward as :class:`KFAC`). Cheap per step (no matrix products), but blind to
    the correlations K-FAC captures.

    Parameters
    ----------
    model, fisher, ema_decay, kl_clip, lr, factor_freq, mc_samples, stats_examples, extra_layers, exclude
        As for :class:`KFAC`.
    generator, distributed
        As for :class:`KFAC`.
    damping : float
        ``lambda > 0`` added to the diagonal.

    Notes
    -----
    For layers applied at several positions (convolutions, sequence inputs) the per-example gradient is
    formed explicitly, which needs ``N * d_out * (d_in + 1)`` floats per cotangent.
    """

    def diagonal(self, name: str) -> torch.Tensor | None:
        """The moving-average Fisher diagonal of layer ``name`` as a ``(d_out, d_in [+ 1])`` matrix."""
        return self._state[name].ema.get("D")

    def _refresh_due(self, st: _LayerState) -> bool:
        return False  # the diagonal is read straight from the moving average: nothing to cache

    def _refresh(self, st: _LayerState) -> None:
        st.cache.clear()

    def _accumulate(self, st: _LayerState, adapter: _Adapter, a: torch.Tensor, g: torch.Tensor, n: int) -> None:
        if adapter.has_bias:
            a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
        D, beta, alpha = st.pending("D", n, (g.shape[-1], a.shape[-1]), a)
        if a.shape[1] == 1:  # one position: the per-example gradient g a^T squares to g^2 (a^2)^T
            D.addmm_((g[:, :, 0] ** 2).sum(0).T, a[:, 0] ** 2, beta=beta, alpha=alpha)
        else:
            _fold(D, sum((torch.einsum("ntc,ntd->ncd", gb, a) ** 2).sum(0) for gb in g), beta, alpha)

    def _precondition(self, st: _LayerState, grad: torch.Tensor) -> torch.Tensor:
        return grad / (st.ema["D"] + self.damping)


def _symmetric_part(m: torch.Tensor) -> torch.Tensor:
    """``(m + m^T) / 2`` as a new tensor (one temporary fewer than ``0.5 * (m + m.T)``, the same values)."""
    return (m + m.T).mul_(0.5)


def _fold_second_moment(out: torch.Tensor, beta: float, alpha: float, *, a: torch.Tensor, homogeneous: bool) -> None:
    """``out <- beta out + alpha sum_r abar_r abar_r^T`` in place on the upper triangle of ``out`` (with the
    diagonal; the strict lower triangle of the ``a^T a`` block may be left as it was, see
    :meth:`_LayerState.mark_upper_only`), with ``abar = (a, 1)`` when ``homogeneous``, without concatenating
    (``out``'s old content is ignored when ``beta == 0``)."""
    d = a.shape[1]
    _gram_upper(out[:d, :d], a, beta, alpha)
    if not homogeneous:
        return
    col = a.sum(0)
    _fold(out[:d, d], col, beta, alpha)
    _fold(out[d, :d], col, beta, alpha)
    out[d, d] = (beta * out[d, d] if beta else 0.0) + alpha * a.shape[0]


def _gram_upper(out: torch.Tensor, x: torch.Tensor, beta: float, alpha: float) -> None:
    """``out <- beta out + alpha x^T x`` on the upper triangle and the diagonal of ``out``.

    A wide ``x`` is split into column panels ``x_i`` of :data:`_PANEL` columns and only the blocks on and
    right of the diagonal are formed, ``out[i, i:] <- beta out[i, i:] + alpha x_i^T x[:, i:]``: about
    ``(1 + 1/p)/2`` of the multiply-adds of the full product for ``p`` panels.
    """
    d = x.shape[1]
    if d < 2 * _PANEL:
        out.addmm_(x.T, x, beta=beta, alpha=alpha)
        return
    for i in range(0, d, _PANEL):
        j = min(i + _PANEL, d)
        out[i:j, i:].addmm_(x[:, i:j].T, x[:, i:], beta=beta, alpha=alpha)
