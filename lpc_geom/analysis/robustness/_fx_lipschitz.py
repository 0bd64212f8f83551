r"""Lipschitz bounds of any traceable model, node by node on its :mod:`torch.fx` graph.

A module without a module rule is traced symbolically (submodules that have a module rule stay single
``call_module`` nodes) and run once on a random batch of :data:`PROBE_BATCH` inputs, which gives every
node's value. Each node then gets a bound :math:`L_v` on the Lipschitz constant of its value (one
sample's, flattened, L2) *with respect to the module's input*, in graph order:

* the input has :math:`L = 1`, parameters, buffers and everything computed from them alone :math:`L = 0`
  (a 0-Lipschitz map is constant, so no rule is needed for such nodes);
* a unary map :math:`g` composes: :math:`L_{g(u)} \le \operatorname{Lip}(g)\, L_u`;
* a sum adds: :math:`L_{a u + b v} \le |a|\sqrt{m_u} L_u + |b|\sqrt{m_v} L_v`, where broadcasting copies
  every element of :math:`u` exactly :math:`m_u` times (so residual blocks get
  :math:`L(f) + L(g)`);
* a concatenation of values of the same input: :math:`L \le (\sum_i L_i^2)^{1/2}`, since
  :math:`\lVert(\Delta u, \Delta v)\rVert^2 = \lVert\Delta u\rVert^2 + \lVert\Delta v\rVert^2`;
* a product or quotient of two input-dependent values has no global bound and is refused.

The function rules (keyed by the ``call_function`` target, or by the method name for ``call_method``):

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
``+``, ``-``, ``*``/``/`` by constants,    as above
``cat``/``stack``
=========================================  ======================================================

Soundness checks: the traced graph must reproduce the module's output on the probe batch; every
input-dependent value keeps the batch axis first (measured moves must not mix samples; reductions and
concatenations may not run over it); an in-place op may not increase the bound of the tensor it
overwrites (other nodes may read it afterwards); functional dropout must run with ``training=False``.
A node without a rule raises :class:`LipschitzRuleError` naming the node, its code line and the call
that registers a rule.
"""

from __future__ import annotations

import builtins
import inspect
import math
import operator
import os
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lpc_geom.analysis.robustness._common import LipschitzRuleError, UnboundedLipschitzError, primary_output
from lpc_geom.analysis.robustness.spectral import (
    adaptive_window_multiplicity,
    batch_norm_norm,
    conv_layer_norm,
    matrix_spectral_norm,
    max_pool_norm_bound,
    nonnegative_operator_norm_bound,
    window_multiplicity,
)

__all__ = [
    "ACTIVATION_CONSTANTS",
    "FUNCTION_RULES",
    "PROBE_BATCH",
    "FunctionCall",
    "FunctionRule",
    "elementwise_rule",
    "register_function_rule",
    "traced_bound",
]

#: Samples in the batch a traced graph is run on (several, so that mixing samples shows).
PROBE_BATCH = 3

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
        if not callable(fn):
            raise TypeError(f"a Lipschitz rule must be callable, got {type(fn).__name__}")
        if not (isinstance(target, str) or callable(target)):
            raise TypeError(f"a function rule is keyed by a callable or a method name, got {target!r}")
        if target in FUNCTION_RULES and not replace and FUNCTION_RULES[target] is not fn:
            raise ValueError(f"a Lipschitz rule for {_target_name(target)} is already registered; "
                             "pass replace=True to override it")
        FUNCTION_RULES[target] = fn
        return fn

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


# ------------------------------------------------------------------------------------------ tracing


_PUBLIC_NAMESPACES = (("torch.nn.functional", F), ("torch", torch), ("torch.linalg", torch.linalg),
                      ("operator", operator), ("builtins", builtins))
_PUBLIC_NAMES: dict[int, tuple[Any, str]] = {}  # id -> (the object, kept alive so the id stays its own; name)


def _target_name(target: Any) -> str:
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


_TORCH_DIR = os.path.dirname(torch.__file__)


def _code_location(node: fx.Node) -> str:
    return node.meta.get(_LOCATION, "")


def describe_node(node: fx.Node) -> str:
    """Node name, op, target and code location, for error messages."""
    target = node.target if node.op in ("call_module", "get_attr") else _target_name(node.target)
    where = _code_location(node)
    return f"node {node.name!r} ({node.op} {target}" + (f" at {where})" if where else ")")


