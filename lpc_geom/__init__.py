r"""lpc_geom: latent point collapse and the geometry of classifier latents.

Building blocks for your own model and loop, importable from here: the heads (:class:`EuclideanHead`,
the LPC head with ``penultimate="linear"``; :class:`ManifoldHead` for a geoopt manifold;
:func:`build_head` by ablation row), :class:`Classifier` (``backbone -> head``, returning
:class:`HeadOutput` ``(logits, latents, energy)``), the compression term :func:`compression_term`
(:math:`\gamma \cdot \frac1N \sum_i E_i`), the gamma schedules (:class:`ExponentialGamma` and the
others of :func:`build_gamma_schedule`), :func:`analyze`, and the trainer (:func:`train`,
:class:`TrainConfig`; ``train(config, backbone=...)`` trains your own backbone).
"""

__version__ = "0.1.0"

# The analyzers pull in scipy; resolve them on first use so `import lpc_geom` stays light.
_LAZY = {
    "analyze": "lpc_geom.analysis",
    "AnalyzeOptions": "lpc_geom.analysis",
    "CollapseReport": "lpc_geom.analysis",
    "CollapseAccumulator": "lpc_geom.analysis",
    "CollapseMonitor": "lpc_geom.monitor",
    # building blocks for your own model and training loop
    "Classifier": "lpc_geom.models",
    "HeadOutput": "lpc_geom.models",
    "EuclideanHead": "lpc_geom.models",
    "build_head": "lpc_geom.models",
    "build_model": "lpc_geom.models",
    "register_backbone": "lpc_geom.models",
    "ManifoldHead": "lpc_geom.models.geometry",
    "build_geometry_head": "lpc_geom.models.geometry",
    "compression_term": "lpc_geom.losses",
    "ExponentialGamma": "lpc_geom.train.schedules",
    "TwoRegimeGamma": "lpc_geom.train.schedules",
    "ThresholdGamma": "lpc_geom.train.schedules",
    "ConstantGamma": "lpc_geom.train.schedules",
    "build_gamma_schedule": "lpc_geom.train.schedules",
    "TrainConfig": "lpc_geom.config",
}
# `lpc_geom.train` is the training package, callable as the trainer: `lpc_geom.train(config)`.
_SUBPACKAGES = ("train",)


def __getattr__(name):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'lpc_geom' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY, *_SUBPACKAGES})
