r"""CIFAR ResNets (He et al. 2016, as used by the LPC paper), in 2-D for images and 1-D for sequences.

A 3x3 stride-1 stem without max-pooling, so a 32x32 image reaches the last stage at 4x4; global average
pooling then gives the features ``h`` (``out_dim`` of them). They are written here because torchvision does
not load with the CPU build of torch. With ``dims=1`` they use 1-D convolutions, batch norms and pooling
(kernel 3, the same strides). Like every backbone of :mod:`lpc_geom.models.backbones` they use SiLU
activations and no in-place ones, so tensor hooks and full backward hooks work on every layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lpc_geom.models.norm import BatchNorm1d, BatchNorm2d

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]


_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_BATCH_NORM = {1: BatchNorm1d, 2: BatchNorm2d}  # evaluation mode: one affine map (models.norm)
_GLOBAL_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


def _check_dims(dims: int) -> int:
    if dims not in _CONV:
        raise ValueError(f"dims must be 1 (sequences) or 2 (images), got {dims!r}")
    return dims


def _conv3x3(c_in: int, c_out: int, stride: int = 1, dims: int = 2) -> nn.Module:
    return _CONV[dims](c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _shortcut(c_in: int, c_out: int, stride: int, dims: int = 2) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(_CONV[dims](c_in, c_out, 1, stride=stride, bias=False), _BATCH_NORM[dims](c_out))


class BasicBlock(nn.Module):
    r"""ResNet basic block: :math:`y = \operatorname{SiLU}(\operatorname{BN}(C_2\,
    \operatorname{SiLU}(\operatorname{BN}(C_1 x))) + S x)` with 3x3 convolutions ``C_1`` (carrying the
    stride) and ``C_2``, and ``S`` the identity or a strided 1x1 convolution + BN when the shape changes.
    ``dims`` = 1 uses 1-D convolutions (kernel 3) and batch norms.
    """

    expansion = 1
    #: (convolution, batch norm) attribute pairs applied back to back (:func:`lpc_geom.models.fold.fold_batch_norms`)
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, c_in: int, planes: int, stride: int = 1, dims: int = 2):
        super().__init__()
        dims = _check_dims(dims)
        self.conv1 = _conv3x3(c_in, planes, stride, dims)
        self.bn1 = _BATCH_NORM[dims](planes)
        self.conv2 = _conv3x3(planes, planes, dims=dims)
        self.bn2 = _BATCH_NORM[dims](planes)
        self.act = nn.SiLU()
        self.shortcut = _shortcut(c_in, planes, stride, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))

    @property
    def last_bn(self) -> nn.Module:
        return self.bn2


class Bottleneck(nn.Module):
    r"""ResNet bottleneck block (stride on the 3x3 convolution, "ResNet v1.5"):
    ``1x1 (planes) -> 3x3 (planes, stride) -> 1x1 (4 planes)``, each followed by BN, SiLU after the
    first two and after the residual sum :math:`y = \operatorname{SiLU}(F(x) + S x)`; ``dims`` as in
    :class:`BasicBlock`.
    """

    expansion = 4
    #: (convolution, batch norm) attribute pairs applied back to back (:func:`lpc_geom.models.fold.fold_batch_norms`)
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, c_in: int, planes: int, stride: int = 1, dims: int = 2):
        super().__init__()
        dims = _check_dims(dims)
        c_out = planes * self.expansion
        self.conv1 = _CONV[dims](c_in, planes, 1, bias=False)
        self.bn1 = _BATCH_NORM[dims](planes)
        self.conv2 = _conv3x3(planes, planes, stride, dims)
        self.bn2 = _BATCH_NORM[dims](planes)
        self.conv3 = _CONV[dims](planes, c_out, 1, bias=False)
        self.bn3 = _BATCH_NORM[dims](c_out)
        self.act = nn.SiLU()
        self.shortcut = _shortcut(c_in, c_out, stride, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))

    @property
    def last_bn(self) -> nn.Module:
        return self.bn3


class ResNet(nn.Module):
    """CIFAR-style ResNet backbone (no classifier): ``h = avgpool(stages(SiLU(BN(conv3x3(x)))))``.

    Parameters
    ----------
    block : type
        :class:`BasicBlock` or :class:`Bottleneck`.
    num_blocks : sequence of 4 ints
        Blocks per stage; the stages have ``width`` x (1, 2, 4, 8) planes and strides 1, 2, 2, 2.
    in_channels : int, default 3
        Input image channels.
    width : int, default 64
        Planes of the stem and the first stage (64: the standard ResNet; 16 costs about 1/16 of the
        compute, for small images on a CPU).
    dims : {2, 1}, default 2
        Spatial dimensions: 2 for images ``(N, C, H, W)``, 1 for sequences ``(N, C, L)`` (``(N, L)`` is
        accepted when ``in_channels`` is 1).
    zero_init_residual : bool, default False
        Start the last batch norm of every block at scale 0, so each block starts as the identity
        (Goyal et al. 2017). Off by default, as in the LPC paper's setup.

    Attributes
    ----------
    out_dim : int
        ``8 * width * block.expansion`` (512 for ResNet-18, 2048 for ResNet-50 at the default width).

    Notes
    -----
    Convolutions use He-normal initialisation (fan-out), batch norms start at scale 1 and shift 0.
    Any input with spatial size at least 8x8 (length 8) is accepted (global average pooling makes the output size
    independent of the resolution).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: Sequence[int],
                 in_channels: int = 3, zero_init_residual: bool = False, width: int = 64, dims: int = 2):
        super().__init__()
        self.dims = _check_dims(dims)
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks must have 4 entries (one per stage), got {num_blocks}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        self.in_channels = int(in_channels)
        self.stem = nn.Sequential(_conv3x3(self.in_channels, width, dims=dims), _BATCH_NORM[dims](width), nn.SiLU())
        c_in = width
        stages = []
        for planes, n, stride in zip((width, 2 * width, 4 * width, 8 * width), num_blocks, (1, 2, 2, 2),
                                     strict=True):
            blocks = []
            for s in [stride] + [1] * (int(n) - 1):
                blocks.append(block(c_in, planes, s, dims))
                c_in = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = _GLOBAL_POOL[dims](1)
        self.out_dim = c_in

        for m in self.modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 1 and x.dim() == 2 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.dim() != 2 + self.dims or x.shape[1] != self.in_channels:
            expected = "H, W" if self.dims == 2 else "L"
            raise ValueError(f"ResNet expects inputs of shape (N, {self.in_channels}, {expected}), "
                             f"got {tuple(x.shape)}")
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.pool(x), 1)


def resnet18(in_channels: int = 3, zero_init_residual: bool = False, width: int = 64, dims: int = 2) -> ResNet:
    """CIFAR ResNet-18 backbone (BasicBlock, [2, 2, 2, 2]); ``out_dim = 8 * width`` (512), about 11.17 M
    parameters at the default width in 2-D."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels=in_channels, zero_init_residual=zero_init_residual,
                  width=width, dims=dims)


def resnet50(in_channels: int = 3, zero_init_residual: bool = False, width: int = 64, dims: int = 2) -> ResNet:
    """CIFAR ResNet-50 backbone (Bottleneck, [3, 4, 6, 3]); ``out_dim = 32 * width`` (2048), about 23.5 M
    parameters at the default width in 2-D."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels=in_channels, zero_init_residual=zero_init_residual,
                  width=width, dims=dims)
