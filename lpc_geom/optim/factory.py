r"""The optimiser factory every trainer in lpc_geom uses.

:func:`build_optimizer` sorts a model's parameters into groups by *role* (``"classifier"``: the parameters
of ``model.head.classifier``, which keep a constant learning rate; ``"body"``: everything else) and by
*kind*:

- ``"euclidean"``: ordinary parameters, with the requested weight decay;
- ``"manifold"``: ``geoopt.ManifoldParameter`` s on a non-Euclidean manifold, weight decay 0;
- ``"curvature"``: parameters owned by a geoopt manifold module (a learnable curvature), weight decay 0.

Why no decay on the last two. geoopt couples weight decay (it adds :math:`\lambda x` to the Euclidean
gradient before the Riemannian projection; its ``decoupled_weight_decay`` flag is accepted and ignored):
on the sphere and Stiefel manifolds that term is normal to the manifold and projects away (a no-op that
only looks like regularisation), on the ball it pulls class points to the origin, which is a different
model, not a regulariser. Decay on a curvature parameter would bias the geometry towards flat.

Every group carries the keys ``"role"`` and ``"kind"``; learning rates are changed per group through
``group["lr"]`` and the optimiser round-trips through ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import geoopt
import torch
from torch import nn

ROLES = ("classifier", "body")
KINDS = ("euclidean", "manifold", "curvature")


def _is_manifold_parameter(p: torch.Tensor) -> bool:
    return isinstance(p, (geoopt.ManifoldParameter, geoopt.ManifoldTensor)) and not isinstance(
        p.manifold, geoopt.Euclidean
    )


def has_manifold_parameters(model: nn.Module) -> bool:
    """Whether ``model`` has ``geoopt.ManifoldParameter`` s on a non-Euclidean manifold, i.e. needs
    ``"riemannian-adam"`` or ``"riemannian-sgd"`` rather than ``"adamw"`` or ``"sgd"``."""
    return any(_is_manifold_parameter(p) for p in model.parameters())


def _classifier_module(model: nn.Module) -> nn.Module | None:
    head = getattr(model, "head", None)
    if head is not None and isinstance(getattr(head, "classifier", None), nn.Module):
        return head.classifier
    if isinstance(getattr(model, "classifier", None), nn.Module):
        return model.classifier
    return None


def parameter_groups(model: nn.Module, *, weight_decay: float) -> list[dict]:
    """Parameter groups of ``model`` by role and kind (empty groups are left out).

    Parameters
    ----------
    model : nn.Module
        Usually a :class:`~lpc_geom.models.base.Classifier`; the classifier role is taken from
        ``model.head.classifier`` (or ``model.classifier``) when present.
    weight_decay : float
        Decay of the ``"euclidean"`` groups; the others get 0 (see the module docstring).

    Returns
    -------
    list of dict
        Groups with keys ``params``, ``weight_decay``, ``role`` and ``kind``, in the order
        classifier before body, and euclidean, manifold, curvature within a role; parameters keep the
        order of ``model.named_parameters()``.
    """
    classifier = _classifier_module(model)
    classifier_ids = {id(p) for p in classifier.parameters()} if classifier is not None else set()
    curvature_ids = {
        id(p) for m in model.modules() if isinstance(m, geoopt.manifolds.Manifold) for p in m.parameters()
    }
    buckets: dict[tuple[str, str], list[nn.Parameter]] = {(r, k): [] for r in ROLES for k in KINDS}
    for _, p in model.named_parameters():
        role = "classifier" if id(p) in classifier_ids else "body"
        if _is_manifold_parameter(p):
            kind = "manifold"
        elif id(p) in curvature_ids:
            kind = "curvature"
        else:
            kind = "euclidean"
        buckets[(role, kind)].append(p)
    return [
        {"params": params, "weight_decay": weight_decay if kind == "euclidean" else 0.0, "role": role, "kind": kind}
        for (role, kind), params in buckets.items()
        if params
    ]


@contextlib.contextmanager
def _hidden_gradients(params: Iterable[torch.Tensor]):
    """Temporarily set ``p.grad = None`` so that an optimiser step skips ``params``."""
    saved = [(p, p.grad) for p in params if p.grad is not None]
    for p, _ in saved:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in saved:
            p.grad = grad


def _raw_step(optimizer_class: type, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    """Run ``optimizer_class.step`` (unwrapped) on ``optimizer``, on private copies of ``params``' grads.

    geoopt adds weight decay and Nesterov momentum to ``p.grad`` in place; torch's optimisers leave
    ``.grad`` untouched (gradient accumulation, logging and K-FAC read it after the step), so geoopt works
    on copies. The class's step is called unwrapped: torch wraps every optimiser class's ``step`` with its
    hook machinery, and calling a wrapped parent from the (wrapped) subclass would run registered step
    hooks twice.
    """
    saved = [(p, p.grad) for p in params if p.grad is not None]
    for p, grad in saved:
        p.grad = grad.clone()
    try:
        with torch.no_grad():
            inspect.unwrap(optimizer_class.step)(optimizer)
    finally:
        for p, grad in saved:
            p.grad = grad


class RiemannianAdamW(geoopt.optim.RiemannianAdam):
    r"""Riemannian Adam on manifold parameters, ``torch.optim.AdamW`` on all the others, in one optimiser.

    Each step runs torch's own AdamW update (decoupled decay,
    :math:`\theta \leftarrow \theta(1 - \eta\lambda) - \eta\,\hat m / (\sqrt{\hat v} + \epsilon)`) on the
    ordinary parameters -- so a Euclidean model trained with it is *bitwise* the same as with
    ``torch.optim.AdamW`` -- and geoopt's RiemannianAdam update on the ``ManifoldParameter`` s:
    Riemannian gradient, Adam moments with one second-moment scalar per manifold point, retraction and
    transport of the first moment; ``stabilize=N`` re-projects them and their moments every N steps.
    Manifold parameters are never decayed, whatever their group's ``weight_decay`` (geoopt would couple it:
    see the module docstring).

    geoopt's own update of an ordinary parameter is Adam's up to rounding (its denominator is
    :math:`\sqrt{v/b_2} + \epsilon` rather than :math:`\sqrt v/\sqrt{b_2} + \epsilon`), but under a
    fast-growing LPC gamma those rounding-level differences grow chaotically over a few hundred steps,
    hence torch's update for them.

    Resuming. ``torch.optim.Adam.__setstate__`` (called by ``load_state_dict``) turns geoopt's integer step
    counters into float32 tensors, after which geoopt evaluates ``beta ** step`` in float32 and a resumed
    run drifts from the uninterrupted one; :meth:`__setstate__` turns the manifold parameters' counters
    back into integers.

    Parameters
    ----------
    params : iterable
        Parameters or groups, as for ``torch.optim.AdamW``.
    lr, betas, eps, weight_decay, amsgrad
        As for ``torch.optim.AdamW`` (``weight_decay`` is decoupled and applies to ordinary parameters).
    stabilize : int, optional
        Re-project manifold parameters every ``stabilize`` steps.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        stabilize: int | None = None,
    ):
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, stabilize=stabilize, decoupled_weight_decay=True
        )

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"]]
        on_manifold = [p for p in params if _is_manifold_parameter(p)]
        ordinary = [p for p in params if not _is_manifold_parameter(p)]
        with _hidden_gradients(on_manifold):
            _raw_step(torch.optim.Adam, self, [])
        decays = [group["weight_decay"] for group in self.param_groups]
        try:
            for group in self.param_groups:
                group["weight_decay"] = 0.0
            with _hidden_gradients(ordinary):
                _raw_step(geoopt.optim.RiemannianAdam, self, on_manifold)
        finally:
            for group, decay in zip(self.param_groups, decays, strict=True):
                group["weight_decay"] = decay
        return loss

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
            for p in group["params"]:
                param_state = self.state.get(p, {})
                if _is_manifold_parameter(p) and torch.is_tensor(param_state.get("step")):
                    param_state["step"] = int(param_state["step"].item())


