"""Backbones: networks that map an input ``x`` to a feature vector ``h`` of size ``out_dim``.

Every backbone ends in a flat feature vector and exposes ``out_dim`` so that a head (see
:mod:`lpc_geom.models.heads`) can be sized without a dummy forward pass. All of them use SiLU
activations (as the LPC paper does) and none uses in-place activations, so tensor hooks and full
backward hooks (K-FAC, robustness analyses) work on every layer.

=========  =================================================  =========================
name       architecture                                       ``out_dim``
=========  =================================================  =========================
mlp        flatten -> [Linear -> (BN) -> SiLU] x len(hidden)   ``hidden[-1]``
cnn1d      [Conv1d(stride 2) -> (BN) -> SiLU] x 3 -> flatten   ``channels[-1] * L_out``
resnet18   CIFAR ResNet-18 (BasicBlock, [2, 2, 2, 2])          ``8 * width`` (512)
resnet50   CIFAR ResNet-50 (Bottleneck, [3, 4, 6, 3])          ``32 * width`` (2048)
=========  =================================================  =========================

The ResNets live in :mod:`lpc_geom.models.resnet` (re-exported here); built by name for 1-D inputs (shape
``(L,)`` or ``(C, L)``, e.g. MNIST-1D) they use 1-D convolutions, so the paper's architecture also runs on
sequences.

Your own backbone: any ``factory(input_shape, **options) -> nn.Module`` whose module returns flat features
``(N, D)``, given as an import path ``package.module:factory`` (:func:`import_backbone`), registered under a
name (:func:`register_backbone`), or passed as an object (:func:`make_backbone`); a module that declares no
``out_dim`` gets it from one dry forward (:func:`feature_dim`).
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lpc_geom.models.norm import BatchNorm1d
from lpc_geom.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50

__all__ = [
    "BACKBONES",
    "MLP",
    "OBJECT_BACKBONE",
    "BackboneImportError",
    "BasicBlock",
    "Bottleneck",
    "CNN1d",
    "ResNet",
    "backbone_options",
    "backbone_record",
    "build_backbone",
    "factory_options",
    "feature_dim",
    "import_backbone",
    "is_import_path",
    "make_backbone",
    "register_backbone",
    "resnet18",
    "resnet50",
]


def _as_shape(input_shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got {input_shape!r}")
    return shape


class MLP(nn.Module):
    r"""Multi-layer perceptron on the flattened input.

    .. math::

        h^{(0)} = \operatorname{vec}(x), \qquad
        h^{(l)} = \operatorname{SiLU}\big(\operatorname{BN}(W_l h^{(l-1)} + b_l)\big), \quad l = 1..L,

    with ``BN`` the identity unless ``batch_norm`` (then the linear layer has no bias, which batch norm
    would cancel).

    Parameters
    ----------
    input_shape : int or sequence of int
        Shape of one sample (without the batch axis); it is flattened to ``prod(input_shape)`` features.
    hidden : sequence of int, default (512, 512)
        Widths of the hidden layers. An empty sequence gives the identity on the flattened input
        (a linear model once a head is attached).
    batch_norm : bool, default False
        Insert a batch norm (:class:`lpc_geom.models.norm.BatchNorm1d`) between each linear layer and its
        activation.

    Attributes
    ----------
    out_dim : int
        ``hidden[-1]``, or ``prod(input_shape)`` when ``hidden`` is empty.
    """

    def __init__(self, input_shape: int | Sequence[int], hidden: Sequence[int] = (512, 512),
                 batch_norm: bool = False):
        super().__init__()
        self.input_shape = _as_shape(input_shape)
        hidden = tuple(int(w) for w in hidden)
        if any(w <= 0 for w in hidden):
            raise ValueError(f"hidden widths must be positive, got {hidden}")
        width = math.prod(self.input_shape)
        layers: list[nn.Module] = [nn.Flatten(1)]
        for w in hidden:
            layers.append(nn.Linear(width, w, bias=not batch_norm))
            if batch_norm:
                layers.append(BatchNorm1d(w))
            layers.append(nn.SiLU())
            width = w
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN1d(nn.Module):
    r"""Small 1-D convolutional network for MNIST-1D-like signals.

    Each stage is ``Conv1d(kernel k_i, stride s, padding k_i // 2) -> (BN) -> SiLU``; the output
    length of a stage is :math:`L_{i} = \lfloor (L_{i-1} + 2\lfloor k_i/2 \rfloor - k_i)/s \rfloor + 1`
    and the features are the flattened last stage, ``out_dim = channels[-1] * L_n``. With the defaults
    on a length-40 signal the lengths are 40 -> 20 -> 10 -> 5 and ``out_dim = 160``. This is the
    three-convolution design with which Greydanus (2020) reports about 94 % test accuracy on MNIST-1D
    (with SiLU in place of ReLU).

    Parameters
    ----------
    input_length : int, default 40
        Length ``L`` of the signal.
    channels : sequence of int, default (32, 32, 32)
        Output channels of each convolution.
    kernel_sizes : int or sequence of int, optional
        Kernel size of each convolution (one int is used for every stage). Default: 5 for the first
        convolution and 3 for the others, i.e. ``(5, 3, 3)`` with the default channels.
    stride : int, default 2
        Stride of every convolution.
    in_channels : int, default 1
        Channels of the input. Inputs of shape ``(N, L)`` are accepted when this is 1.
    batch_norm : bool, default False
        Insert a batch norm (:class:`lpc_geom.models.norm.BatchNorm1d`) after each convolution (which then
        has no bias).

    Attributes
    ----------
    out_dim : int
        ``channels[-1] * L_n``.
    """

    def __init__(self, input_length: int = 40, channels: Sequence[int] = (32, 32, 32),
                 kernel_sizes: int | Sequence[int] | None = None, stride: int = 2, in_channels: int = 1,
                 batch_norm: bool = False):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or any(c <= 0 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
        if kernel_sizes is None:
            kernel_sizes = (5,) + (3,) * (len(channels) - 1)
        elif isinstance(kernel_sizes, int):
            kernel_sizes = (kernel_sizes,) * len(channels)
        kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if len(kernel_sizes) != len(channels) or any(k <= 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must give one positive size per channel entry "
                             f"({len(channels)}), got {kernel_sizes}")
        if stride <= 0 or in_channels <= 0:
            raise ValueError(f"stride and in_channels must be positive, got {stride} and {in_channels}")
        self.input_length = int(input_length)
        self.in_channels = int(in_channels)
        layers: list[nn.Module] = []
        length, c_in = self.input_length, self.in_channels
        for c_out, k in zip(channels, kernel_sizes, strict=True):
            pad = k // 2
            length = (length + 2 * pad - k) // stride + 1
            if length <= 0:
                raise ValueError(f"input_length {input_length} is too short for kernel sizes "
                                 f"{kernel_sizes} with stride {stride}")
            layers.append(nn.Conv1d(c_in, c_out, k, stride=stride, padding=pad, bias=not batch_norm))
            if batch_norm:
                layers.append(BatchNorm1d(c_out))
            layers.append(nn.SiLU())
            c_in = c_out
        layers.append(nn.Flatten(1))
        self.net = nn.Sequential(*layers)
        self.out_dim = c_in * length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[1:] != (self.in_channels, self.input_length):
            raise ValueError(f"CNN1d expects inputs of shape (N, {self.in_channels}, {self.input_length})"
                             + (f" or (N, {self.input_length})" if self.in_channels == 1 else "")
                             + f", got {tuple(x.shape)}")
        return self.net(x)


def _mlp_from_shape(shape: tuple[int, ...], **options) -> MLP:
    return MLP(shape, **options)


def _cnn1d_from_shape(shape: tuple[int, ...], **options) -> CNN1d:
    if len(shape) == 1:
        in_channels, length = 1, shape[0]
    elif len(shape) == 2:
        in_channels, length = shape
    else:
        raise ValueError(f"cnn1d needs input_shape (L,) or (C, L), got {shape}")
    return CNN1d(input_length=length, in_channels=in_channels, **options)


def _resnet_from_shape(factory: Callable[..., ResNet]) -> Callable[..., ResNet]:
    def build(shape: tuple[int, ...], **options) -> ResNet:
        if len(shape) == 1:  # a sequence of one channel
            shape = (1, *shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"{factory.__name__} needs input_shape (C, H, W) (images), (C, L) or (L,) "
                             f"(sequences), got {shape}")
        if min(shape[1:]) < 8:
            raise ValueError(f"{factory.__name__} needs inputs of at least 8x8 pixels (length 8), got {shape}")
        return factory(in_channels=shape[0], dims=len(shape) - 1, **options)

    return build


# name -> (builder taking the per-sample input shape, the constructor whose keywords are the options,
#          the keywords derived from input_shape and therefore not accepted as options)
BACKBONES: dict[str, tuple[Callable[..., nn.Module], Callable[..., nn.Module], frozenset[str]]] = {
    "mlp": (_mlp_from_shape, MLP, frozenset({"input_shape"})),
    "cnn1d": (_cnn1d_from_shape, CNN1d, frozenset({"input_length", "in_channels"})),
    "resnet18": (_resnet_from_shape(resnet18), resnet18, frozenset({"in_channels", "dims"})),
    "resnet50": (_resnet_from_shape(resnet50), resnet50, frozenset({"in_channels", "dims"})),
}


def backbone_options(name: str) -> tuple[str, ...]:
    """The keyword options :func:`build_backbone` accepts for backbone ``name``."""
    try:
        _, ctor, derived = BACKBONES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; accepted backbones: {', '.join(BACKBONES)}") from None
    params = inspect.signature(ctor).parameters.values()
    return tuple(p.name for p in params if p.name not in derived
                 and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


def _accepts_any_option(name: str) -> bool:
    """Whether backbone ``name``'s constructor takes ``**kwargs`` (then any option reaches it)."""
    _, ctor, _ = BACKBONES[name.lower()]
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(ctor).parameters.values())


