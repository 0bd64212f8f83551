"""Optimisers: the factory every trainer uses (role- and manifold-aware parameter groups) and K-FAC."""

from lpc_geom.optim.factory import (
    OPTIMIZERS,
    RiemannianAdamW,
    RiemannianMomentumSGD,
    build_optimizer,
    has_manifold_parameters,
    parameter_groups,
)
from lpc_geom.optim.kfac import KFAC, DiagonalFisher, KFACLayer

__all__ = [
    "KFAC",
    "OPTIMIZERS",
    "DiagonalFisher",
    "KFACLayer",
    "RiemannianAdamW",
    "RiemannianMomentumSGD",
    "build_optimizer",
    "has_manifold_parameters",
    "parameter_groups",
]
