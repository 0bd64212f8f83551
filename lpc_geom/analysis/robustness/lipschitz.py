r"""Lipschitz constant of a classifier's logits: a certified upper bound and an empirical lower bound.

Upper bound. For a composition :math:`f = g_L \circ \dots \circ g_1`,
:math:`\operatorname{Lip}(f) \le \prod_l \operatorname{Lip}(g_l)`, and for a residual block
:math:`y = \phi(B(x) + S(x))`, :math:`\operatorname{Lip}(y) \le \operatorname{Lip}(\phi)\,
(\operatorname{Lip}(B) + \operatorname{Lip}(S))`. :func:`lipschitz_upper_bound` walks a model with a
*rule* per module type (exact type: a subclass may change ``forward``) and multiplies per-layer
constants (L2 norms throughout, on the flattened input and logit vectors):

=================================  ==========================================================
module                             constant
=================================  ==========================================================
Linear                             :math:`\sigma_{\max}(W)` (exact SVD)
Conv1d/2d/3d (zero padding)        norm of the circular convolution containing it (FFT, exact
                                   for that operator; see :mod:`.spectral`), or the exact norm of
                                   the layer's own matrix when that is cheaper (small maps)
BatchNorm (eval, running stats)    :math:`\max_c |\gamma_c| / \sqrt{\operatorname{var}_c + \epsilon}`
ReLU, Tanh, Softplus, ...          1; LeakyReLU :math:`\max(1, |a|)`; SiLU 1.09984 (the maximum of
                                   :math:`\sigma(x)(1 + x(1 - \sigma(x)))`, at :math:`x \approx 2.40`);
                                   GELU 1.129; Mish 1.0885; Sigmoid 1/4; ... (the same constants as
                                   their functional forms, ``ACTIVATION_CONSTANTS``)
Avg poolings / max poolings        Schur test / :math:`\sqrt{\text{window multiplicity}}`
Identity, Flatten, Dropout (eval)  1
Sequential, lpc_geom backbones,    products / residual sums of their parts
heads and Classifier
CosineClassifier, LayerNorm, ...   no finite global bound: :class:`UnboundedLipschitzError`
=================================  ==========================================================

Any model. A module without a rule of its own (a model written in functional style, with ``F.relu``,
``torch.flatten`` or a residual add inside ``forward``) is traced with :mod:`torch.fx` and bounded node
by node, the submodules that have rules staying single nodes: compositions multiply, sums add,
concatenations combine in quadrature, and every function, method and activation has its rule (see
:mod:`lpc_geom.analysis.robustness._fx_lipschitz` for the walk and its soundness checks,
:mod:`lpc_geom.analysis.robustness._fx_rules` for the table of node rules). The module
rules remain what bounds a model that cannot be traced (data-dependent control flow). A node or
module without a rule raises :class:`LipschitzRuleError` naming it (and its code line) rather than
guessing. Rules are added with :func:`register_lipschitz_rule`: for module types (most simply
through :func:`chain_rule` or :func:`residual_rule`, which check the declared structure against the
module's real ``forward`` on a random input before trusting it) and for functions and tensor methods
(:class:`~lpc_geom.analysis.robustness.FunctionCall` rules, e.g.
:func:`~lpc_geom.analysis.robustness.elementwise_rule`).

Lower bound. Wherever :math:`f` is differentiable, :math:`\lVert J_f(x)\rVert_2 \le \operatorname{Lip}(f)`,
so :func:`lipschitz_lower_bound` reports :math:`\max_x \sigma_{\max}(J_C(x))` over a data set, with
:math:`J_C` the Jacobian rows of the top-``C`` logits. It is an estimate from below, not a certificate;
the gap to the upper bound measures how loose the product bound is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from lpc_geom.analysis.robustness import spectral
from lpc_geom.analysis.robustness._common import (
    LipschitzRuleError,
    UnboundedLipschitzError,
    add_rule,
    as_model_input,
    evaluation_mode,
    logits_of,
    model_placement,
    primary_output,
)
from lpc_geom.analysis.robustness._fx_lipschitz import traced_bound
from lpc_geom.analysis.robustness._fx_rules import (
    ACTIVATION_CONSTANTS,
    FUNCTION_RULES,
    NORMALISATION_REASON,
    FunctionRule,
    register_function_rule,
)

# The function-rule API is importable from here too.
from lpc_geom.analysis.robustness._fx_rules import FunctionCall as FunctionCall
from lpc_geom.analysis.robustness._fx_rules import elementwise_rule as elementwise_rule
from lpc_geom.models import norm
from lpc_geom.models.backbones import MLP, BasicBlock, Bottleneck, CNN1d, ResNet
from lpc_geom.models.base import Classifier
from lpc_geom.models.geometry.sphere import SphereHead
from lpc_geom.models.geometry.stiefel import StiefelHead, StiefelLinear
from lpc_geom.models.heads import CosineClassifier, EuclideanHead

# The function-rule names (FunctionCall, elementwise_rule, ...) are exported by the package from
# ._fx_rules, their owner.
__all__ = [
    "LIPSCHITZ_RULES",
    "LayerBound",
    "LipschitzBound",
    "LipschitzEstimate",
    "LipschitzRule",
    "LipschitzWalker",
    "chain_rule",
    "constant_rule",
    "lipschitz_lower_bound",
    "lipschitz_upper_bound",
    "register_lipschitz_rule",
    "residual_rule",
    "unbounded_rule",
]


@dataclass(frozen=True)
class LayerBound:
    """The constant one rule gave one module.

    Attributes
    ----------
    name : str
        Qualified module name in the model (``""`` for the model itself).
    kind : str
        Module type name.
    input_shape : tuple of int
        Shape of one input to the module.
    bound : float
        Its Lipschitz constant bound.
    leaf : bool
        True when the rule did not recurse into submodules.
    """

    name: str
    kind: str
    input_shape: tuple[int, ...]
    bound: float
    leaf: bool


@dataclass(frozen=True)
class LipschitzBound:
    """Result of :func:`lipschitz_upper_bound`; ``float(result)`` is the bound.

    Attributes
    ----------
    value : float
        Certified upper bound on the L2 Lipschitz constant of the logit vector.
    input_shape : tuple of int
        Shape of one input the bound holds for (it matters for convolutions).
    layers : tuple of LayerBound
        Every module's constant, children before their parents.
    """

    value: float
    input_shape: tuple[int, ...]
    layers: tuple[LayerBound, ...]

    def __float__(self) -> float:
        return self.value


@dataclass(frozen=True)
class LipschitzEstimate:
    """Result of :func:`lipschitz_lower_bound`; ``float(result)`` is the estimate.

    Attributes
    ----------
    value : float
        :math:`\\max_x \\sigma_{\\max}(J_C(x))`, a lower bound on the Lipschitz constant of the logits.
    per_sample : Tensor, shape (N,)
        :math:`\\sigma_{\\max}(J_C(x))` for each input.
    difference_value : float
        :math:`\\max_x \\max_{k} \\lVert \\nabla_x (f_{c_1} - f_{c_k})(x)\\rVert_2`, a lower bound on the
        Lipschitz constant of the logit differences (which is at most :math:`\\sqrt 2` times that of the
        logits).
    """

    value: float
    per_sample: torch.Tensor
    difference_value: float

    def __float__(self) -> float:
        return self.value


LipschitzRule = Callable[[nn.Module, tuple[int, ...], "LipschitzWalker"], float]

#: Rules by exact module type; see :func:`register_lipschitz_rule`.
LIPSCHITZ_RULES: dict[type[nn.Module], LipschitzRule] = {}


def register_lipschitz_rule(target: type[nn.Module] | Callable | str, rule: LipschitzRule | FunctionRule | None = None,
                            *, replace: bool = False):
    """Register the Lipschitz rule of a module type, a function or a tensor method (usable as a decorator).

    *Module rules* (``target`` a module class) are called as ``rule(module, input_shape, walker)`` and
    return an upper bound on the L2 Lipschitz constant of ``module`` on inputs of shape
    ``(N, *input_shape)`` (in eval mode). They get the constants of submodules from
    ``walker.bound(sub, shape)`` and intermediate shapes from ``walker.output_shape(sub, shape)``. They
    match the *exact* type: a subclass may override ``forward`` and needs its own rule. A module with a
    rule stays one node when a model around it is traced.

    *Function rules* (``target`` a function, e.g. ``torch.erf`` or a Python function of your own, or a
    tensor method's name such as ``"erf"``) cover one node of a traced graph: they are called as
    ``rule(call)`` with a :class:`~lpc_geom.analysis.robustness.FunctionCall` (the node's argument
    values, their bounds with respect to the model input, its output) and return the bound of the
    output with respect to the model input, e.g. ``elementwise_rule(c)`` for an element-wise
    :math:`c`-Lipschitz map. A Python function with a rule is not traced into.

    Parameters
    ----------
    target : module class, callable or str
    rule : callable, optional
        Omitted, a decorator is returned.
    replace : bool, default False
        Allow replacing an existing rule.

    Returns
    -------
    The rule (or a decorator registering one).
    """
    if not (isinstance(target, type) and issubclass(target, nn.Module)):
        return register_function_rule(target, rule, replace=replace)
    module_type = target

    def register(fn: LipschitzRule) -> LipschitzRule:
        return add_rule(LIPSCHITZ_RULES, module_type, fn, replace=replace, describe=lambda t: t.__name__)

    return register if rule is None else register(rule)


class LipschitzWalker:
    """Applies the rules recursively and records each module's constant.

    Parameters
    ----------
    root : nn.Module
        The model (used to name submodules).
    rules : mapping, optional
        Rules that take precedence over the registries for this walk: module classes to module rules,
        functions or method names to function rules (see :func:`register_lipschitz_rule`).
    device, dtype : optional
        Where and in which dtype shape probes run (default: those of ``root``).
    """

    def __init__(self, root: nn.Module, rules: Mapping[type[nn.Module] | Callable | str, Callable] | None = None,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        root_device, root_dtype = model_placement(root)
        self.device = root_device if device is None else device
        self.dtype = root_dtype if dtype is None else dtype
        extra = dict(rules or {})
        self.rules = {k: r for k, r in extra.items() if isinstance(k, type) and issubclass(k, nn.Module)}
        self.function_rules: dict[Callable | str, FunctionRule] = {
            **FUNCTION_RULES, **{k: r for k, r in extra.items() if k not in self.rules}}
        self.layers: list[LayerBound] = []
        self._names = {id(m): name for name, m in root.named_modules(remove_duplicate=False)}

    def _module_rule(self, module: nn.Module) -> LipschitzRule | None:
        cls = type(module)
        if parametrize.is_parametrized(module):
            cls = cls.__bases__[0]
        return self.rules.get(cls) or LIPSCHITZ_RULES.get(cls)

    def has_rule(self, module: nn.Module) -> bool:
        """Whether ``module``'s exact type (parametrized: its original class) has a module rule."""
        return self._module_rule(module) is not None

    def rule_for(self, module: nn.Module) -> LipschitzRule:
        """The module rule of ``module``'s exact type, or else the bound of its torch.fx graph.

        Parametrized modules use their original class's rule. A module without a rule is traced and
        bounded node by node (see :mod:`._fx_lipschitz`); where it cannot be traced, or a node has no
        rule, :class:`LipschitzRuleError` names the module or node and how to register a rule.
        """
        return self._module_rule(module) or traced_bound

    def name(self, module: nn.Module) -> str:
        """Qualified name of ``module`` in the root model."""
        return self._names.get(id(module), type(module).__name__)

    def bound(self, module: nn.Module, input_shape: Sequence[int]) -> float:
        """Upper bound on the Lipschitz constant of ``module`` on inputs of shape ``input_shape``."""
        shape = tuple(int(s) for s in input_shape)
        before = len(self.layers)
        value = float(self.rule_for(module)(module, shape, self))
        if math.isnan(value) or value < 0:
            raise ValueError(f"the Lipschitz rule of {self.name(module)!r} returned {value}")
        self.layers.append(LayerBound(self.name(module), type(module).__name__, shape, value,
                                      leaf=len(self.layers) == before))
        return value

    def probe(self, module: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
        """Run ``module`` on one all-zero input of shape ``input_shape``; the output as a tensor."""
        x = torch.zeros((1, *input_shape), device=self.device, dtype=self.dtype)
        with torch.no_grad():
            return primary_output(module(x))

    def output_shape(self, module: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of one output of ``module`` for one input of shape ``input_shape``."""
        return tuple(self.probe(module, input_shape).shape[1:])

    def chain(self, modules: Sequence[nn.Module], input_shape: Sequence[int]) -> tuple[float, tuple[int, ...]]:
        """Bound of ``modules`` applied in order, and the final output shape."""
        value, shape = 1.0, tuple(input_shape)
        for i, m in enumerate(modules):
            value *= self.bound(m, shape)
            if i < len(modules) - 1:
                shape = self.output_shape(m, shape)
        return value, shape


def lipschitz_upper_bound(model: nn.Module, input_shape: int | Sequence[int], *,
                          rules: Mapping[type[nn.Module], LipschitzRule] | None = None) -> LipschitzBound:
    r"""Certified upper bound on the L2 Lipschitz constant of a model's logits.

    :math:`\lVert f(x) - f(y)\rVert_2 \le L \lVert x - y\rVert_2` for all inputs of shape
    ``input_shape``, with :math:`f` the logit vector of the model in eval mode (batch norm with its
    running statistics). ``L`` is the product of per-layer constants (residual blocks: sums), see the
    module docstring; it is sound but usually loose by orders of magnitude for deep networks (compare
    :func:`lipschitz_lower_bound`).

    Parameters
    ----------
    model : nn.Module
        Any model whose modules and traced nodes the rules cover (``torch.nn`` layers, functional
        forwards, the lpc_geom backbones, Euclidean and Stiefel heads with a linear classifier,
        :class:`~lpc_geom.models.base.Classifier`). Its train/eval flags are restored afterwards.
    input_shape : int or sequence of int
        Shape of one input (no batch axis); convolution bounds depend on it.
    rules : mapping, optional
        Extra rules for this call, taking precedence over the registries: ``{module type: module rule}``
        and ``{function or method name: function rule}`` (see :func:`register_lipschitz_rule`).

    Returns
    -------
    LipschitzBound

    Raises
    ------
    LipschitzRuleError
        A module without a rule cannot be traced, a traced node has no rule (or would make the bound
        unsound: a product of input-dependent values, mixing samples, random dropout, ...), or a
        :func:`chain_rule`/:func:`residual_rule` or a trace does not reproduce the module's forward.
    UnboundedLipschitzError
        The model contains a module without a finite global constant: a cosine classifier (the
        normalisation :math:`z \mapsto z/\lVert z\rVert` has constant :math:`1/\lVert z\rVert`, unbounded
        near 0), LayerNorm/GroupNorm/InstanceNorm, or batch norm without running statistics.
    """
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
    with evaluation_mode(model), torch.no_grad():
        walker = LipschitzWalker(model, rules)
        value = walker.bound(model, shape)
    return LipschitzBound(value, shape, tuple(walker.layers))


def lipschitz_lower_bound(model: nn.Module, inputs: torch.Tensor, *, candidates: int | None = 10,
                          batch_size: int = 256) -> LipschitzEstimate:
    r"""Empirical lower bound on the Lipschitz constant of the logits: the largest Jacobian norm seen.

    For every input the gradients of the top-``C`` logits (by value at that input) are stacked into
    :math:`J_C(x) \in \mathbb R^{C \times D}` (``C`` backward passes over a batch) and
    :math:`\sigma_{\max}(J_C(x)) = \lambda_{\max}(J_C J_C^\top)^{1/2}` is computed; since
    :math:`J_C` is a submatrix of the Jacobian, :math:`\sigma_{\max}(J_C(x)) \le \lVert J(x)\rVert_2
    \le \operatorname{Lip}(f)`. The gradients of logit differences
    :math:`\nabla (f_{c_1} - f_{c_k})` come out of the same passes.

    Parameters
    ----------
    model : nn.Module
        Returns logits or an object with ``.logits``; run in eval mode (flags restored), parameters'
        ``.grad`` untouched.
    inputs : Tensor, shape (N, *input_shape)
    candidates : int or None, default 10
        ``C``; None uses all classes (the full Jacobian).
    batch_size : int, default 256
        Memory is about ``C * batch_size * prod(input_shape)`` floats.

    Returns
    -------
    LipschitzEstimate
        Not a certificate: the true constant can be larger anywhere the data do not probe.
    """
    if candidates is not None and candidates < 1:
        raise ValueError(f"candidates must be positive or None, got {candidates}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    x_all = as_model_input(inputs, model)
    per_sample, diff_max = [], [x_all.new_zeros(())]
    with evaluation_mode(model), torch.enable_grad():
        for start in range(0, x_all.shape[0], batch_size):
            x = x_all[start:start + batch_size].clone().requires_grad_(True)
            logits = logits_of(model(x))
            c = logits.shape[1] if candidates is None else min(candidates, logits.shape[1])
            top = logits.gather(1, logits.detach().topk(c, dim=1).indices)
            grads = torch.stack([
                torch.autograd.grad(top[:, k].sum(), x, retain_graph=k < c - 1)[0].flatten(1)
                for k in range(c)], dim=1).double()  # (B, C, D)
            gram = grads @ grads.transpose(1, 2)
            per_sample.append(torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0).sqrt().cpu())
            if c > 1:
                diff_max.append((grads[:, 1:] - grads[:, :1]).norm(dim=2).max().to(x_all.dtype))
    values = torch.cat(per_sample) if per_sample else torch.zeros(0, dtype=torch.float64)
    return LipschitzEstimate(float(values.max()) if values.numel() else 0.0, values,
                             float(torch.stack([d.cpu() for d in diff_max]).max()))


# --------------------------------------------------------------------------------------------- rules


def constant_rule(value: float) -> LipschitzRule:
    """Rule for a module with a fixed Lipschitz constant ``value``."""
    value = float(value)

    def rule(module: nn.Module, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
        return value

    return rule


def unbounded_rule(reason: str) -> LipschitzRule:
    """Rule for a module without a finite global constant: raises :class:`UnboundedLipschitzError`."""

    def rule(module: nn.Module, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
        raise UnboundedLipschitzError(f"{walker.name(module)!r} ({type(module).__name__}): {reason}")

    return rule


def _tensor_of(output: object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else logits_of(output)


def _check_structure(module: nn.Module, walker: LipschitzWalker, input_shape: tuple[int, ...],
                     declared: Callable[[torch.Tensor], torch.Tensor], what: str) -> None:
    """Compare ``module(x)`` with the declared decomposition on a random batch; raise on mismatch."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn((2, *input_shape), generator=gen, dtype=walker.dtype).to(walker.device)
    with torch.no_grad():
        actual = _tensor_of(module(x)).reshape(2, -1)
        expected = _tensor_of(declared(x)).reshape(2, -1)
    scale = 1.0 + float(actual.abs().max()) if actual.numel() else 1.0
    if actual.shape != expected.shape or float((actual - expected).abs().max()) > 1e-5 * scale:
        raise LipschitzRuleError(f"the {what} declared for {type(module).__name__} ({walker.name(module)!r}) "
                                 "does not reproduce its forward; register a rule that matches it")


def chain_rule(*attributes: str, input_view: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None,
               verify: bool = True) -> LipschitzRule:
    """Rule for a module whose ``forward`` applies the named submodules in order.

    Parameters
    ----------
    *attributes : str
        Names of the submodules, in the order ``forward`` applies them.
    input_view : callable, optional
        Maps the module's input shape to the shape the first submodule reads, when ``forward`` only
        reshapes its input first (a reshape is an isometry).
    verify : bool, default True
        Check the composition against ``module(x)`` on a random input before trusting it (a rule
        that does not match the real forward would give an unsound number).

    Returns
    -------
    LipschitzRule
        :math:`\\prod_i \\operatorname{Lip}(\\text{attributes}_i)`.
    """
    if not attributes:
        raise ValueError("chain_rule needs at least one attribute")

    def rule(module: nn.Module, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
        parts = [getattr(module, a) for a in attributes]
        shape = input_shape if input_view is None else tuple(input_view(input_shape))
        if verify:
            def composed(x: torch.Tensor) -> torch.Tensor:
                x = x.reshape(x.shape[0], *shape)
                for p in parts:
                    x = p(x)
                return x

            _check_structure(module, walker, input_shape, composed, f"chain {attributes}")
        return walker.chain(parts, shape)[0]

    return rule


def residual_rule(branch: Sequence[str], shortcut: str | None = None, post: Sequence[str] = (), *,
                  verify: bool = True) -> LipschitzRule:
    r"""Rule for a residual block ``forward(x) = post(branch(x) + shortcut(x))``.

    .. math::

        \operatorname{Lip} \le \operatorname{Lip}(\text{post})\,
        \big(\operatorname{Lip}(\text{branch}) + \operatorname{Lip}(\text{shortcut})\big).

    Parameters
    ----------
    branch : sequence of str
        Submodules of the residual branch, in order.
    shortcut : str or None
        Submodule of the shortcut; None for the identity.
    post : sequence of str
        Submodules applied after the sum (e.g. the activation).
    verify : bool, default True
        Check the declared structure against ``module(x)`` on a random input.

    Returns
    -------
    LipschitzRule
    """
    branch, post = tuple(branch), tuple(post)
    if not branch:
        raise ValueError("residual_rule needs a non-empty branch")

    def rule(module: nn.Module, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
        b = [getattr(module, a) for a in branch]
        s = None if shortcut is None else getattr(module, shortcut)
        p = [getattr(module, a) for a in post]
        if verify:
            def composed(x: torch.Tensor) -> torch.Tensor:
                y = x
                for m in b:
                    y = m(y)
                y = y + (x if s is None else s(x))
                for m in p:
                    y = m(y)
                return y

            _check_structure(module, walker, input_shape, composed, f"residual structure {branch}")
        lip_b, shape = walker.chain(b, input_shape)
        lip_s = 1.0 if s is None else walker.bound(s, input_shape)
        return (lip_b + lip_s) * (walker.chain(p, shape)[0] if p else 1.0)

    return rule


def _linear(module: nn.Linear, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
    # Applied to the last axis of any (..., in) input: the operator is I (x) W, of norm ||W||.
    return spectral.matrix_spectral_norm(module.weight)


def _stiefel_linear(module: StiefelLinear, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
    """``h @ W + b`` with ``W`` (d_in, d_out): its spectral norm, measured (1 on the manifold)."""
    return spectral.matrix_spectral_norm(module.weight)


def _conv(module: nn.Conv1d | nn.Conv2d | nn.Conv3d, input_shape: tuple[int, ...],
          walker: LipschitzWalker) -> float:
    d = module.weight.dim() - 2
    if module.padding_mode != "zeros":
        raise LipschitzRuleError(f"{walker.name(module)!r}: only zero padding is supported by the "
                                 f"convolution bound, got padding_mode={module.padding_mode!r}")
    if len(input_shape) != d + 1:
        raise ValueError(f"{walker.name(module)!r} expects inputs of shape (C, *{d} spatial sizes), "
                         f"got {input_shape}")
    return spectral.conv_layer_norm(module.weight, input_shape, walker.output_shape(module, input_shape),
                           stride=module.stride, padding=module.padding, dilation=module.dilation,
                           groups=module.groups)


def _batch_norm(module: nn.modules.batchnorm._BatchNorm, input_shape: tuple[int, ...],
                walker: LipschitzWalker) -> float:
    if module.running_var is None:
        raise UnboundedLipschitzError(
            f"{walker.name(module)!r}: batch norm without running statistics normalises with the batch's "
            "own statistics even in eval mode, so a sample's output is not a fixed function of it")
    return spectral.batch_norm_norm(module.running_var, module.weight, module.eps)


def _avg_pool(module: nn.Module, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
    return spectral.nonnegative_operator_norm_bound(module, input_shape)


def _spatial(module: nn.Module, input_shape: tuple[int, ...], walker: LipschitzWalker,
             d: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if len(input_shape) < d:
        raise ValueError(f"{walker.name(module)!r} needs at least {d} spatial dimensions, got {input_shape}")
    out = walker.output_shape(module, input_shape)
    return input_shape[-d:], out[-d:]


def _max_pool(d: int) -> LipschitzRule:
    def rule(module: nn.Module, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
        size, out = _spatial(module, input_shape, walker, d)
        return spectral.max_pool_bound(size, out, module.kernel_size, module.stride, module.padding,
                                       module.dilation)

    return rule


def _adaptive_max_pool(d: int) -> LipschitzRule:
    def rule(module: nn.Module, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
        return spectral.adaptive_max_pool_bound(*_spatial(module, input_shape, walker, d))

    return rule


def _leaky_relu(module: nn.LeakyReLU, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
    return max(1.0, abs(module.negative_slope))


def _elu(module: nn.ELU, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
    return max(1.0, abs(module.alpha))


def _prelu(module: nn.PReLU, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
    return max(1.0, float(module.weight.detach().abs().max()))


def _celu(module: nn.CELU, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
    if module.alpha <= 0:
        raise UnboundedLipschitzError(f"{walker.name(module)!r}: CELU with alpha <= 0 grows exponentially")
    return 1.0


def _rrelu(module: nn.RReLU, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
    # In eval mode RReLU is a leaky ReLU with slope (lower + upper) / 2.
    return max(1.0, abs(module.lower + module.upper) / 2)


def _single_channel_view(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The input shape a 1-D convolutional network reads: ``(L,)`` inputs get their one channel axis."""
    return (1, *shape) if len(shape) == 1 else shape


def _cnn1d(module: CNN1d, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
    return chain_rule("net", input_view=_single_channel_view)(module, input_shape, walker)


def _register_defaults() -> None:
    one = constant_rule(1.0)
    for cls in (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout):
        register_lipschitz_rule(cls, one)
    activations = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Tanh: "tanh", nn.Hardtanh: "hardtanh",
                   nn.Softplus: "softplus", nn.Softsign: "softsign", nn.LogSigmoid: "logsigmoid",
                   nn.Tanhshrink: "tanhshrink", nn.Softshrink: "softshrink", nn.SiLU: "silu", nn.GELU: "gelu",
                   nn.Mish: "mish", nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid",
                   nn.Hardswish: "hardswish", nn.SELU: "selu"}
    for cls, name in activations.items():
        register_lipschitz_rule(cls, constant_rule(ACTIVATION_CONSTANTS[name]))
    register_lipschitz_rule(nn.CELU, _celu)
    register_lipschitz_rule(nn.LeakyReLU, _leaky_relu)
    register_lipschitz_rule(nn.ELU, _elu)
    register_lipschitz_rule(nn.PReLU, _prelu)
    register_lipschitz_rule(nn.RReLU, _rrelu)
    register_lipschitz_rule(nn.Linear, _linear)
    for d in (1, 2, 3):  # the layers that come in 1-, 2- and 3-D forms, nn.Conv{d}d etc.
        per_dimension = {"Conv": _conv, "BatchNorm": _batch_norm, "AvgPool": _avg_pool, "AdaptiveAvgPool": _avg_pool,
                         "MaxPool": _max_pool(d), "AdaptiveMaxPool": _adaptive_max_pool(d)}
        for kind, rule in per_dimension.items():
            register_lipschitz_rule(getattr(nn, f"{kind}{d}d"), rule)
    for cls in (norm.BatchNorm1d, norm.BatchNorm2d):  # lpc_geom's batch norms (the same map in eval mode)
        register_lipschitz_rule(cls, _batch_norm)
    normalisation = unbounded_rule(NORMALISATION_REASON)
    for cls in (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
        register_lipschitz_rule(cls, normalisation)

    def sequential(module: nn.Sequential, input_shape: tuple[int, ...], walker: LipschitzWalker) -> float:
        return walker.chain(list(module), input_shape)[0]

    register_lipschitz_rule(nn.Sequential, sequential)

    # lpc_geom models (their forward passes are checked against these declarations at use).
    register_lipschitz_rule(Classifier, chain_rule("backbone", "head"))
    register_lipschitz_rule(EuclideanHead, chain_rule("penultimate", "classifier"))
    register_lipschitz_rule(CosineClassifier, unbounded_rule(
        "cosine logits normalise the latents, and z -> z/||z|| has local Lipschitz constant 1/||z||, "
        "unbounded near z = 0 (the eps floor only caps it at about 1/eps), so there is no meaningful "
        "global bound and no certified radius for cosine (ArcFace/CosFace) heads"))
    register_lipschitz_rule(SphereHead, unbounded_rule(
        "the sphere head normalises the latents, u = v/||v||, whose local Lipschitz constant 1/||v|| is "
        "unbounded near v = 0 (the eps floor only caps it at about 1/eps)"))
    register_lipschitz_rule(StiefelLinear, _stiefel_linear)
    register_lipschitz_rule(StiefelHead, chain_rule("projection", "classifier"))
    register_lipschitz_rule(MLP, chain_rule("net"))
    register_lipschitz_rule(CNN1d, _cnn1d)
    register_lipschitz_rule(ResNet, chain_rule("stem", "layer1", "layer2", "layer3", "layer4", "pool",
                                               input_view=_single_channel_view))
    register_lipschitz_rule(BasicBlock, residual_rule(("conv1", "bn1", "act", "conv2", "bn2"), "shortcut",
                                                      ("act",)))
    register_lipschitz_rule(Bottleneck, residual_rule(
        ("conv1", "bn1", "act", "conv2", "bn2", "act", "conv3", "bn3"), "shortcut", ("act",)))


_register_defaults()
