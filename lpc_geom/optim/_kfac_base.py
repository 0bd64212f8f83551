r"""What K-FAC and the diagonal Fisher share: the hooks, the Fisher backward, the moving averages, the step
(preconditioning and KL clipping) and the state.

:class:`_FisherPreconditioner` records, per supported layer (:mod:`._kfac_layers`), the input and the
gradient edge of the output in the forward pass, runs one extra backward of the cross-entropy cotangents
of the chosen Fisher (:meth:`~_FisherPreconditioner.update_statistics`), pools the statistics of all
micro-batches between two steps before they enter the moving averages, and in
:meth:`~_FisherPreconditioner.step` rewrites each layer's ``.grad`` by the subclass's preconditioner and
KL-clips the result. The mathematics is in :mod:`lpc_geom.optim.kfac`.
"""

from __future__ import annotations

import logging
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import get_gradient_edge

from lpc_geom.optim._kfac_layers import KFACLayer, _Adapter, adapter_for, adapter_from_spec

log = logging.getLogger("lpc_geom.optim.kfac")

FisherType = Literal["empirical", "mc", "exact"]
#: Matrices kept from step to step get rows padded to a multiple of this many elements (64 bytes in float32):
#: BLAS kernels write a product whose rows start misaligned (a ``d + 1`` wide factor or gradient with the
#: homogeneous coordinate) markedly slower.
_ALIGN = 16
#: ``fold(dst, beta, alpha)``: ``dst <- beta dst + alpha S`` for the statistics ``S`` it forms
#: (``dst`` ignored when ``beta == 0``)
_Fold = Callable[[torch.Tensor, float, float], None]


