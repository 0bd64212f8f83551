"""Training: schedules, atomic checkpoints, the trainer, DistributedDataParallel support.

The trainer (and with it every model and dataset) is imported on first use, so that the light modules
(``schedules``, ``checkpoint``) import without it.
"""

import sys
import types

__all__ = ["CollapseToOriginWarning", "NonFiniteLossError", "RunResult", "Trainer", "TrainingStopped", "train"]


def __getattr__(name):
    if name in __all__:
        from lpc_geom.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'lpc_geom.train' has no attribute {name!r}")


class _TrainPackage(types.ModuleType):
    """``lpc_geom.train`` is both this package and, as ``lpc_geom.train(config)``, the trainer function.

    Importing any submodule (``lpc_geom.train.schedules``) binds the name ``train`` of ``lpc_geom`` to this
    package, whatever ``lpc_geom.__getattr__`` would have returned, so the package itself must be callable
    for ``lpc_geom.train(config)`` to mean the same thing in every process.
    """

    def __call__(self, *args, **kwargs):
        from lpc_geom.train.trainer import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _TrainPackage