def build_backbone(name: str, input_shape: int | Sequence[int], **options) -> nn.Module:
    """Build a backbone by name for inputs of shape ``input_shape`` (one sample, no batch axis).

    Parameters
    ----------
    name : str
        ``"mlp"``, ``"cnn1d"``, ``"resnet18"``, ``"resnet50"`` or a name given to
        :func:`register_backbone` (case-insensitive).
    input_shape : int or sequence of int
        Shape of one sample: anything for ``mlp`` (flattened), ``(L,)`` or ``(C, L)`` for ``cnn1d``,
        ``(C, H, W)``, ``(C, L)`` or ``(L,)`` for the ResNets (2-D or 1-D convolutions). Input
        sizes/channels are taken from it, not from ``options``.
    **options
        Keyword arguments of the architecture (e.g. ``hidden``, ``batch_norm`` for ``mlp``;
        ``channels``, ``kernel_sizes``, ``stride``, ``batch_norm`` for ``cnn1d``;
        ``zero_init_residual`` and ``width`` for the ResNets).

    Returns
    -------
    nn.Module
        The backbone, with ``out_dim`` set (measured by :func:`feature_dim` where a registered
        factory's module does not declare it).

    Raises
    ------
    ValueError
        For an unknown name (listing the accepted names), an unknown option (listing the accepted
        options for that backbone), or an input shape the architecture cannot take.
    """
    accepted = backbone_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown and not _accepts_any_option(name):
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for backbone {name!r}; "
                         f"accepted options: {', '.join(accepted) or '(none)'}")
    builder, _, _ = BACKBONES[name.lower()]
    backbone = builder(_as_shape(input_shape), **options)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone {name!r} returned a {type(backbone).__name__}, not an nn.Module")
    feature_dim(backbone, input_shape)
    return backbone


