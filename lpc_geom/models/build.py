"""Assemble a :class:`~lpc_geom.models.base.Classifier` from a backbone name and an ablation row.

Heads are looked up in one registry of *head factories*, :data:`HEADS`, keyed by geometry
(:func:`head_factory`). A head factory is any callable
``factory(row, in_dim, num_classes, *, latent_dim=None, bias=False, **options) -> nn.Module`` whose
result returns a :class:`~lpc_geom.models.base.HeadOutput` and exposes ``classifier``;
``"euclidean"`` (:func:`lpc_geom.models.heads.build_head`) is registered here, and every geometry head
class registers itself when it is declared (:class:`lpc_geom.models.geometry.ManifoldHead`). Your own
head registers with :func:`register_head`::

    from lpc_geom.models.build import register_head
    register_head("my-geometry", build_my_head)

after which ``build_model("resnet18", "LPC", (3, 32, 32), 10, head="my-geometry")`` builds it. A head
module or a factory can also be passed directly as ``head=``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from torch import nn

from lpc_geom.ablation import Row, get_row
from lpc_geom.models.backbones import make_backbone
from lpc_geom.models.base import Classifier
from lpc_geom.models.heads import build_head

__all__ = ["HEADS", "HeadFactory", "build_model", "head_factory", "register_head"]


class HeadFactory(Protocol):
    """Signature of a head factory (see the module docstring)."""

    def __call__(self, row: Row, in_dim: int, num_classes: int, *, latent_dim: int | None = None,
                 bias: bool = False, **options) -> nn.Module: ...


#: Registered head factories by geometry name.
HEADS: dict[str, HeadFactory] = {"euclidean": build_head}


def register_head(name: str, factory: HeadFactory, *, replace: bool = False) -> None:
    """Register ``factory`` as the head builder for geometry ``name`` (case-insensitive).

    Parameters
    ----------
    name : str
        Geometry name used as ``build_model(..., head=name)``.
    factory : HeadFactory
        ``factory(row, in_dim, num_classes, *, latent_dim=None, bias=False, **options) -> nn.Module``.
    replace : bool, default False
        Allow overwriting an existing registration (otherwise that is an error, so two modules cannot
        silently claim the same name).
    """
    key = name.lower()
    if not callable(factory):
        raise TypeError(f"head factory for {name!r} must be callable, got {type(factory).__name__}")
    if key in HEADS and not replace and HEADS[key] is not factory:
        raise ValueError(f"a head factory is already registered as {name!r}; pass replace=True to override")
    HEADS[key] = factory


def head_factory(name: str) -> HeadFactory:
    """The registered head factory of geometry ``name`` (case-insensitive).

    Raises
    ------
    ValueError
        For a name nothing registered; the message lists the registered ones.
    """
    key = name.lower()
    if key not in HEADS:
        raise ValueError(f"unknown head geometry {name!r}; registered: {', '.join(HEADS)}")
    return HEADS[key]


def build_model(backbone_name: str | nn.Module | Callable[..., nn.Module], row: Row | str,
                input_shape: int | Sequence[int], num_classes: int, *,
                latent_dim: int | None = None, bias: bool = False,
                head: str | nn.Module | HeadFactory | None = None, head_options: Mapping[str, Any] | None = None,
                **backbone_options) -> Classifier:
    """Build ``backbone -> head`` for one ablation row.

    Parameters
    ----------
    backbone_name : str, nn.Module or callable
        A backbone name (``"mlp"``, ``"cnn1d"``, ``"resnet18"``, ``"resnet50"`` or a registered one), an
        import path ``package.module:factory``, a factory ``factory(input_shape, **options) -> nn.Module``
        or a module (see :func:`lpc_geom.models.backbones.make_backbone`); its ``out_dim`` is measured
        by one dry forward where it declares none.
    row : Row or str
        Ablation row or its name (:data:`lpc_geom.ablation.ROWS`).
    input_shape : int or sequence of int
        Shape of one input sample (no batch axis).
    num_classes : int
        Number of classes ``K``.
    latent_dim : int, optional
        Penultimate width; default ``row.latent_dim(num_classes)``.
    bias : bool, default False
        Classifier bias (the paper uses none).
    head : str, nn.Module or HeadFactory, optional
        ``None`` or a registered geometry name (default ``"euclidean"``) builds the row's head through
        the registry; a factory is called as ``head(row, backbone.out_dim, num_classes,
        latent_dim=latent_dim, bias=bias)``; a module is used as it is (it must accept
        ``backbone.out_dim`` features; passing ``latent_dim``, ``bias=True`` or ``head_options`` with it
        is an error).
    head_options : mapping, optional
        Keyword options passed on to the head factory (a geometry head's options, e.g. ``{"c": 0.5}``).
    **backbone_options
        Passed to the backbone's builder or factory.

    Returns
    -------
    Classifier
        ``forward(x)`` returns ``HeadOutput(logits, latents, energy)``.

    Raises
    ------
    ValueError
        Unknown backbone, option, row or head geometry (each error lists the accepted values), or a head
        without a ``classifier`` attribute.
    """
    row = get_row(row) if isinstance(row, str) else row
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    backbone = make_backbone(backbone_name, input_shape, **backbone_options)
    if isinstance(head, nn.Module):
        if latent_dim is not None or bias or head_options:
            raise ValueError("latent_dim, bias and head_options configure a head that build_model builds; a head "
                             "module passed as head= is used as it is, so leave them at their defaults")
        head_module = head
    else:
        if head is None or isinstance(head, str):
            factory = head_factory("euclidean" if head is None else head)
        elif callable(head):
            factory = head
        else:
            raise TypeError(f"head must be None, a geometry name, a module or a factory, "
                            f"got {type(head).__name__}")
        head_module = factory(row, backbone.out_dim, num_classes, latent_dim=latent_dim, bias=bias,
                              **(head_options or {}))
    if not isinstance(getattr(head_module, "classifier", None), nn.Module):
        raise ValueError(f"head {type(head_module).__name__} must expose its final layer as `.classifier` "
                         "(an nn.Module)")
    return Classifier(backbone, head_module)
