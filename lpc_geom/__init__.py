"""lpc_geom: latent point collapse and the geometry of classifier latents."""

__version__ = "0.1.0"