# ------------------------------------------------------------------------------------ your own backbones
#: ``backbone`` of a run whose backbone was handed over as a Python object with no import path; the
#: object's qualified name stands between the brackets. It names, it cannot rebuild.
OBJECT_BACKBONE = re.compile(r"^<python object (?P<name>\S+)>$")
#: An import path ``package.module:attribute`` (the attribute may be dotted: ``module:Class.create``).
IMPORT_PATH = re.compile(r"^(?P<module>[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)$")


class BackboneImportError(ValueError):
    """An import path ``module:factory`` that does not import, or names no callable."""


def is_import_path(name: str) -> bool:
    """Whether ``name`` has the form of an import path ``package.module:factory``."""
    return bool(IMPORT_PATH.match(name))


def import_backbone(path: str) -> Callable[..., nn.Module]:
    """Import the backbone factory an import path ``package.module:factory`` names.

    Importing a module runs its code: import only paths you (not a file you were handed) chose.

    Parameters
    ----------
    path : str
        ``package.module:attribute`` (the attribute may be dotted, ``module:Class.build``); the module
        is imported with :func:`importlib.import_module` (so it must be on ``sys.path``, e.g. through
        ``PYTHONPATH``).

    Returns
    -------
    callable
        ``factory(input_shape, **options) -> nn.Module``.

    Raises
    ------
    BackboneImportError
        One line naming the path: not of that form, its module does not import (with the cause), it has
        no such attribute, or the attribute is not callable.
    """
    match = IMPORT_PATH.match(path)
    if match is None:
        raise BackboneImportError(f"backbone {path!r} is not an import path 'package.module:factory'")
    try:
        target: Any = importlib.import_module(match["module"])
    except Exception as exc:  # any error of the user's module: report it in one line, naming the path
        raise BackboneImportError(f"backbone {path!r}: cannot import module {match['module']!r} "
                                  f"({type(exc).__name__}: {' '.join(str(exc).split())}); is it on PYTHONPATH?"
                                  ) from exc
    for part in match["attr"].split("."):
        if not hasattr(target, part):
            raise BackboneImportError(f"backbone {path!r}: {getattr(target, '__name__', target)!s} has no "
                                      f"attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise BackboneImportError(f"backbone {path!r} is of type {type(target).__name__}, not callable; it must be "
                                  "a factory(input_shape, **options) -> nn.Module (a function or a class)")
    return target


