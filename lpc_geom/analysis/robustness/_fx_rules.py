r"""Function rules of the torch.fx Lipschitz walker: one rule per node kind, kept in a registry.

A rule covers one ``call_function``/``call_method`` node of a traced graph. It receives the node as a
:class:`FunctionCall` (its argument values on the probe batch, their bounds with respect to the model
input, its output) and returns the bound of the output. :data:`FUNCTION_RULES` holds the rules, keyed by
the ``call_function`` target or, for ``call_method``, by the method name; :func:`register_function_rule`
adds one. The walker that applies them node by node is :mod:`lpc_geom.analysis.robustness._fx_lipschitz`.

=========================================  ======================================================
node                                       bound of the output
=========================================  ======================================================
element-wise activations (functional,      :math:`c\,L` with :math:`c = \sup|\phi'|`
method and in-place forms)                 (:data:`ACTIVATION_CONSTANTS`); LeakyReLU/ELU
                                           :math:`\max(1, |a|)`, PReLU :math:`\max(1, \max|a|)`
``F.linear``, ``@``/``matmul`` by a        :math:`\sigma_{\max}(W)\,L` (exact)
constant matrix
``F.conv1d/2d/3d``                         exact norm (see :func:`~.spectral.conv_layer_norm`)
``F.batch_norm`` (running statistics)      :math:`\max_c|\gamma_c|/\sqrt{v_c+\epsilon}\,L`
average poolings                           Schur-test bound (exact for global and non-overlapping
                                           windows, sound otherwise)
max poolings, ``amax``, ``max(dim)``       :math:`\sqrt{m}\,L`, ``m`` the largest number of windows
                                           sharing an input (1 for reductions)
``mean``/``sum`` over ``k`` elements       :math:`L/\sqrt k` / :math:`\sqrt k\,L` (exact)
``logsumexp``, 2-norm over dims            :math:`L` (their gradients have norm at most 1)
``softmax``                                :math:`L/2` (Gershgorin on :math:`\operatorname{diag}(p) - pp^\top`)
view, reshape, flatten, permute,           :math:`\sqrt{m}\,L`, with ``m`` the largest number of
transpose, indexing, chunk, pad, ...       copies of one input element, *measured*: the op is run on
                                           a tensor of element indices
dropout (eval), dtype casts                :math:`L`
``+``, ``-``, ``*``/``/`` by constants,    the sum and concatenation bounds of
``cat``/``stack``                          :mod:`~lpc_geom.analysis.robustness._fx_lipschitz`
=========================================  ======================================================

A rule refuses what would make the bound unsound (a reduction or a move across the batch axis,
functional dropout with ``training=True``, a product of two input-dependent values, ...) with a
:class:`LipschitzRuleError` naming the node and its code line.
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from lpc_geom.analysis.robustness._common import LipschitzRuleError, UnboundedLipschitzError, add_rule
from lpc_geom.analysis.robustness.spectral import (
    adaptive_max_pool_bound,
    batch_norm_norm,
    conv_layer_norm,
    matrix_spectral_norm,
    max_pool_bound,
    nonnegative_operator_norm_bound,
    per_axis,
)

__all__ = [
    "ACTIVATION_CONSTANTS",
    "FUNCTION_RULES",
    "NORMALISATION_REASON",
    "FunctionCall",
    "FunctionRule",
    "describe_node",
    "elementwise_rule",
    "is_constant",
    "register_function_rule",
]

#: :math:`\sup_x |\phi'(x)|` of element-wise activations, rounded up where irrational (SiLU: 1.0998393...,
#: GELU: 1.1289041 (erf) / 1.1289931 (tanh approximation), Mish: 1.0884982...). Softplus, LogSigmoid,
#: Softsign, Tanhshrink and Softshrink have derivatives in [0, 1]; CELU too for its ``alpha > 0``.
ACTIVATION_CONSTANTS: dict[str, float] = {
    "relu": 1.0, "relu6": 1.0, "hardtanh": 1.0, "tanh": 1.0, "softplus": 1.0, "softsign": 1.0,
    "logsigmoid": 1.0, "tanhshrink": 1.0, "softshrink": 1.0, "celu": 1.0, "abs": 1.0, "clamp": 1.0,
    "silu": 1.09984, "gelu": 1.12900, "mish": 1.08850, "sigmoid": 0.25, "hardsigmoid": 1.0 / 6.0,
    "hardswish": 1.5, "selu": 1.0507009873554805 * 1.6732632423543772,
}

# A sentinel for "no default": the argument is required.
_REQUIRED = object()


@dataclass(frozen=True)
class FunctionCall:
    """One ``call_function``/``call_method`` node of a traced graph, as a function rule sees it.

    Attributes
    ----------
    node : torch.fx.Node
    args, kwargs
        The node's arguments as values (tensors of shape ``(PROBE_BATCH, ...)`` for batched values).
    arg_bounds, kwarg_bounds
        Their bounds, same structure: a float per tensor (0 for constants), tuples for tuples, None
        where no bound is known (e.g. the indices of a max).
    output
        The node's value.
    batch_size : int
        Leading size of batched values (:data:`PROBE_BATCH`).
    """

    node: fx.Node
    args: tuple
    kwargs: dict
    arg_bounds: tuple
    kwarg_bounds: dict
    output: Any
    batch_size: int

    def arg(self, index: int, name: str, default: Any = _REQUIRED) -> Any:
        """The argument at position ``index`` or keyword ``name`` (methods count ``self`` as position 0)."""
        if index < len(self.args):
            return self.args[index]
        if name in self.kwargs:
            return self.kwargs[name]
        if default is _REQUIRED:
            raise self.fail(f"argument {name!r} is missing")
        return default

    def bound(self, index: int, name: str | None = None) -> Any:
        """The bound of the argument at ``index`` (or keyword ``name``); 0 when it is absent."""
        if index < len(self.arg_bounds):
            return self.arg_bounds[index]
        return self.kwarg_bounds.get(name, 0.0) if name is not None else 0.0

    def dependent(self) -> list[tuple[int | str, Any, Any]]:
        """``(position or keyword, value, bound)`` of every argument that depends on the input."""
        found = [(i, v, b) for i, (v, b) in enumerate(zip(self.args, self.arg_bounds, strict=True))
                 if not is_constant(b)]
        return found + [(k, self.kwargs[k], b) for k, b in self.kwarg_bounds.items() if not is_constant(b)]

    @property
    def input_bound(self) -> float:
        """Bound of the one input-dependent tensor argument (an error if there are several)."""
        return self.only_input()[2]

    def only_input(self, allowed: Sequence[int | str] = (0,)) -> tuple[int | str, torch.Tensor, float]:
        """The single input-dependent argument, which must be a tensor at one of ``allowed`` positions."""
        dep = self.dependent()
        if len(dep) != 1 or dep[0][0] not in allowed:
            where = ", ".join(str(d[0]) for d in dep)
            raise self.fail(f"the rule takes one input-dependent tensor (argument {allowed[0]}), but arguments "
                            f"[{where}] depend on the input")
        key, value, bound = dep[0]
        if not isinstance(value, torch.Tensor) or not isinstance(bound, float):
            raise self.fail(f"argument {key} depends on the input but is not a tensor with a known bound")
        return key, value, bound

    def fail(self, message: str) -> LipschitzRuleError:
        """A :class:`LipschitzRuleError` about this node."""
        return LipschitzRuleError(f"{describe_node(self.node)}: {message}")


#: A function rule: ``rule(call) -> bound of call.output`` (a float, or a tuple for tuple outputs).
FunctionRule = Callable[[FunctionCall], Any]

#: Function rules by ``call_function`` target (a callable) or ``call_method`` name (a str).
FUNCTION_RULES: dict[Callable | str, FunctionRule] = {}


def register_function_rule(target: Callable | str, rule: FunctionRule | None = None, *, replace: bool = False):
    """Register the rule of a function (``call_function`` target) or a tensor method (its name).

    Plain Python functions registered here are kept as single nodes when tracing (they are passed to the
    tracer's ``autowrap_functions``), so a rule can cover a whole helper function.

    Parameters
    ----------
    target : callable or str
        The function (``torch.erf``, ``operator.add``, a function of your own) or the method name.
    rule : callable, optional
        ``rule(call: FunctionCall) -> bound``; omitted, a decorator is returned.
    replace : bool, default False
        Allow replacing an existing rule.

    Returns
    -------
    The rule (or a decorator registering one).
    """

    def register(fn: FunctionRule) -> FunctionRule:
        if callable(fn) and not (isinstance(target, str) or callable(target)):
            raise TypeError(f"a function rule is keyed by a callable or a method name, got {target!r}")
        return add_rule(FUNCTION_RULES, target, fn, replace=replace, describe=target_name)

    return register if rule is None else register(rule)


def elementwise_rule(constant: float | Callable[[FunctionCall], float]) -> FunctionRule:
    r"""Rule for an element-wise map with Lipschitz constant ``constant`` of its first argument.

    The output bound is :math:`c\,L_{\text{input}}`; every other argument must be constant.

    Parameters
    ----------
    constant : float or callable
        :math:`c`, or a function of the :class:`FunctionCall` returning it (for parametrised maps).
    """

    def rule(call: FunctionCall) -> float:
        _, x, lip = call.only_input()
        if isinstance(call.output, torch.Tensor) and call.output.shape != x.shape:
            raise call.fail(f"an element-wise rule needs the output shape to match the input's, got "
                            f"{tuple(x.shape)} -> {tuple(call.output.shape)}")
        c = float(constant(call) if callable(constant) else constant)
        if not c >= 0:
            raise call.fail(f"the element-wise constant must be >= 0, got {c}")
        return c * lip

    return rule


def is_constant(bound: Any) -> bool:
    """True when a bound structure is zero everywhere (the value does not depend on the input)."""
    if isinstance(bound, tuple):
        return all(is_constant(b) for b in bound)
    return bound is not None and bound == 0.0



# ------------------------------------------------------------------------------------ node names


_PUBLIC_NAMESPACES = (("torch.nn.functional", F), ("torch", torch), ("torch.linalg", torch.linalg),
                      ("operator", operator), ("builtins", builtins))
_PUBLIC_NAMES: dict[int, tuple[Any, str]] = {}  # id -> (the object, kept alive so the id stays its own; name)


def target_name(target: Any) -> str:
    """``Tensor.name`` for a method, the public dotted name of a torch/operator function, else module.qualname."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    if not _PUBLIC_NAMES:
        for prefix, namespace in reversed(_PUBLIC_NAMESPACES):  # earlier namespaces win
            for attr in dir(namespace):
                obj = getattr(namespace, attr, None) if not attr.startswith("_") else None
                if callable(obj):
                    _PUBLIC_NAMES[id(obj)] = (obj, f"{prefix}.{attr}")
    known = _PUBLIC_NAMES.get(id(target))
    if known is not None and known[0] is target:
        return known[1]
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    return f"{module}.{name}" if module else name


#: Key of ``node.meta`` under which the tracer notes the code line that made a node.
CODE_LOCATION = "lipschitz_code_location"


def _code_location(node: fx.Node) -> str:
    return node.meta.get(CODE_LOCATION, "")


def describe_node(node: fx.Node) -> str:
    """Node name, op, target and code location, for error messages."""
    target = node.target if node.op in ("call_module", "get_attr") else target_name(node.target)
    where = _code_location(node)
    return f"node {node.name!r} ({node.op} {target}" + (f" at {where})" if where else ")")


# ------------------------------------------------------------------------------------ rule helpers


def _dim_list(dim: Any, ndim: int) -> list[int]:
    dims = [dim] if isinstance(dim, int) else list(dim)
    return sorted({d % ndim for d in dims})


def _broadcast_factor(call: FunctionCall, value: torch.Tensor) -> float:
    """:math:`\\sqrt{m}` for an input-dependent operand broadcast to the output, each element copied m times."""
    out = call.output
    if value.dim() != out.dim() or value.shape[0] != out.shape[0]:
        raise call.fail(f"an input-dependent operand of shape {tuple(value.shape)} broadcasts to "
                        f"{tuple(out.shape)} across the batch axis")
    return math.sqrt(out.numel() / value.numel())


def _max_abs(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().abs().max()) if value.numel() else 0.0
    return abs(float(value))


def _sum_rule(alpha_on_input: bool = False) -> FunctionRule:
    """``input ± alpha * other`` (``torch.rsub``: ``other - alpha * input``), with broadcasting."""

    def rule(call: FunctionCall) -> float:
        alpha = abs(float(call.arg(2, "alpha", 1)))
        total = 0.0
        for key, value, bound in call.dependent():
            if key not in (0, 1, "other", "input") or not isinstance(value, torch.Tensor):
                raise call.fail(f"argument {key} depends on the input but is not a summand tensor")
            if not isinstance(bound, float):
                raise call.fail(f"argument {key} has no known bound")
            is_input = key in (0, "input")
            weight = alpha if is_input == alpha_on_input else 1.0
            total += weight * _broadcast_factor(call, value) * bound
        return total

    return rule


def _product_rule(divide: bool) -> FunctionRule:
    def rule(call: FunctionCall) -> float:
        if divide and call.kwargs.get("rounding_mode") is not None:
            raise call.fail("rounded division is discontinuous")
        dep = call.dependent()
        if divide and any(key not in (0, "input") for key, _, _ in dep):
            raise call.fail("division by an input-dependent value has no global Lipschitz bound")
        if len(dep) != 1:
            raise call.fail("a product or quotient of two input-dependent values has no global Lipschitz bound; "
                            "wrap the computation in a function and register a rule for it if it is bounded")
        key, value, bound = dep[0]
        numerator = key in (0, "input")
        if not isinstance(value, torch.Tensor) or not isinstance(bound, float):
            raise call.fail(f"argument {key} depends on the input but is not a tensor with a known bound")
        other = call.arg(1, "other") if numerator else call.arg(0, "input")
        c = _max_abs(other)
        if divide:
            smallest = float(torch.as_tensor(other).abs().min())
            if smallest == 0:
                raise call.fail("division by a constant containing zero")
            c = 1.0 / smallest
        return c * _broadcast_factor(call, value) * bound

    return rule


def _matmul_rule(call: FunctionCall) -> float:
    key, x, bound = call.only_input(allowed=(0, 1, "input", "other", "mat2"))
    w = call.arg(1, "other") if key in (0, "input") else call.arg(0, "input")
    if not isinstance(w, torch.Tensor) or w.dim() > 2:
        raise call.fail("matmul is bounded for an input-dependent tensor times a constant vector or matrix")
    right = key in (0, "input")
    if x.dim() < (2 if right else 3):
        raise call.fail(f"a constant times an input of shape {tuple(x.shape)} would mix samples")
    return (matrix_spectral_norm(w) if w.dim() == 2 else float(w.detach().double().norm())) * bound


def _linear_rule(call: FunctionCall) -> float:
    call.only_input()
    return matrix_spectral_norm(call.arg(1, "weight")) * call.input_bound


def _conv_rule(d: int) -> FunctionRule:
    def rule(call: FunctionCall) -> float:
        _, x, bound = call.only_input()
        weight = call.arg(1, "weight")
        if x.dim() != d + 2:
            raise call.fail(f"a {d}-D convolution of a batch needs inputs of {d + 2} dimensions, got {x.dim()}")
        padding = call.arg(4, "padding", 0)
        padding = padding if isinstance(padding, str) else per_axis(padding, d)
        return bound * conv_layer_norm(weight, tuple(x.shape[1:]), tuple(call.output.shape[1:]),
                                       stride=per_axis(call.arg(3, "stride", 1), d), padding=padding,
                                       dilation=per_axis(call.arg(5, "dilation", 1), d),
                                       groups=int(call.arg(6, "groups", 1)))

    return rule


def _batch_norm_rule(call: FunctionCall) -> float:
    _, _, bound = call.only_input()
    running_var = call.arg(2, "running_var")
    if call.arg(5, "training", False) or running_var is None:
        raise UnboundedLipschitzError(f"{describe_node(call.node)}: batch norm with batch statistics normalises "
                                      "each sample by statistics of the others (and of itself)")
    return batch_norm_norm(running_var, call.arg(3, "weight", None), float(call.arg(7, "eps", 1e-5))) * bound


def _dropout_rule(call: FunctionCall) -> float:
    _, _, bound = call.only_input()
    if call.arg(2, "training", True):
        raise call.fail("functional dropout with training=True (its default) drops at random even in eval mode; "
                        "pass training=self.training")
    return bound


def _avg_pool_rule(call: FunctionCall) -> float:
    _, x, bound = call.only_input()
    rest, kwargs = call.args[1:], call.kwargs
    return bound * nonnegative_operator_norm_bound(lambda t: call.node.target(t, *rest, **kwargs),
                                                   tuple(x.shape[1:]), device=x.device)


def _max_pool_rule(d: int) -> FunctionRule:
    def rule(call: FunctionCall) -> Any:
        _, x, bound = call.only_input()
        values = call.output[0] if isinstance(call.output, tuple) else call.output
        lip = bound * max_pool_bound(x.shape[-d:], values.shape[-d:], call.arg(1, "kernel_size"),
                                     call.arg(2, "stride", None), call.arg(3, "padding", 0),
                                     call.arg(4, "dilation", 1))
        return (lip, None) if isinstance(call.output, tuple) else lip

    return rule


def _adaptive_max_pool_rule(d: int) -> FunctionRule:
    def rule(call: FunctionCall) -> Any:
        _, x, bound = call.only_input()
        values = call.output[0] if isinstance(call.output, tuple) else call.output
        lip = bound * adaptive_max_pool_bound(x.shape[-d:], values.shape[-d:])
        return (lip, None) if isinstance(call.output, tuple) else lip

    return rule


def _reduced(call: FunctionCall, x: torch.Tensor, default: Any = None) -> int:
    """Number of elements reduced into each output, refusing reductions over the batch axis."""
    dim = call.arg(1, "dim", default)
    if dim is None or (isinstance(dim, Sequence) and len(dim) == 0):
        raise call.fail("a reduction over all axes mixes the samples of a batch; pass dim")
    dims = _dim_list(dim, x.dim())
    if 0 in dims:
        raise call.fail("a reduction over the batch axis mixes samples")
    return math.prod(x.shape[d] for d in dims)


def _mean_rule(call: FunctionCall) -> float:
    _, x, bound = call.only_input()
    return bound / math.sqrt(_reduced(call, x))


def _sum_over_rule(call: FunctionCall) -> float:
    _, x, bound = call.only_input()
    return bound * math.sqrt(_reduced(call, x))


def _contraction_reduction_rule(call: FunctionCall) -> Any:
    """max/min/amax/amin/logsumexp over axes: every output is 1-Lipschitz in its own group of inputs."""
    _, x, bound = call.only_input()
    if call.node.target in ("max", "min", torch.max, torch.min) and isinstance(call.arg(1, "dim", None),
                                                                              torch.Tensor):
        raise call.fail("an element-wise maximum of two tensors has no rule")
    _reduced(call, x)
    return (bound, None) if isinstance(call.output, tuple) else bound


def _vector_norm_rule(call: FunctionCall) -> float:
    _, x, bound = call.only_input()
    p = call.arg(1, "p", "fro") if call.node.target in ("norm", torch.norm) else call.arg(1, "ord", 2)
    if p not in (2, 2.0, "fro"):
        raise call.fail(f"only the 2-norm is bounded (by 1), got p={p!r}")
    dim = call.arg(2, "dim", None)
    if dim is None:
        raise call.fail("a norm over all axes mixes the samples of a batch; pass dim")
    if 0 in _dim_list(dim, x.dim()):
        raise call.fail("a norm over the batch axis mixes samples")
    return bound


def _softmax_rule(call: FunctionCall) -> float:
    r"""The Jacobian :math:`\operatorname{diag}(p) - pp^\top` has Gershgorin radii :math:`2p_i(1-p_i) \le 1/2`."""
    _, x, bound = call.only_input()
    dim = call.arg(1, "dim", None)
    if dim is None:  # the implicit choice of torch.nn.functional.softmax
        dim = 0 if x.dim() in (0, 1, 3) else 1
    if dim % x.dim() == 0:
        raise call.fail("softmax over the batch axis mixes samples")
    return 0.5 * bound


def _concat_rule(call: FunctionCall) -> float:
    tensors, bounds = call.arg(0, "tensors"), call.bound(0, "tensors")
    dim = int(call.arg(1, "dim", 0))
    ndim = call.output.dim()
    if dim % ndim == 0:
        raise call.fail("concatenating along the batch axis mixes samples")
    if any(b is None for b in bounds) or any(not isinstance(b, float) for b in bounds):
        raise call.fail("every concatenated value needs a known bound")
    if len(call.dependent()) != 1 or len(tensors) != len(bounds):
        raise call.fail("only the tensor list may depend on the input")
    return math.sqrt(sum(b * b for b in bounds))


def _metadata_rule(call: FunctionCall) -> float:
    return 0.0


def _same_rule(call: FunctionCall) -> float:
    """Dtype and device casts (``float``, ``to``, ``type_as``): the value is unchanged.

    Other tensor arguments (``to(other)``, ``type_as(other)``) give only a dtype and device.
    """
    x, bound = call.args[0], call.bound(0)
    if not isinstance(bound, float):
        raise call.fail("the cast tensor has no known bound")
    if isinstance(call.output, torch.Tensor) and not call.output.is_floating_point():
        raise call.fail(f"a cast to {call.output.dtype} rounds the values (not Lipschitz)")
    if isinstance(call.output, torch.Tensor) and call.output.shape != x.shape:
        raise call.fail("a cast must keep the shape")
    return bound


def _apply(call: FunctionCall, replacement: torch.Tensor) -> Any:
    args = (replacement, *call.args[1:])
    if call.node.op == "call_method":
        return getattr(args[0], call.node.target)(*args[1:], **call.kwargs)
    return call.node.target(*args, **call.kwargs)


_SHAPE_FROM_OTHER = ("view_as", "reshape_as", "expand_as")


def _movement_rule(call: FunctionCall) -> Any:
    r"""Ops that only move, drop or copy elements: :math:`\sqrt{m}\,L`, with ``m`` measured.

    The op runs on a tensor holding each element's flat index (exact in float64), which shows where each
    output element comes from: it must come from the same sample, and ``m`` is the largest number of
    copies of one element (1 for views and selections).
    """
    if call.node.target in _SHAPE_FROM_OTHER:  # the other tensor gives only a shape
        x, bound = call.args[0], call.bound(0)
        if not isinstance(x, torch.Tensor) or not isinstance(bound, float):
            raise call.fail("the moved value is not a tensor with a known bound")
    else:
        _, x, bound = call.only_input()
    index = torch.arange(1, x.numel() + 1, dtype=torch.float64, device=x.device).reshape(x.shape)
    if call.node.target is F.pad and call.arg(2, "mode", "constant") == "constant":
        moved = F.pad(index, call.arg(1, "pad"), mode="constant", value=0.0)
    else:
        moved = _apply(call, index)
    per_sample = x.numel() // x.shape[0]

    def measure(out: Any) -> float:
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise call.fail("an element-moving op must return tensors of the input's elements")
        if out.dim() == 0 or out.shape[0] != x.shape[0]:
            raise call.fail(f"the op moves the batch axis ({tuple(x.shape)} -> {tuple(out.shape)})")
        flat = out.reshape(out.shape[0], -1)
        kept = flat > 0  # 0 marks constant padding
        source = torch.div(flat - 1, per_sample, rounding_mode="floor")
        rows = torch.arange(out.shape[0], device=out.device, dtype=flat.dtype)[:, None].expand_as(flat)
        if not bool((source[kept] == rows[kept]).all()):
            raise call.fail("the op moves elements between samples")
        if not bool(kept.any()):
            return 0.0
        counts = torch.bincount((flat[kept] - 1).long(), minlength=x.numel())
        return math.sqrt(int(counts.max())) * bound

    return tuple(measure(o) for o in moved) if isinstance(moved, tuple | list) else measure(moved)


def _getattr_rule(call: FunctionCall) -> Any:
    value, attr = call.args[0], call.args[1]
    if isinstance(value, tuple) and hasattr(value, "_fields") and attr in value._fields:
        return call.bound(0)[value._fields.index(attr)]
    if isinstance(value, torch.Tensor):
        if attr in ("shape", "dtype", "device", "ndim", "layout", "is_cuda", "requires_grad"):
            return 0.0
        return _movement_rule(call)
    raise call.fail(f"no rule for attribute {attr!r} of a {type(value).__name__}")


def _getitem_rule(call: FunctionCall) -> Any:
    value, index = call.args[0], call.args[1]
    if isinstance(value, torch.Tensor):
        if not is_constant(call.bound(1)):
            raise call.fail("indexing with input-dependent indices is not Lipschitz")
        return _movement_rule(call)
    if isinstance(value, tuple | list):
        return call.bound(0)[index]
    raise call.fail(f"no rule for indexing a {type(value).__name__}")


def _zero_rule(call: FunctionCall) -> float:
    """Values that depend on an input tensor's shape only (``zeros_like``, ``new_zeros``, ...)."""
    return 0.0


def _unbounded(reason: str) -> FunctionRule:
    def rule(call: FunctionCall) -> float:
        raise UnboundedLipschitzError(f"{describe_node(call.node)}: {reason}")

    return rule


NORMALISATION_REASON = (
    "normalising by a statistic of the input itself (x -> x / s(x)) has a local Lipschitz constant that grows "
    "without bound as s(x) -> 0, so no finite global bound exists")


def _activation(name: str) -> FunctionRule:
    return elementwise_rule(ACTIVATION_CONSTANTS[name])


def _leaky_relu_constant(call: FunctionCall) -> float:
    return max(1.0, abs(float(call.arg(1, "negative_slope", 0.01))))


def _elu_constant(call: FunctionCall) -> float:
    return max(1.0, abs(float(call.arg(1, "alpha", 1.0))))


def _celu_constant(call: FunctionCall) -> float:
    if float(call.arg(1, "alpha", 1.0)) <= 0:
        raise UnboundedLipschitzError(f"{describe_node(call.node)}: CELU with alpha <= 0 grows exponentially")
    return 1.0


def _prelu_constant(call: FunctionCall) -> float:
    return max(1.0, _max_abs(call.arg(1, "weight")))


def _rrelu_constant(call: FunctionCall) -> float:
    if call.arg(3, "training", False):
        raise call.fail("rrelu with training=True draws random slopes; pass training=self.training")
    return max(1.0, abs(float(call.arg(1, "lower", 1 / 8)) + float(call.arg(2, "upper", 1 / 3))) / 2)


def _register_defaults() -> None:
    reg = register_function_rule
    forms = {  # activation -> its function targets and method names (in-place forms included)
        "relu": (F.relu, F.relu_, torch.relu, torch.relu_, "relu", "relu_"),
        "relu6": (F.relu6,), "hardtanh": (F.hardtanh, F.hardtanh_),
        "tanh": (torch.tanh, torch.tanh_, F.tanh, "tanh", "tanh_"),
        "sigmoid": (torch.sigmoid, torch.sigmoid_, F.sigmoid, "sigmoid", "sigmoid_"),
        "silu": (F.silu,), "gelu": (F.gelu,), "mish": (F.mish,), "selu": (F.selu, torch.selu, torch.selu_),
        "hardsigmoid": (F.hardsigmoid,), "hardswish": (F.hardswish,), "softplus": (F.softplus,),
        "softsign": (F.softsign,), "logsigmoid": (F.logsigmoid,), "tanhshrink": (F.tanhshrink,),
        "softshrink": (F.softshrink,), "abs": (torch.abs, operator.abs, "abs"),
        "clamp": (torch.clamp, torch.clip, "clamp", "clip", "clamp_min", "clamp_max", "clamp_", "clamp_min_"),
    }
    for name, targets in forms.items():
        for target in dict.fromkeys(targets):  # some functional forms are the torch functions themselves
            reg(target, _activation(name))
    for target in (F.leaky_relu, F.leaky_relu_):
        reg(target, elementwise_rule(_leaky_relu_constant))
    for target in (F.elu, F.elu_):
        reg(target, elementwise_rule(_elu_constant))
    reg(F.celu, elementwise_rule(_celu_constant))
    reg(F.prelu, elementwise_rule(_prelu_constant))
    reg(F.rrelu, elementwise_rule(_rrelu_constant))
    for target in (operator.neg, operator.pos, torch.neg, "neg"):
        reg(target, elementwise_rule(1.0))

    for target in (operator.add, operator.sub, torch.add, torch.sub, "add", "add_", "sub", "sub_"):
        reg(target, _sum_rule())
    reg(torch.rsub, _sum_rule(alpha_on_input=True))
    for target in (operator.mul, torch.mul, "mul", "mul_"):
        reg(target, _product_rule(divide=False))
    for target in (operator.truediv, torch.div, torch.true_divide, "div", "div_", "true_divide"):
        reg(target, _product_rule(divide=True))
    for target in (operator.matmul, torch.matmul, torch.mm, "matmul", "mm"):
        reg(target, _matmul_rule)
    reg(F.linear, _linear_rule)
    for d, target in enumerate((F.conv1d, F.conv2d, F.conv3d), start=1):
        reg(target, _conv_rule(d))
    reg(F.batch_norm, _batch_norm_rule)
    for target in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout):
        reg(target, _dropout_rule)
    for target in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                   F.adaptive_avg_pool3d):
        reg(target, _avg_pool_rule)
    for d, target in enumerate((F.max_pool1d, F.max_pool2d, F.max_pool3d), start=1):
        reg(target, _max_pool_rule(d))
    for d, target in enumerate((F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d), start=1):
        reg(target, _adaptive_max_pool_rule(d))
    for target in (torch.mean, "mean"):
        reg(target, _mean_rule)
    for target in (torch.sum, "sum"):
        reg(target, _sum_over_rule)
    for target in (torch.amax, torch.amin, torch.max, torch.min, torch.logsumexp, "amax", "amin", "max", "min",
                   "logsumexp"):
        reg(target, _contraction_reduction_rule)
    for target in (torch.norm, "norm", torch.linalg.vector_norm):
        reg(target, _vector_norm_rule)
    for target in (F.softmax, torch.softmax, "softmax"):
        reg(target, _softmax_rule)
    for target in (torch.cat, torch.concat, torch.concatenate, torch.stack):
        reg(target, _concat_rule)
    for target in (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose,
                   torch.swapaxes, torch.movedim, torch.narrow, torch.flip, torch.roll, torch.chunk, torch.split,
                   torch.unbind, torch.index_select, torch.gather, torch.take_along_dim, torch.unflatten, F.pad,
                   "view", "reshape", "flatten", "unflatten", "squeeze",
                   "unsqueeze", "permute", "transpose", "swapaxes", "movedim", "contiguous", "clone", "detach",
                   "narrow", "flip", "roll", "chunk", "split", "unbind", "expand", "expand_as", "repeat",
                   "view_as", "reshape_as", "unfold", "index_select", "gather", "select"):
        reg(target, _movement_rule)
    reg(operator.getitem, _getitem_rule)
    reg(builtins.getattr, _getattr_rule)
    for target in ("to", "float", "double", "half", "bfloat16", "type_as", "cpu", "cuda"):
        reg(target, _same_rule)
    for target in ("size", "dim", "numel", "element_size", "get_device", "is_contiguous", "is_floating_point"):
        reg(target, _metadata_rule)
    for target in (torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like, "new_zeros", "new_ones",
                   "new_full", "new_empty"):
        reg(target, _zero_rule)
    for target in (F.layer_norm, F.group_norm, F.instance_norm, F.normalize, F.local_response_norm, F.rms_norm):
        reg(target, _unbounded(NORMALISATION_REASON))


_register_defaults()