def _registration_key(node: fx.Node) -> str:
    if node.op == "call_method":
        return repr(node.target)
    return _target_name(node.target)


_LOCATION = "lipschitz_code_location"


class _Tracer(fx.Tracer):
    """Symbolic tracer keeping modules that have a module rule as leaves and noting each node's code line.

    The line is the innermost frame outside torch and this module (``traceback.extract_stack``: torch's
    own ``record_stack_traces`` would import the compiler stack on first use, seconds per process).
    """

    def __init__(self, is_leaf: Callable[[nn.Module], bool], autowrap: tuple[Callable, ...]):
        super().__init__(autowrap_functions=autowrap)
        self._is_leaf = is_leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return self._is_leaf(m)

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        for frame in reversed(traceback.extract_stack()):
            if not frame.filename.startswith(_TORCH_DIR) and frame.filename != __file__:
                node.meta[_LOCATION] = f"{frame.filename}:{frame.lineno}: `{(frame.line or '').strip()}`"
                break
        return node


class _Recorder(fx.Interpreter):
    """Runs a graph and keeps every node's value."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=False)


def _primary_path(value: Any) -> tuple[int, ...]:
    """Index path from a module output to the tensor its bound describes (see :func:`primary_output`)."""
    if isinstance(value, torch.Tensor):
        return ()
    if isinstance(value, tuple) and hasattr(value, "_fields") and "logits" in value._fields:
        i = value._fields.index("logits")
        return (i, *_primary_path(value[i]))
    if isinstance(value, tuple | list) and value:
        return (0, *_primary_path(value[0]))
    raise LipschitzRuleError(f"a module output must be a tensor, a named tuple with `logits` or a tuple, got "
                             f"{type(value).__name__}")


def _structured(value: Any, primary_bound: float) -> Any:
    """Bound structure of a module output: ``primary_bound`` at its primary tensor, unknown elsewhere."""
    path = _primary_path(value)

    def build(v: Any, rest: tuple[int, ...]) -> Any:
        if not rest:
            return primary_bound
        return tuple(build(item, rest[1:]) if i == rest[0] else None for i, item in enumerate(v))

    return build(value, path)


def _zero_like(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return tuple(_zero_like(v) for v in value)
    return 0.0


def _is_inplace(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (node.target is operator.setitem or node.kwargs.get("inplace") is True
                or (name.endswith("_") and not name.startswith("_")))
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    return False


def traced_bound(module: nn.Module, input_shape: tuple[int, ...], walker: Any) -> float:
    """Lipschitz bound of ``module`` (no module rule of its own) from its traced graph.

    Parameters
    ----------
    module : nn.Module
    input_shape : tuple of int
        One input's shape.
    walker : LipschitzWalker
        Supplies the module rules (``has_rule``, ``bound``), the function rules (``function_rules``),
        names and the probe's device and dtype.

    Returns
    -------
    float
    """
    name = f"{walker.name(module)!r} ({type(module).__module__}.{type(module).__name__})"
    rules = walker.function_rules
    autowrap = tuple(t for t in rules if isinstance(t, types.FunctionType))
    # The bound describes module(x): further parameters keep their defaults (so `if flag:` traces).
    parameters = list(inspect.signature(module.forward).parameters.values())[1:]
    concrete = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    try:
        graph = _Tracer(walker.has_rule, autowrap).trace(module, concrete_args=concrete or None)
    except Exception as err:
        raise LipschitzRuleError(
            f"{name} has no module rule and torch.fx cannot trace it ({type(err).__name__}: {err}); register a "
            f"module rule with lpc_geom.analysis.robustness.register_lipschitz_rule({type(module).__name__}, "
            "rule) (chain_rule / residual_rule for forwards that compose submodules)") from err
    gm = fx.GraphModule(module, graph)
    gen = torch.Generator().manual_seed(4321)
    x = torch.randn((PROBE_BATCH, *input_shape), generator=gen, dtype=walker.dtype).to(walker.device)
    recorder = _Recorder(gm)
    traced = primary_output(recorder.run(x.clone()))  # clones: in-place ops may overwrite their input
    env = recorder.env
    output = next(n for n in graph.nodes if n.op == "output")
    node, path = _resolve_primary(output.args[0], env)
    bound = 0.0
    if node is not None:  # (None: the output is a constant)
        bound = _GraphBounds(gm, env, walker, rules, name).run(node)[node]
        for i in path:
            bound = bound[i]
        if bound is None:
            raise LipschitzRuleError(f"the output of {name} has no known bound")
    # After the bounds, whose errors say more about a node than a mismatch does (e.g. random dropout).
    actual = primary_output(module(x.clone()))
    scale = 1.0 + float(actual.abs().max()) if actual.numel() else 1.0
    if actual.shape != traced.shape or float((actual - traced).abs().max()) > 1e-5 * scale:
        raise LipschitzRuleError(f"the torch.fx trace of {name} does not reproduce its forward (randomness, "
                                 "or state the trace cannot see); register a module rule for it")
    return float(bound)


def _resolve_primary(arg: Any, env: Mapping[fx.Node, Any]) -> tuple[fx.Node | None, tuple[int, ...]]:
    """The node (and index path into its value) holding the primary output of a graph's output argument."""
    if isinstance(arg, fx.Node):
        return arg, _primary_path(env[arg])
    if isinstance(arg, tuple) and hasattr(arg, "_fields") and "logits" in arg._fields:
        return _resolve_primary(arg.logits, env)
    if isinstance(arg, tuple | list) and arg:
        return _resolve_primary(arg[0], env)
    if isinstance(arg, torch.Tensor):
        return None, ()
    raise LipschitzRuleError(f"cannot find the logits in a traced output of type {type(arg).__name__}")


