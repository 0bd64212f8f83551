"""Training: schedules, atomic checkpoints, the trainer, DistributedDataParallel support.

The trainer (and with it every model and dataset) is imported on first use, so that the light modules
(``schedules``, ``checkpoint``) import without it.
"""

__all__ = ["CollapseToOriginWarning", "NonFiniteLossError", "RunResult", "Trainer", "TrainingStopped", "train"]


def __getattr__(name):
    if name in __all__:
        from lpc_geom.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'lpc_geom.train' has no attribute {name!r}")
