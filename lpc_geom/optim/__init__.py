"""Optimisers: the factory every trainer uses (role- and manifold-aware parameter groups) and K-FAC."""

from lpc_geom.optim.factory import (
    AUTO_OPTIMIZER,
    KFAC_OPTIMIZERS,
    OPTIMIZERS,
    OptimizerSpec,
    RiemannianAdamW,
    RiemannianMomentumSGD,
    build_optimizer,
    has_manifold_parameters,
    optimizer_names,
    parameter_groups,
    resolve_optimizer,
)
from lpc_geom.optim.kfac import KFAC, DiagonalFisher, KFACLayer

__all__ = [
    "AUTO_OPTIMIZER",
    "KFAC",
    "KFAC_OPTIMIZERS",
    "OPTIMIZERS",
    "DiagonalFisher",
    "KFACLayer",
    "OptimizerSpec",
    "RiemannianAdamW",
    "RiemannianMomentumSGD",
    "build_optimizer",
    "has_manifold_parameters",
    "optimizer_names",
    "parameter_groups",
    "resolve_optimizer",
]
