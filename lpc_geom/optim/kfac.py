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
fewer whenever ``R`` is below about ``\min(d_{out}, d_{in})/2`` (a 512-wide layer at batch 128: 0.6x of the
dense cost). A tensor hook on the layer output keeps ``g`` during the training backward (not during the
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
``update_statistics`` calls between two ``step`` calls are pooled (sums and counts) before they enter the
moving average, so ``k`` micro-batches give the same factors as one batch of their union.

Diagonal variant
----------------
:class:`DiagonalFisher` shares the hooks, the Fisher backward and the clipping, and keeps the diagonal of
the same Fisher instead of its Kronecker factors,
``D = \mathbb E_n \mathbb E_y[(\nabla_W \ell_n)^{\odot 2}]`` with the per-example gradient
``\nabla_W \ell_n = \sum_t g_{n,t} \bar a_{n,t}^\top`` (exact, not a product of factor diagonals), and
preconditions elementwise, ``V = \nabla W / (D + \lambda)``.
"""

from __future__ import annotations

import logging
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import get_gradient_edge

from lpc_geom.optim._kfac_layers import KFACLayer, _Adapter, adapter_for, adapter_from_spec

__all__ = ["KFAC", "DiagonalFisher", "KFACLayer"]

log = logging.getLogger(__name__)

FisherType = Literal["empirical", "mc", "exact"]
_PROBES = 4  # random probe vectors per side that check .grad against the captured batch factors
_PROBE_SEED = 0x4B464143
DampingMode = Literal["factored", "eigen"]


@dataclass(eq=False)
class _LayerState:
    """Statistics of one layer: sums pending since the last step (with their counts), the moving averages
    they feed, and what the last refresh computed from those (inverses or eigendecompositions)."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    ema: dict[str, torch.Tensor] = field(default_factory=dict)
    cache: dict[str, torch.Tensor] = field(default_factory=dict)
    pi: float = 1.0
    refreshed_damping: float | None = None
    batch: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    batch_rows: int = 0
    probes: tuple[torch.Tensor, torch.Tensor] | None = None

    def add(self, key: str, total: torch.Tensor, count: float) -> None:
        self.sums[key] = total if key not in self.sums else self.sums[key] + total
        self.counts[key] = self.counts.get(key, 0.0) + count


class _FisherPreconditioner(ABC):
    """Hooks, Fisher backward, moving averages, KL clipping and state shared by the preconditioners.

    Subclasses define which statistics a layer keeps (:meth:`_statistics`), how they are refreshed
    (:meth:`_refresh_due`, :meth:`_refresh`) and how a gradient matrix is preconditioned
    (:meth:`_precondition`). See :class:`KFAC` for the parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        fisher: FisherType = "mc",
        damping: float = 1e-3,
        ema_decay: float = 0.95,
        kl_clip: float | None = 1e-3,
        lr: float | None = None,
        *,
        factor_freq: int = 1,
        mc_samples: int = 1,
        stats_examples: int | None = None,
        extra_layers: Mapping[str, KFACLayer] | None = None,
        exclude: Iterable[str] = (),
        generator: torch.Generator | None = None,
        distributed: bool | None = None,
    ):
        if fisher not in ("empirical", "mc", "exact"):
            raise ValueError(f"fisher must be 'empirical', 'mc' or 'exact', got {fisher!r}")
        if stats_examples is not None and (fisher != "mc" or isinstance(stats_examples, bool) or stats_examples < 1):
            raise ValueError(
                f"stats_examples subsamples the Monte-Carlo Fisher estimate: it needs fisher='mc' and an "
                f"integer >= 1 (or None for the whole batch), got fisher={fisher!r}, stats_examples={stats_examples!r}"
            )
        if not damping > 0:
            raise ValueError(f"damping must be positive, got {damping}")
        if factor_freq < 1 or mc_samples < 1:
            raise ValueError("factor_freq and mc_samples must be >= 1")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
        if kl_clip and lr is None:
            raise ValueError("KL clipping needs the optimiser's learning rate: pass lr=... (or kl_clip=None)")
        self.model = model
        self.fisher = fisher
        self.damping = float(damping)
        self.ema_decay = float(ema_decay)
        self.kl_clip = kl_clip
        self.lr = lr
        self.factor_freq = int(factor_freq)
        self.mc_samples = int(mc_samples)
        self.stats_examples = None if stats_examples is None else int(stats_examples)
        self.generator = generator
        if distributed is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.distributed = bool(distributed)
        self.steps = 0
        self.last_kl_scale = 1.0
        self.float64_retries = 0
        self.last_low_rank: tuple[str, ...] = ()
        self._fisher_pass = False

        self._adapters: dict[str, _Adapter] = self._find_layers(model, extra_layers or {}, set(exclude))
        self._state = {name: _LayerState() for name in self._adapters}
        self._records: list[tuple[str, torch.Tensor, Any]] = []
        self._handles = [model.register_forward_pre_hook(self._on_model_forward)]
        for name, adapter in self._adapters.items():
            hook = partial(self._record, name)
            self._handles.append(adapter.module.register_forward_hook(hook, with_kwargs=True))

    # ------------------------------------------------------------------ what subclasses define
    @abstractmethod
    def _statistics(
        self, adapter: _Adapter, a: torch.Tensor, g: torch.Tensor, n: int
    ) -> dict[str, tuple[torch.Tensor, float]]:
        """``{key: (sum, count)}`` from inputs ``a`` (N, T, d_in) and output gradients ``g`` (B, N, T, d_out)."""

    @abstractmethod
    def _refresh_due(self, st: _LayerState) -> bool:
        """Whether ``st.cache`` must be recomputed before this step."""

    @abstractmethod
    def _refresh(self, st: _LayerState) -> None:
        """Recompute ``st.cache`` from ``st.ema``."""

    @abstractmethod
    def _precondition(self, st: _LayerState, grad: torch.Tensor) -> torch.Tensor:
        """The preconditioned gradient of one layer (same layout as ``grad``)."""

    def _low_rank_rows(self, adapter: _Adapter) -> int:
        """Most batch rows for which :meth:`_precondition_low_rank` is cheaper than :meth:`_precondition`
        (0: never; the batch factors of the training backward are then not captured)."""
        return 0

    def _precondition_low_rank(
        self, st: _LayerState, grad: torch.Tensor, a: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor | None:
        """The preconditioned gradient from the batch factors ``grad = g^T abar`` (``a`` (R, d_in), ``g``
        (R, d_out)), or ``None`` when ``grad`` is not that product."""
        return None

    # ------------------------------------------------------------------ discovery
    def _find_layers(self, model: nn.Module, extra: Mapping[str, KFACLayer], exclude: set[str]) -> dict[str, _Adapter]:
        adapters: dict[str, _Adapter] = {}
        covered: dict[int, str] = {}

        def claim(name: str, adapter: _Adapter) -> None:
            if not adapter.weight.requires_grad:
                return
            if adapter.bias is not None and not adapter.bias.requires_grad:
                adapter.bias = None  # a frozen bias is a constant shift: no homogeneous coordinate
            for p in adapter.params:
                if id(p) in covered:
                    raise ValueError(f"parameter of layer {name!r} is already preconditioned as {covered[id(p)]!r}")
                covered[id(p)] = name
            adapters[name] = adapter

        spec_modules = {id(spec.module) for spec in extra.values()}
        for name, spec in extra.items():
            claim(name, adapter_from_spec(spec))
        for name, module in model.named_modules():
            if name in exclude or id(module) in spec_modules:
                continue
            adapter = adapter_for(module)
            if adapter is not None:
                claim(name, adapter)

        modules = dict(model.named_modules())
        self.unsupported = [
            f"{pname} ({type(modules.get(pname.rpartition('.')[0], model)).__name__})"
            for pname, p in model.named_parameters()
            if p.requires_grad and id(p) not in covered
        ]
        self.layers = {name: a.kind for name, a in adapters.items()}
        if self.unsupported:
            warnings.warn(
                f"{type(self).__name__} leaves these parameters unpreconditioned (unsupported layer type): "
                + ", ".join(self.unsupported),
                stacklevel=4,
            )
        log.info("%s preconditions %d layers: %s", type(self).__name__, len(adapters), self.layers)
        return adapters

    # ------------------------------------------------------------------ hooks
    def _on_model_forward(self, module: nn.Module, args: tuple) -> None:
        self._records.clear()

    def _record(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        statistics = self.steps % self.factor_freq == 0
        adapter = self._adapters[name]
        limit = self._low_rank_rows(adapter)
        if not (statistics or limit):
            return
        out = adapter.get_output(output)
        if not (isinstance(out, torch.Tensor) and out.requires_grad):
            return
        x = adapter.get_input(args, kwargs).detach()
        if statistics:
            # The edge is taken now, before an in-place activation can replace the output's grad_fn.
            self._records.append((name, x, get_gradient_edge(out)))
        if limit and out.numel() // out.shape[-1] <= limit:
            # A tensor hook registered before an in-place activation still receives the gradient with
            # respect to the value the layer returned.
            out.register_hook(partial(self._capture_batch_factor, name, x))

    def _capture_batch_factor(self, name: str, x: torch.Tensor, grad: torch.Tensor) -> None:
        """Keep ``(input, output gradient)`` of a training backward (not of the Fisher backward)."""
        if self._fisher_pass:
            return
        st, adapter = self._state[name], self._adapters[name]
        rows = grad.numel() // grad.shape[-1]
        st.batch_rows += rows
        if st.batch_rows > self._low_rank_rows(adapter):
            st.batch.clear()  # accumulated beyond the rank where the factored product pays off
            return
        st.batch.append((x, grad.detach()))

    def remove(self) -> None:
        """Remove all hooks from the model (the preconditioner can no longer collect statistics)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._records.clear()

    # ------------------------------------------------------------------ statistics
    def _logit_cotangents(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Cotangents ``v_b`` on the logits, shape ``(B, N, K)``, with ``sum_b v_b v_b^T`` the Fisher in logits."""
        work = torch.promote_types(logits.dtype, torch.float32)
        p = torch.softmax(logits.detach().to(work), dim=-1)
        k = p.shape[1]
        if self.fisher == "empirical":
            if labels is None:
                raise ValueError("fisher='empirical' needs the labels")
            target = labels.to(work) if labels.dim() == 2 else F.one_hot(labels.long(), k).to(work)
            v = (p - target)[None]
        elif self.fisher == "mc":
            drawn = torch.multinomial(p, self.mc_samples, replacement=True, generator=self.generator)
            v = (p[None] - F.one_hot(drawn.T, k).to(work)) / math.sqrt(self.mc_samples)
        else:
            eye = torch.eye(k, dtype=work, device=p.device)
            v = p.sqrt().T[:, :, None] * (eye[:, None, :] - p[None])
        return v.to(logits.dtype)

    def update_statistics(self, logits: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Accumulate Fisher statistics for the layers recorded in the last forward pass.

        Runs one extra backward, ``torch.autograd.grad(logits, layer_outputs, v, retain_graph=True)``,
        with the cotangents ``v`` of the chosen Fisher (sampled labels, observed labels, or all classes
        weighted by ``p``); ``.grad`` is not touched and the graph stays available for
        ``loss.backward()``.

        Parameters
        ----------
        logits : Tensor, shape (N, K)
            The logits of the forward pass just made; ``softmax(logits)`` is the model's predictive
            distribution (scale them first if the loss applies a temperature or cosine scale).
        labels : Tensor, shape (N,) or (N, K), optional
            Class indices (or target distributions); required for ``fisher="empirical"``, ignored
            otherwise.
        """
        if self.steps % self.factor_freq != 0:
            self._records.clear()
            return
        if logits.dim() != 2:
            raise ValueError(f"logits must have shape (N, K), got {tuple(logits.shape)}")
        if not logits.requires_grad:
            raise RuntimeError("logits do not require grad: call update_statistics after a forward with grad on")
        records, self._records = self._records, []
        if not records:
            if self._adapters:
                raise RuntimeError("no layer was recorded: call update_statistics right after model(x)")
            return
        v = self._logit_cotangents(logits, labels)
        self._fisher_pass = True
        try:
            grads = _batched_grad(logits, [edge for _, _, edge in records], v)
        finally:
            self._fisher_pass = False
        n = logits.shape[0]
        subset = None
        if self.stats_examples is not None and n > self.stats_examples:
            where = "cpu" if self.generator is None else self.generator.device
            perm = torch.randperm(n, generator=self.generator, device=where)
            subset = perm[: self.stats_examples].sort().values.to(logits.device)
            n = self.stats_examples
        with torch.no_grad():
            for (name, x, _), g in zip(records, grads, strict=True):
                if g is None:
                    continue
                adapter = self._adapters[name]
                dtype = torch.promote_types(adapter.weight.dtype, torch.float32)
                a = adapter.input_positions(x)
                gp = adapter.output_grad_positions(g)
                if subset is not None:
                    a, gp = a.index_select(0, subset), gp.index_select(1, subset)
                a, gp = a.to(dtype), gp.to(dtype)
                for key, (total, count) in self._statistics(adapter, a, gp, n).items():
                    self._state[name].add(key, total, count)

    def _flush_statistics(self) -> None:
        pending = [st for st in self._state.values() if st.sums]
        if self.distributed and pending:
            for st in pending:
                keys = sorted(st.sums)
                ref = st.sums[keys[0]]
                counts = torch.tensor([st.counts[k] for k in keys], dtype=ref.dtype, device=ref.device)
                buf = torch.cat([st.sums[k].flatten() for k in keys] + [counts])
                torch.distributed.all_reduce(buf)
                offset = 0
                for k in keys:
                    size = st.sums[k].numel()
                    st.sums[k] = buf[offset : offset + size].view_as(st.sums[k])
                    offset += size
                st.counts = {k: c.item() for k, c in zip(keys, buf[offset:], strict=True)}
        beta = self.ema_decay
        for st in pending:
            for key, total in st.sums.items():
                if key not in st.ema:
                    st.ema[key] = total / st.counts[key]
                else:
                    st.ema[key].mul_(beta).add_(total, alpha=(1.0 - beta) / st.counts[key])
            st.sums, st.counts = {}, {}

    # ------------------------------------------------------------------ preconditioning
    @torch.no_grad()
    def step(self, lr: float | None = None) -> None:
        """Replace the ``.grad`` of every supported layer by its preconditioned gradient.

        Call after ``loss.backward()`` and before ``optimizer.step()``. Folds the statistics gathered
        since the previous step into the moving averages, refreshes what is computed from them when due,
        preconditions and KL-clips. Layers without statistics yet and layers without a gradient are left
        as they are.

        Parameters
        ----------
        lr : float, optional
            Learning rate for KL clipping on this step (default: the attribute ``lr``).
        """
        self._flush_statistics()
        updates: list[tuple[_Adapter, torch.Tensor, torch.Tensor]] = []
        low_rank: list[str] = []
        vgs: list[torch.Tensor] = []
        for name, adapter in self._adapters.items():
            st = self._state[name]
            batch, st.batch, st.batch_rows = st.batch, [], 0
            if not st.ema:
                continue
            grad = adapter.grad_matrix()
            if grad is None:
                continue
            if self._refresh_due(st):
                self._refresh(st)
                st.refreshed_damping = self.damping
            dtype = next(iter(st.ema.values())).dtype
            g = grad.to(dtype)
            v = None
            if batch:
                a_rows, g_rows = self._batch_rows(adapter, batch, dtype)
                v = self._precondition_low_rank(st, g, a_rows, g_rows)
            if v is None:
                v = self._precondition(st, g)
            else:
                low_rank.append(name)
            vgs.append(torch.dot(v.reshape(-1), g.reshape(-1)).to(torch.float64))
            updates.append((adapter, v, grad))
        self.last_low_rank = tuple(low_rank)
        lr = self.lr if lr is None else lr
        nu = 1.0
        vg = torch.stack(vgs).sum().item() if vgs else 0.0
        if self.kl_clip and updates and vg > 0.0:
            nu = min(1.0, math.sqrt(self.kl_clip / (lr**2 * vg)))
        for adapter, v, grad in updates:
            if nu != 1.0:
                v.mul_(nu)
            adapter.write_grad(v.to(grad.dtype))
        self.last_kl_scale = nu
        self.steps += 1

    @staticmethod
    def _batch_rows(
        adapter: _Adapter, batch: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The captured inputs and output gradients of all training backwards as rows (R, d_in), (R, d_out)."""
        a = [adapter.input_positions(x) for x, _ in batch]
        g = [adapter.output_grad_positions(gr.unsqueeze(0))[0] for _, gr in batch]
        a = [t.reshape(-1, t.shape[-1]) for t in a]
        g = [t.reshape(-1, t.shape[-1]) for t in g]
        a_rows, g_rows = (a[0], g[0]) if len(batch) == 1 else (torch.cat(a), torch.cat(g))
        return a_rows.to(dtype), g_rows.to(dtype)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Step counter and, per layer, the moving averages and what was computed from them (cloned)."""
        layers = {
            name: {
                "ema": {k: v.clone() for k, v in st.ema.items()},
                "cache": {k: v.clone() for k, v in st.cache.items()},
                "pi": st.pi,
                "damping": st.refreshed_damping,
            }
            for name, st in self._state.items()
        }
        return {"kind": type(self).__name__, "steps": self.steps, "fisher": self.fisher, "layers": layers}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Restore :meth:`state_dict` output (tensors moved to each layer's device).

        Parameters
        ----------
        state : mapping
            As returned by :meth:`state_dict` of the same class.
        strict : bool
            Raise ``KeyError`` when the layer names differ from this preconditioner's.
        """
        if state.get("kind", type(self).__name__) != type(self).__name__:
            raise ValueError(f"state of a {state['kind']} cannot be loaded into a {type(self).__name__}")
        saved = state["layers"]
        if strict and set(saved) != set(self._state):
            missing, extra = set(self._state) - set(saved), set(saved) - set(self._state)
            raise KeyError(f"preconditioner layers differ: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, entry in saved.items():
            if name not in self._state:
                continue
            weight = self._adapters[name].weight
            dtype = torch.promote_types(weight.dtype, torch.float32)

            def moved(tensors: Mapping[str, torch.Tensor], device=weight.device, dtype=dtype) -> dict:
                return {k: v.to(device=device, dtype=dtype).clone() for k, v in tensors.items()}

            self._state[name] = _LayerState(
                ema=moved(entry["ema"]),
                cache=moved(entry["cache"]),
                pi=float(entry["pi"]),
                refreshed_damping=entry["damping"],
            )
        self.steps = int(state["steps"])


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
        factor_freq: int = 1,
        mc_samples: int = 1,
        stats_examples: int | None = None,
        extra_layers: Mapping[str, KFACLayer] | None = None,
        exclude: Iterable[str] = (),
        generator: torch.Generator | None = None,
        distributed: bool | None = None,
    ):
        if damping_mode not in ("factored", "eigen"):
            raise ValueError(f"damping_mode must be 'factored' or 'eigen', got {damping_mode!r}")
        if update_freq < 1:
            raise ValueError(f"update_freq must be >= 1, got {update_freq}")
        self.update_freq = int(update_freq)
        self.damping_mode = damping_mode
        self.low_rank = bool(low_rank)
        super().__init__(
            model,
            fisher,
            damping,
            ema_decay,
            kl_clip,
            lr,
            factor_freq=factor_freq,
            mc_samples=mc_samples,
            stats_examples=stats_examples,
            extra_layers=extra_layers,
            exclude=exclude,
            generator=generator,
            distributed=distributed,
        )

    def factors(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The moving-average factors ``(A, G)`` of layer ``name`` (``None`` before any statistics)."""
        ema = self._state[name].ema
        return ema.get("A"), ema.get("G")

    def _statistics(
        self, adapter: _Adapter, a: torch.Tensor, g: torch.Tensor, n: int
    ) -> dict[str, tuple[torch.Tensor, float]]:
        rows_a = a.reshape(-1, a.shape[-1])
        rows_g = g.reshape(-1, g.shape[-1])
        return {
            "A": (_second_moment(rows_a, adapter.has_bias), rows_a.shape[0]),
            "G": (rows_g.T @ rows_g, n),
        }

    def _refresh_due(self, st: _LayerState) -> bool:
        return self.steps % self.update_freq == 0 or st.refreshed_damping != self.damping

    def _refresh(self, st: _LayerState) -> None:
        A, G = st.ema["A"], st.ema["G"]
        mean_a, mean_g = A.diagonal().mean().item(), G.diagonal().mean().item()
        st.pi = math.sqrt(mean_a / mean_g) if mean_a > 0 and mean_g > 0 else 1.0
        if self.damping_mode == "factored":
            root = math.sqrt(self.damping)
            st.cache = {
                "inv_A": self._damped_inverse(A, root * st.pi),
                "inv_G": self._damped_inverse(G, root / st.pi),
            }
        else:
            (dA, QA), (dG, QG) = self._eigh(A), self._eigh(G)
            st.cache = {"dA": dA, "QA": QA, "dG": dG, "QG": QG}

    def _damped_inverse(self, m: torch.Tensor, shift: float) -> torch.Tensor:
        """``(m + shift I)^{-1}`` through a Cholesky factorisation, retried in float64 when it fails."""
        m = 0.5 * (m + m.T)
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
        m = 0.5 * (m + m.T)
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
        self, st: _LayerState, grad: torch.Tensor, a: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor | None:
        rows, d = a.shape
        d_out, d_bar = grad.shape
        homogeneous = d_bar == d + 1
        if st.probes is None or st.probes[0].dtype != grad.dtype or st.probes[0].device != grad.device:
            gen = torch.Generator(device=grad.device).manual_seed(_PROBE_SEED)
            kw = {"generator": gen, "dtype": grad.dtype, "device": grad.device}
            st.probes = (torch.randn(d_out, _PROBES, **kw), torch.randn(d_bar, _PROBES, **kw))
        U, P = st.probes

        def right(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:  # abar @ m without forming abar
            return torch.addmm(m[d], x, m[:d]) if homogeneous else x @ m

        # grad must be the product of the captured factors: anything else in .grad (a penalty on the
        # weight, clipping, a DDP average, a backward the hooks did not see) shows in the probes.
        diff = U.T @ (grad @ P) - (g @ U).T @ right(a, P)
        bound = (g.abs() @ U.abs()).T @ right(a.abs(), P.abs())
        gamma = (rows + d_out + d_bar) * torch.finfo(grad.dtype).eps
        if bool((diff.abs() > 2.0 * gamma * bound).any()):
            return None
        return (st.cache["inv_G"] @ g.T) @ right(a, st.cache["inv_A"])

    def _precondition(self, st: _LayerState, grad: torch.Tensor) -> torch.Tensor:
        c = st.cache
        if self.damping_mode == "factored":
            return c["inv_G"] @ grad @ c["inv_A"]
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

    def _statistics(
        self, adapter: _Adapter, a: torch.Tensor, g: torch.Tensor, n: int
    ) -> dict[str, tuple[torch.Tensor, float]]:
        if adapter.has_bias:
            a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
        if a.shape[1] == 1:  # one position: the per-example gradient g a^T squares to g^2 (a^2)^T
            d = (g[:, :, 0] ** 2).sum(0).T @ (a[:, 0] ** 2)
        else:
            d = sum((torch.einsum("ntc,ntd->ncd", gb, a) ** 2).sum(0) for gb in g)
        return {"D": (d, n)}

    def _precondition(self, st: _LayerState, grad: torch.Tensor) -> torch.Tensor:
        return grad / (st.ema["D"] + self.damping)


def _second_moment(a: torch.Tensor, homogeneous: bool) -> torch.Tensor:
    """``sum_r abar_r abar_r^T`` with ``abar = (a, 1)`` when ``homogeneous``, without concatenating."""
    s = a.T @ a
    if not homogeneous:
        return s
    d = a.shape[1]
    out = s.new_empty(d + 1, d + 1)
    out[:d, :d] = s
    col = a.sum(0)
    out[:d, d] = col
    out[d, :d] = col
    out[d, d] = a.shape[0]
    return out


def _batched_grad(logits: torch.Tensor, edges: list, v: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """Gradients at ``edges`` for each cotangent ``v[b]`` on the logits, each with a leading ``B`` axis."""
    if v.shape[0] == 1:
        grads = torch.autograd.grad(logits, edges, v[0], retain_graph=True, allow_unused=True)
        return tuple(None if g is None else g.unsqueeze(0) for g in grads)
    try:
        return torch.autograd.grad(logits, edges, v, retain_graph=True, allow_unused=True, is_grads_batched=True)
    except RuntimeError:
        # vmap has no batching rule for some backward op of this model: one backward per cotangent.
        per = [torch.autograd.grad(logits, edges, vb, retain_graph=True, allow_unused=True) for vb in v]
        return tuple(None if gs[0] is None else torch.stack(gs) for gs in zip(*per, strict=True))