@dataclass(eq=False)
class _LayerState:
    """Statistics of one layer: running means of the statistics pending since the last step (with their
    counts), the moving averages they feed, and what the last refresh computed from those (inverses or
    eigendecompositions)."""

    means: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    ema: dict[str, torch.Tensor] = field(default_factory=dict)
    cache: dict[str, torch.Tensor] = field(default_factory=dict)
    pi: float = 1.0
    refreshed_damping: float | None = None
    batch: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    batch_rows: int = 0
    probes: tuple[torch.Tensor, ...] | None = None
    deferred: dict[str, tuple[float, _Fold, torch.Tensor]] = field(default_factory=dict)
    work: dict[str, torch.Tensor] = field(default_factory=dict)
    upper_only: set[str] = field(default_factory=set)

    def mark_upper_only(self, key: str) -> None:
        """From now on only the upper triangle (with the diagonal) of ``key``'s symmetric statistics is kept up
        to date, until :meth:`full` mirrors it; a moving average that held a full matrix (a loaded state) is
        replaced by its symmetric part first, which is all of it that the factors are read for."""
        if key in self.upper_only:
            return
        m = self.ema.get(key)
        if m is not None:
            m.copy_((m + m.mT).mul_(0.5))
        self.upper_only.add(key)

    def full(self, key: str) -> torch.Tensor | None:
        """The moving average ``key``, its strict lower triangle mirrored from the upper one if it is stale."""
        m = self.ema.get(key)
        if m is not None and key in self.upper_only:
            m.copy_(torch.triu(m) + torch.triu(m, 1).mT)
            self.upper_only.discard(key)
        return m

    def buffer(
        self, key: str, shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """A scratch matrix ``key`` of ``shape`` (rows aligned, :func:`_aligned_empty`), kept from step to step.

        Its content is whatever the last user left; it lives until the next call with the same ``key``.
        """
        dtype = like.dtype if dtype is None else dtype
        buf = self.work.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != like.device:
            buf = self.work[key] = _aligned_empty(shape, like, dtype)
        return buf

    def accumulate(
        self, key: str, count: float, shape: tuple[int, ...], like: torch.Tensor, fold: _Fold, defer: bool
    ) -> None:
        """Add the statistics ``fold`` forms (the sum of ``count`` terms) to ``key``'s pending ones.

        ``fold(dst, beta, alpha)`` sets ``dst <- beta dst + alpha sum`` (ignoring ``dst`` when ``beta`` is 0).
        With ``defer``, when the moving average exists and nothing else is pending, it is kept as it is
        and called at the next step on the moving average itself (one product into it instead of a
        product and a pass of the average over the mean); a second call before that step first folds the
        deferred statistics into the pending mean.
        """
        if key in self.deferred:
            c, f, ref = self.deferred.pop(key)
            buf, beta, alpha = self.pending(key, c, shape, ref)
            f(buf, beta, alpha)
        if defer and key in self.ema and key not in self.counts:
            self.deferred[key] = (count, fold, like)
            return
        buf, beta, alpha = self.pending(key, count, shape, like)
        fold(buf, beta, alpha)

    def pending(
        self, key: str, count: float, shape: tuple[int, ...], like: torch.Tensor
    ) -> tuple[torch.Tensor, float, float]:
        """The buffer of ``key``'s pending mean and the weights ``(beta, alpha)`` that fold the sum of
        ``count`` new terms into it, ``mean <- beta mean + alpha sum``.

        With ``c`` terms already pending, ``beta = c / (c + count)`` and ``alpha = 1 / (c + count)``: the
        buffer then holds the mean over all ``c + count`` terms. ``beta == 0`` when nothing is pending, and
        the buffer's content (left from an earlier step) must then be ignored, not scaled. The buffers are
        kept from step to step, so that accumulating allocates nothing.
        """
        before = self.counts.get(key, 0.0)
        after = before + count
        self.counts[key] = after
        buf = self.means.get(key)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            # zeroed once: a triangle left unwritten (see mark_upper_only) then stays finite
            buf = self.means[key] = _aligned_empty(shape, like).zero_()
        return buf, before / after, 1.0 / after


def _aligned_empty(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` on ``like``'s device; a matrix gets its rows padded to a multiple of
    :data:`_ALIGN` elements (a view of a wider buffer), so that every row starts on a 64-byte boundary."""
    dtype = like.dtype if dtype is None else dtype
    if len(shape) != 2 or shape[1] % _ALIGN == 0:
        return like.new_empty(shape, dtype=dtype)
    rows, cols = shape
    return like.new_empty((rows, cols + (-cols) % _ALIGN), dtype=dtype)[:, :cols]


def _aligned_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` laid out as :func:`_aligned_empty` lays out a new tensor."""
    return _aligned_empty(tuple(t.shape), t).copy_(t)


def _fold(dst: torch.Tensor, total: torch.Tensor, beta: float, alpha: float) -> None:
    """``dst <- beta dst + alpha total`` in place; ``dst``'s old content is ignored when ``beta == 0``."""
    if beta == 0.0:
        torch.mul(total, alpha, out=dst)
    else:
        dst.mul_(beta).add_(total, alpha=alpha)


class _FisherPreconditioner(ABC):
    """Hooks, Fisher backward, moving averages, KL clipping and state shared by the preconditioners.

    Subclasses define which statistics a layer keeps (:meth:`_accumulate`), how they are refreshed
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
        self._row_limits = {name: self._low_rank_rows(adapter) for name, adapter in self._adapters.items()}
        self._records: list[tuple[str, torch.Tensor, Any]] = []
        self._handles = [model.register_forward_pre_hook(self._on_model_forward)]
        for name, adapter in self._adapters.items():
            hook = partial(self._record, name)
            self._handles.append(adapter.module.register_forward_hook(hook, with_kwargs=True))

    # ------------------------------------------------------------------ what subclasses define
    @abstractmethod
    def _accumulate(self, st: _LayerState, adapter: _Adapter, a: torch.Tensor, g: torch.Tensor, n: int) -> None:
        """Fold the statistics of inputs ``a`` (N, T, d_in) and output gradients ``g`` (B, N, T, d_out) of
        ``n`` examples into ``st``'s pending means (:meth:`_LayerState.pending`)."""

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
        self, st: _LayerState, gw: torch.Tensor, gb: torch.Tensor | None, a: torch.Tensor, g: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The preconditioned gradient from the batch factors ``[gw | gb] = g^T abar`` (``a`` (R, d_in), ``g``
        (R, d_out)) as its weight and bias parts, or ``None`` when the gradient is not that product."""
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
        limit = self._row_limits[name]
        if not (statistics or limit):
            return
        out = adapter.get_output(output)
        if not (isinstance(out, torch.Tensor) and out.requires_grad):
            return
        x = adapter.get_input(args, kwargs).detach()
        if statistics:
            # The edge is taken now, before an in-place activation can replace the output's grad_fn.
            self._records.append((name, x, get_gradient_edge(out)))
        if limit and adapter.rows(out) <= limit:
            # A tensor hook registered before an in-place activation still receives the gradient with
            # respect to the value the layer returned.
            out.register_hook(partial(self._capture_batch_factor, name, x))

    def _capture_batch_factor(self, name: str, x: torch.Tensor, grad: torch.Tensor) -> None:
        """Keep ``(input, output gradient)`` of a training backward (not of the Fisher backward)."""
        if self._fisher_pass:
            return
        st = self._state[name]
        st.batch_rows += self._adapters[name].rows(grad)
        if st.batch_rows > self._row_limits[name]:
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
                self._accumulate(self._state[name], adapter, a, gp, n)

    def _flush_statistics(self) -> None:
        pending = [st for st in self._state.values() if st.counts or st.deferred]
        if self.distributed and pending:
            for st in pending:
                keys = sorted(st.counts)
                ref = st.means[keys[0]]
                counts = torch.tensor([st.counts[k] for k in keys], dtype=ref.dtype, device=ref.device)
                # sums and counts are what add up over the replicas
                buf = torch.cat([(st.means[k] * st.counts[k]).flatten() for k in keys] + [counts])
                torch.distributed.all_reduce(buf)
                total = buf[-len(keys) :].tolist()
                offset = 0
                for k, c in zip(keys, total, strict=True):
                    size = st.means[k].numel()
                    torch.div(buf[offset : offset + size].view_as(st.means[k]), c, out=st.means[k])
                    offset += size
                st.counts = dict(zip(keys, total, strict=True))
        weight = 1.0 - self.ema_decay
        for st in pending:
            for key in st.counts:
                mean = st.means[key]
                if key not in st.ema:
                    st.ema[key] = _aligned_copy(mean)
                else:
                    st.ema[key].lerp_(mean, weight)
            for key, (count, fold, _) in st.deferred.items():
                fold(st.ema[key], self.ema_decay, weight / count)
            st.counts, st.deferred = {}, {}

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
        updates: list[tuple[_Adapter, tuple[torch.Tensor, torch.Tensor | None]]] = []
        low_rank: list[str] = []
        vgs: list[torch.Tensor] = []
        for name, adapter in self._adapters.items():
            st = self._state[name]
            batch, st.batch, st.batch_rows = st.batch, [], 0
            if not st.ema:
                continue
            if adapter.weight.grad is None:
                continue
            if self._refresh_due(st):
                self._refresh(st)
                st.refreshed_damping = self.damping
            dtype = next(iter(st.ema.values())).dtype
            gw, gb = adapter.grad_parts()
            gw, gb = gw.to(dtype), None if gb is None else gb.to(dtype)
            v = None
            if batch:
                a_rows, g_rows = self._batch_rows(adapter, batch, dtype)
                v = self._precondition_low_rank(st, gw, gb, a_rows, g_rows)
            if v is None:
                grad = st.buffer("grad", adapter.matrix_shape, gw)
                grad[:, : gw.shape[1]].copy_(gw)
                if gb is not None:
                    grad[:, -1].copy_(gb)
                full = self._precondition(st, grad)
                v = (full[:, : gw.shape[1]], None if gb is None else full[:, -1])
            else:
                low_rank.append(name)
            vg = _frobenius(v[0], gw)
            vgs.append(vg if gb is None else vg + torch.dot(v[1], gb))
            updates.append((adapter, v))
        self.last_low_rank = tuple(low_rank)
        lr = self.lr if lr is None else lr
        nu = 1.0
        vg = torch.stack(vgs).to(torch.float64).sum().item() if vgs else 0.0
        if self.kl_clip and updates and vg > 0.0:
            nu = min(1.0, math.sqrt(self.kl_clip / (lr**2 * vg)))
        for adapter, (vw, vb) in updates:
            adapter.write_grad(vw, vb, nu)
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
                "ema": {k: st.full(k).clone() for k in st.ema},
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
                return {k: _aligned_copy(v.to(device=device, dtype=dtype)) for k, v in tensors.items()}

            self._state[name] = _LayerState(
                ema=moved(entry["ema"]),
                cache=moved(entry["cache"]),
                pi=float(entry["pi"]),
                refreshed_damping=entry["damping"],
            )
        self.steps = int(state["steps"])


def _frobenius(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``<x, y> = sum_ij x_ij y_ij`` of two matrices (one dot product when both are contiguous)."""
    if x.is_contiguous() and y.is_contiguous():
        return torch.dot(x.reshape(-1), y.reshape(-1))
    return (x * y).sum()


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