def factory_options(factory: Callable[..., nn.Module]) -> tuple[tuple[str, ...], bool]:
    """``(keyword options, accepts any keyword)`` of ``factory(input_shape, **options)``.

    The first parameter takes the input shape; the others are the options. A factory with ``**kwargs``
    accepts any keyword (the second element is then True).

    Raises
    ------
    TypeError
        If ``factory`` takes no positional parameter for the input shape.
    """
    params = list(inspect.signature(factory).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                  inspect.Parameter.VAR_POSITIONAL)
    if not params or params[0].kind not in positional:
        raise TypeError(f"backbone factory {getattr(factory, '__qualname__', factory)!r} must take the input "
                        "shape as its first positional parameter: factory(input_shape, **options)")
    rest = params[1:] if params[0].kind is not inspect.Parameter.VAR_POSITIONAL else params
    names = tuple(p.name for p in rest if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                     inspect.Parameter.KEYWORD_ONLY))
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def register_backbone(name: str, factory: Callable[..., nn.Module], *, replace: bool = False) -> None:
    """Register ``factory`` as the backbone ``name`` (case-insensitive) of this process.

    Afterwards ``build_backbone(name, ...)``, ``TrainConfig(backbone=name)`` and ``lpc-geom backbones``
    know it. A run records the name only: a later process must register it again (or train with an
    import path, which a run records and ``lpc-geom analyze --backbone PATH`` rebuilds).

    Parameters
    ----------
    name : str
        A plain name (no ``:``, which marks an import path).
    factory : callable
        ``factory(input_shape, **options) -> nn.Module``; the module returns flat features ``(N, D)``
        and may declare ``out_dim = D`` (else one dry forward measures it).
    replace : bool, default False
        Allow overwriting an existing registration (otherwise an error, so that two modules cannot
        silently claim one name; the built-in names are never replaced).

    Raises
    ------
    ValueError
        A name with ``:`` or empty, or already registered.
    TypeError
        ``factory`` is not callable or takes no input shape.
    """
    key = name.strip().lower()
    if not key or ":" in key or OBJECT_BACKBONE.match(key):
        raise ValueError(f"backbone name {name!r} must be a non-empty name without ':' (import paths need no "
                         "registration)")
    if not callable(factory):
        raise TypeError(f"backbone factory for {name!r} must be callable, got {type(factory).__name__}")
    factory_options(factory)  # a factory without an input-shape parameter fails here, not at its first use
    if key in _BUILT_IN:
        raise ValueError(f"{name!r} is a built-in backbone; register yours under another name")
    if key in BACKBONES and not replace and BACKBONES[key][1] is not factory:
        raise ValueError(f"a backbone is already registered as {name!r}; pass replace=True to override")
    first = next(iter(inspect.signature(factory).parameters))
    BACKBONES[key] = (factory, factory, frozenset({first}))


_BUILT_IN = frozenset(BACKBONES)


