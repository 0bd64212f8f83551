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

The rule of each function and method node comes from the registry of
:mod:`lpc_geom.analysis.robustness._fx_rules` (its table lists them).

Soundness checks: the traced graph must reproduce the module's output on the probe batch; every
input-dependent value keeps the batch axis first (measured moves must not mix samples; reductions and
concatenations may not run over it); an in-place op may not increase the bound of the tensor it
overwrites (other nodes may read it afterwards); functional dropout must run with ``training=False``.
A node without a rule raises :class:`LipschitzRuleError` naming the node, its code line and the call
that registers a rule.
"""

from __future__ import annotations

import inspect
import math
import operator
import os
import traceback
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import fx, nn

from lpc_geom.analysis.robustness._common import LipschitzRuleError, UnboundedLipschitzError, primary_output
from lpc_geom.analysis.robustness._fx_rules import (
    CODE_LOCATION,
    FunctionCall,
    FunctionRule,
    describe_node,
    is_constant,
    target_name,
)

__all__ = ["PROBE_BATCH", "traced_bound"]

#: Samples in the batch a traced graph is run on (several, so that mixing samples shows).
PROBE_BATCH = 3

_TORCH_DIR = os.path.dirname(torch.__file__)


def _registration_key(node: fx.Node) -> str:
    if node.op == "call_method":
        return repr(node.target)
    return target_name(node.target)


class _Tracer(fx.Tracer):
    """Symbolic tracer keeping modules that have a module rule as leaves and noting each node's code line.

    The line is the innermost frame outside torch and this module (``traceback.extract_stack``: torch's
    own ``record_stack_traces`` would import the compiler stack on first use in every process, a slow
    import that bounding a model does not need).
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
                node.meta[CODE_LOCATION] = f"{frame.filename}:{frame.lineno}: `{(frame.line or '').strip()}`"
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

