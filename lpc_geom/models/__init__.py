"""Models: backbones, heads and the :class:`Classifier` that chains them.

Every model returns :class:`HeadOutput` ``(logits, latents, energy)``, so analyzers read the latents
without forward hooks and the LPC compression term is ``gamma * energy.mean()``.
"""

# Declaring the geometry heads registers them in HEADS: imported with the package, they are there before any
# lookup.
from lpc_geom.models import geometry
from lpc_geom.models.backbones import (
    BACKBONES,
    MLP,
    BackboneImportError,
    CNN1d,
    ResNet,
    backbone_options,
    build_backbone,
    feature_dim,
    import_backbone,
    make_backbone,
    register_backbone,
    resnet18,
    resnet50,
)
from lpc_geom.models.base import Classifier, HeadOutput
from lpc_geom.models.build import HEADS, HeadFactory, build_model, head_factory, register_head
from lpc_geom.models.fold import fold_batch_norms
from lpc_geom.models.heads import CosineClassifier, EuclideanHead, build_head

__all__ = [
    "BACKBONES",
    "HEADS",
    "MLP",
    "BackboneImportError",
    "CNN1d",
    "Classifier",
    "CosineClassifier",
    "EuclideanHead",
    "HeadFactory",
    "HeadOutput",
    "ResNet",
    "backbone_options",
    "build_backbone",
    "build_head",
    "build_model",
    "feature_dim",
    "fold_batch_norms",
    "geometry",
    "head_factory",
    "import_backbone",
    "make_backbone",
    "register_backbone",
    "register_head",
    "resnet18",
    "resnet50",
]
