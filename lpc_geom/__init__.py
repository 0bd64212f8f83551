"""lpc_geom: latent point collapse and the geometry of classifier latents."""

__version__ = "0.1.0"

# The analyzers pull in scipy; resolve them on first use so `import lpc_geom` stays light.
_LAZY = {
    "analyze": "lpc_geom.analysis",
    "CollapseReport": "lpc_geom.analysis",
    "CollapseAccumulator": "lpc_geom.analysis",
    "CollapseMonitor": "lpc_geom.monitor",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lpc_geom' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
