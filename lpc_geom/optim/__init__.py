"""Optimisers: the factory every trainer uses (role- and manifold-aware parameter groups)."""

from lpc_geom.optim.factory import (
    OPTIMIZERS,
    RiemannianAdamW,
    RiemannianMomentumSGD,
    build_optimizer,
    has_manifold_parameters,
    parameter_groups,
)

__all__ = [
    "OPTIMIZERS",
    "RiemannianAdamW",
    "RiemannianMomentumSGD",
    "build_optimizer",
    "has_manifold_parameters",
    "parameter_groups",
]