def feature_dim(backbone: nn.Module, input_shape: int | Sequence[int]) -> int:
    """``backbone.out_dim``, or the width ``D`` of its output measured by one dry forward.

    The dry forward runs in eval mode (batch norm uses its running statistics and changes none), without
    gradients, on a batch of two zero inputs of ``input_shape`` on the backbone's device and dtype; the
    previous mode is restored. The measured width is stored as ``backbone.out_dim``.

    Raises
    ------
    ValueError
        The output is not a tensor of shape ``(2, D)``: a backbone must end in flat features.
    """
    declared = getattr(backbone, "out_dim", None)
    if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
        return declared
    shape = _as_shape(input_shape)
    reference = next(iter(backbone.parameters()), None)
    if reference is None:
        reference = next(iter(backbone.buffers()), torch.empty(0))
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(torch.zeros(2, *shape, device=reference.device,
                                       dtype=reference.dtype if reference.is_floating_point() else None))
    finally:
        backbone.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"backbone {type(backbone).__name__} must return flat features of shape (N, D); on "
                         f"inputs of shape (2, {', '.join(map(str, shape))}) it returned {got} "
                         "(end forward in torch.flatten(h, 1))")
    backbone.out_dim = int(out.shape[1])
    return backbone.out_dim


def backbone_record(backbone: nn.Module | Callable[..., nn.Module]) -> str:
    """What a run's ``config.json`` records for a backbone handed over as a Python object.

    A function or class importable under its own name (not from ``__main__``, not local) is recorded
    as its import path ``module:qualname``, from which ``lpc-geom analyze --backbone`` rebuilds the
    model; anything else (a module instance, a lambda, a local function) as
    ``<python object module.qualname>``, which names it but cannot rebuild it.
    """
    if not isinstance(backbone, nn.Module):
        module, qualname = getattr(backbone, "__module__", None), getattr(backbone, "__qualname__", None)
        if module and qualname and module != "__main__" and is_import_path(f"{module}:{qualname}"):
            try:
                if import_backbone(f"{module}:{qualname}") is backbone:
                    return f"{module}:{qualname}"
            except BackboneImportError:
                pass  # not importable under its own name: recorded as an object below
        kind = backbone
    else:
        kind = type(backbone)
    name = f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', type(kind).__name__)}"
    return f"<python object {name}>"


def make_backbone(backbone: str | nn.Module | Callable[..., nn.Module], input_shape: int | Sequence[int],
                  **options) -> nn.Module:
    """A backbone with ``out_dim`` set, from a name, an import path, a factory or a module.

    Parameters
    ----------
    backbone : str, nn.Module or callable
        A registered name (:func:`build_backbone`), an import path ``package.module:factory``
        (:func:`import_backbone`; importing runs that module's code), a factory
        ``factory(input_shape, **options) -> nn.Module``, or a module (used as it is; ``options`` must
        then be empty).
    input_shape : int or sequence of int
        Shape of one sample.
    **options
        Keyword options of the backbone (checked against the factory's signature).

    Raises
    ------
    ValueError
        Unknown name or option (listing the accepted ones), an import path that does not import, a
        ``<python object ...>`` record (which cannot rebuild a model), or output that is not ``(N, D)``.
    """
    if isinstance(backbone, str):
        if OBJECT_BACKBONE.match(backbone):
            raise ValueError(f"backbone {backbone} was handed to train() as a Python object: pass it again "
                             "(Python: backbone=...; lpc-geom analyze/robustness: --backbone package.module:factory), "
                             "or train with an import path package.module:factory")
        if not is_import_path(backbone):
            return build_backbone(backbone, input_shape, **options)
        backbone = import_backbone(backbone)
    if isinstance(backbone, nn.Module):
        if options:
            raise ValueError(f"backbone options {sorted(options)} configure a factory; a module passed as the "
                             "backbone is used as it is")
        module = backbone
    else:
        accepted, any_keyword = factory_options(backbone)
        unknown = sorted(set(options) - set(accepted))
        if unknown and not any_keyword:
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for backbone "
                             f"{getattr(backbone, '__qualname__', backbone)!r}; accepted options: "
                             f"{', '.join(accepted) or '(none)'}")
        module = backbone(_as_shape(input_shape), **options)
        if not isinstance(module, nn.Module):
            raise TypeError(f"backbone factory {getattr(backbone, '__qualname__', backbone)!r} returned a "
                            f"{type(module).__name__}, not an nn.Module")
    feature_dim(module, input_shape)
    return module