class RiemannianMomentumSGD(geoopt.optim.RiemannianSGD):
    r"""geoopt's RiemannianSGD whose momentum starts like ``torch.optim.SGD``'s.

    geoopt initialises the momentum buffer with the raw first gradient :math:`g` and then applies
    :math:`b \leftarrow \mu b + (1 - \tau)(g + \lambda x)` to it in the same step, so its first step is
    :math:`(1 + \mu) g + \lambda x` where torch takes :math:`g + \lambda x` (with dampening
    :math:`\tau = 0`; without decay, :math:`1 + \mu` times torch's). Here the buffer starts at zero (a
    tangent vector at every point), so the first step is :math:`b = (1 - \tau)(g + \lambda x)`: torch's for
    the default :math:`\tau = 0` (torch skips dampening on the first step; with :math:`\tau > 0` the first
    step is :math:`1 - \tau` times torch's). Later steps are geoopt's, which on ordinary parameters equal
    torch's up to float rounding.

    Weight decay is coupled (added to the Euclidean gradient), as in ``torch.optim.SGD``; with the
    groups of :func:`build_optimizer` manifold parameters have none.
    """

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["momentum"] > 0:
                for p in group["params"]:
                    if p.grad is not None and len(self.state[p]) == 0:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        _raw_step(geoopt.optim.RiemannianSGD, self, [p for g in self.param_groups for p in g["params"]])
        return loss


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimiser of :data:`OPTIMIZERS`.

    Attributes
    ----------
    optimizer_class : type
        Built as ``optimizer_class(groups, lr=..., weight_decay=..., **options)``.
    options : tuple of str
        The options of :func:`build_optimizer` it takes besides ``lr`` and ``weight_decay``
        (``"betas"``, ``"momentum"``, ``"stabilize"``).
    riemannian : bool
        Whether it keeps manifold parameters on their manifolds (a Euclidean one is refused for a model
        that has them).
    """

    optimizer_class: type[torch.optim.Optimizer]
    options: tuple[str, ...]
    riemannian: bool

    def build(self, groups: list[dict], *, lr: float, weight_decay: float, **settings: object) -> torch.optim.Optimizer:
        """The optimiser over ``groups``, with those of ``settings`` named in :attr:`options`."""
        return self.optimizer_class(groups, lr=lr, weight_decay=weight_decay,
                                    **{k: settings[k] for k in self.options})


#: The optimisers :func:`build_optimizer` builds, by name (the one list of their names).
OPTIMIZERS: Mapping[str, OptimizerSpec] = MappingProxyType({
    "adamw": OptimizerSpec(torch.optim.AdamW, ("betas",), riemannian=False),
    "riemannian-adam": OptimizerSpec(RiemannianAdamW, ("betas", "stabilize"), riemannian=True),
    "sgd": OptimizerSpec(torch.optim.SGD, ("momentum",), riemannian=False),
    "riemannian-sgd": OptimizerSpec(RiemannianMomentumSGD, ("momentum", "stabilize"), riemannian=True),
})

#: Optimiser names that precondition a base optimiser of :data:`OPTIMIZERS` with K-FAC, and that base.
KFAC_OPTIMIZERS: Mapping[str, str] = MappingProxyType({
    "kfac-sgd": "sgd",
    "kfac-adam": "adamw",
    "kfac-riemannian": "riemannian-adam",
})

#: The name that picks the optimiser from the model (see :func:`resolve_optimizer`).
AUTO_OPTIMIZER = "auto"


def optimizer_names() -> tuple[str, ...]:
    """Every optimiser name a training run accepts: ``"auto"``, then :data:`OPTIMIZERS`, then
    :data:`KFAC_OPTIMIZERS`, in that order."""
    return (AUTO_OPTIMIZER, *OPTIMIZERS, *KFAC_OPTIMIZERS)


def resolve_optimizer(name: str, model: nn.Module) -> tuple[str, bool]:
    """The base optimiser a name stands for, and whether K-FAC preconditions it.

    ``"auto"`` is ``"adamw"``, or ``"riemannian-adam"`` (AdamW on the Euclidean parameters) when the model
    has manifold parameters; ``"kfac-adam"`` is ``("adamw", True)``.

    Parameters
    ----------
    name : str
        One of :func:`optimizer_names`.
    model : nn.Module
        The model the optimiser will train (read only for ``"auto"``).

    Returns
    -------
    tuple of (str, bool)
        A name of :data:`OPTIMIZERS` and whether K-FAC preconditions it.

    Raises
    ------
    ValueError
        For a name not in :func:`optimizer_names` (the message lists them).
    """
    if name == AUTO_OPTIMIZER:
        return ("riemannian-adam" if has_manifold_parameters(model) else "adamw"), False
    if name in KFAC_OPTIMIZERS:
        return KFAC_OPTIMIZERS[name], True
    if name in OPTIMIZERS:
        return name, False
    raise ValueError(f"unknown optimizer {name!r}; accepted optimizers: {', '.join(optimizer_names())}")


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    *,
    lr: float = 1e-3,
    weight_decay: float = 5e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9,
    stabilize: int | None = 10,
) -> torch.optim.Optimizer:
    r"""Build the optimiser ``name`` over ``model``'s parameters, grouped by role and kind.

    Parameters
    ----------
    model : nn.Module
    name : {"adamw", "riemannian-adam", "sgd", "riemannian-sgd"}
        - ``adamw``: ``torch.optim.AdamW`` (decoupled decay). Models without manifold parameters only.
        - ``riemannian-adam``: :class:`RiemannianAdamW` -- Riemannian Adam on manifold parameters, AdamW
          (decoupled decay, torch's own update) on the others. On a Euclidean model it is ``adamw`` bit for
          bit.
        - ``sgd``: ``torch.optim.SGD`` with momentum and coupled (L2) decay. Models without manifold
          parameters only.
        - ``riemannian-sgd``: :class:`RiemannianMomentumSGD` -- Riemannian SGD with momentum, torch's first
          momentum step and coupled decay on Euclidean parameters.
    lr : float
        Initial learning rate of every group.
    weight_decay : float
        Decay of the ``"euclidean"`` groups (curvature and manifold groups: 0).
    betas : tuple of float
        Adam's moment coefficients (Adam variants only).
    momentum : float
        SGD momentum (SGD variants only).
    stabilize : int or None
        Re-project manifold parameters (and their momenta) onto their manifolds every ``stabilize`` steps
        (Riemannian variants only; geoopt's released optimisers do not re-project on their own).

    Returns
    -------
    torch.optim.Optimizer
        Every ``param_group`` has ``"role"`` in {"classifier", "body"} and ``"kind"`` in
        {"euclidean", "manifold", "curvature"}.

    Raises
    ------
    ValueError
        For an unknown ``name`` (the message lists the accepted ones), a model without parameters, or a
        Euclidean optimiser (``adamw``, ``sgd``) on a model with manifold parameters, which it would move
        off their manifolds.
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; accepted optimizers: {', '.join(OPTIMIZERS)}")
    groups = parameter_groups(model, weight_decay=weight_decay)
    if not groups:
        raise ValueError("the model has no parameters to optimise")
    spec = OPTIMIZERS[key]
    if not spec.riemannian:
        on_manifolds = [n for n, p in model.named_parameters() if _is_manifold_parameter(p)]
        if on_manifolds:
            riemannian = " or ".join(repr(n) for n, s in OPTIMIZERS.items() if s.riemannian)
            raise ValueError(
                f"optimizer {name!r} would move manifold parameters off their manifolds "
                f"({', '.join(on_manifolds)}); use {riemannian}"
            )
    return spec.build(groups, lr=lr, weight_decay=weight_decay, betas=betas, momentum=momentum, stabilize=stabilize)