class _GraphBounds:
    """Bounds of the nodes a target node depends on (plus every in-place node), in graph order."""

    def __init__(self, gm: fx.GraphModule, env: Mapping[fx.Node, Any], walker: Any,
                 rules: Mapping[Any, FunctionRule], name: str):
        self.gm, self.env, self.walker, self.rules, self.name = gm, env, walker, rules, name
        self.bounds: dict[fx.Node, Any] = {}

    def run(self, target: fx.Node) -> dict[fx.Node, Any]:
        nodes = list(self.gm.graph.nodes)
        roots = [target] + [n for n in nodes if _is_inplace(n, self.gm)]
        needed: set[fx.Node] = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if n not in needed:
                needed.add(n)
                stack.extend(n.all_input_nodes)
        first_input = next((n for n in nodes if n.op == "placeholder"), None)
        for n in nodes:
            if n not in needed:
                continue
            if n.op == "placeholder":
                self.bounds[n] = 1.0 if n is first_input else 0.0
            elif n.op == "get_attr":
                self.bounds[n] = _zero_like(self.env[n])
            else:
                self.bounds[n] = self._node_bound(n)
                self._check(n)
        return self.bounds

    def _arg_bounds(self, arg: Any) -> Any:
        """Bound structure of a node argument: nodes' bounds, tuples for sequences, 0 for constants."""
        if isinstance(arg, fx.Node):
            return self.bounds[arg]
        if isinstance(arg, tuple | list):
            return tuple(self._arg_bounds(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self._arg_bounds(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            parts = (self._arg_bounds(arg.start), self._arg_bounds(arg.stop), self._arg_bounds(arg.step))
            return 0.0 if is_constant(parts) else None
        return 0.0

    def _node_bound(self, node: fx.Node) -> Any:
        args = fx.node.map_arg(node.args, lambda n: self.env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.env[n])
        arg_bounds = tuple(_as_bound(b) for b in self._arg_bounds(node.args))
        kwarg_bounds = {k: _as_bound(b) for k, b in self._arg_bounds(node.kwargs).items()}
        output = self.env[node]
        if is_constant(arg_bounds) and is_constant(tuple(kwarg_bounds.values())):
            return _zero_like(output)
        if node.op == "call_module":
            return self._module_bound(node, args, kwargs, arg_bounds, output)
        if isinstance(node.target, type) and issubclass(node.target, tuple):  # building a (named) tuple
            fields = getattr(node.target, "_fields", ())
            return (*arg_bounds, *(kwarg_bounds[f] for f in fields[len(arg_bounds):] if f in kwarg_bounds))
        rule = self.rules.get(node.target)
        if rule is None:
            raise LipschitzRuleError(
                f"no Lipschitz rule for {describe_node(node)} in the traced graph of {self.name}; register one "
                f"with lpc_geom.analysis.robustness.register_lipschitz_rule({_registration_key(node)}, rule), "
                "where rule(call: FunctionCall) returns the bound of the node's output from call.arg_bounds "
                "(elementwise_rule(c) for an element-wise c-Lipschitz function), or register a module rule for "
                "the module whose forward makes this call")
        call = FunctionCall(node, tuple(args), dict(kwargs), arg_bounds, kwarg_bounds, output, PROBE_BATCH)
        try:
            return _as_bound(rule(call), call)
        except (LipschitzRuleError, UnboundedLipschitzError) as err:
            raise type(err)(f"{err} (in the traced graph of {self.name})") from err

    def _module_bound(self, node: fx.Node, args: tuple, kwargs: dict, arg_bounds: tuple, output: Any) -> Any:
        sub = self.gm.get_submodule(node.target)
        if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor) or not isinstance(arg_bounds[0], float):
            raise LipschitzRuleError(f"{describe_node(node)}: a module rule describes module(x) for one input tensor "
                                     "x, but this call passes other arguments that depend on the input")
        lip = self.walker.bound(sub, tuple(args[0].shape[1:]))
        return _structured(output, lip * arg_bounds[0])

    def _check(self, node: fx.Node) -> None:
        bound, value = self.bounds[node], self.env[node]
        _check_batch(node, value, bound)
        if _is_inplace(node, self.gm) and node.args and isinstance(node.args[0], fx.Node):
            before = self.bounds.get(node.args[0])
            if isinstance(bound, float) and isinstance(before, float) and bound > before * (1 + 1e-12):
                raise LipschitzRuleError(
                    f"{describe_node(node)} overwrites a tensor in place with a larger bound ({before:.6g} -> "
                    f"{bound:.6g}); other nodes may read that tensor afterwards, so use the out-of-place form")


def _as_bound(bound: Any, call: FunctionCall | None = None) -> Any:
    """Validate a bound structure (floats >= 0, tuples, None)."""
    if bound is None:
        return None
    if isinstance(bound, tuple | list):
        return tuple(_as_bound(b, call) for b in bound)
    value = float(bound)
    if math.isnan(value) or value < 0:
        message = f"a Lipschitz bound must be a number >= 0, got {bound!r}"
        raise call.fail(message) if call is not None else LipschitzRuleError(message)
    return value


def _check_batch(node: fx.Node, value: Any, bound: Any) -> None:
    """Input-dependent tensors must keep the probe batch as their leading axis."""
    if isinstance(value, tuple | list) and isinstance(bound, tuple):
        for v, b in zip(value, bound, strict=False):
            _check_batch(node, v, b)
    elif (isinstance(value, torch.Tensor) and bound is not None and not is_constant(bound)
          and (value.dim() == 0 or value.shape[0] != PROBE_BATCH)):
            raise LipschitzRuleError(
                f"{describe_node(node)}: an input-dependent value of shape {tuple(value.shape)} lost the batch "
                f"axis (size {PROBE_BATCH} in the probe): a bound per sample needs every sample processed on "
                "its own")


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
        padding = padding if isinstance(padding, str) else _tuple(padding, d)
        return bound * conv_layer_norm(weight, tuple(x.shape[1:]), tuple(call.output.shape[1:]),
                                       stride=_tuple(call.arg(3, "stride", 1), d), padding=padding,
                                       dilation=_tuple(call.arg(5, "dilation", 1), d),
                                       groups=int(call.arg(6, "groups", 1)))

    return rule


def _tuple(value: int | Sequence[int], d: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, Sequence) else (int(value),) * d


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
        kernel = _tuple(call.arg(1, "kernel_size"), d)
        stride = call.arg(2, "stride", None)
        stride = kernel if stride is None or stride == [] or stride == () else _tuple(stride, d)
        padding, dilation = _tuple(call.arg(3, "padding", 0), d), _tuple(call.arg(4, "dilation", 1), d)
        values = call.output[0] if isinstance(call.output, tuple) else call.output
        m = [window_multiplicity(*args) for args in zip(x.shape[-d:], values.shape[-d:], kernel, stride, padding,
                                                        dilation, strict=True)]
        lip = max_pool_norm_bound(m) * bound
        return (lip, None) if isinstance(call.output, tuple) else lip

    return rule


def _adaptive_max_pool_rule(d: int) -> FunctionRule:
    def rule(call: FunctionCall) -> Any:
        _, x, bound = call.only_input()
        values = call.output[0] if isinstance(call.output, tuple) else call.output
        m = [adaptive_window_multiplicity(n, o) for n, o in zip(x.shape[-d:], values.shape[-d:], strict=True)]
        lip = max_pool_norm_bound(m) * bound
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
