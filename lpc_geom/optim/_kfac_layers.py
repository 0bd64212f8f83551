r"""Layer adapters for the K-FAC preconditioner.

Every layer K-FAC supports is, after reshaping, an affine map applied at one or more *positions*
``t`` of each example ``n``:

.. math::

    s_{n,t} = W \bar a_{n,t}, \qquad \bar a_{n,t} = (a_{n,t}, 1) \in \mathbb R^{d_{in}+1},
    \qquad W \in \mathbb R^{d_{out} \times (d_{in}+1)}

(the trailing 1 is dropped for a layer without bias). For ``nn.Linear`` the positions are the leading
dimensions between the batch and the feature dimension (none for an ``(N, d)`` input); for a convolution
they are the output locations and ``a_{n,t}`` is the receptive-field patch (``unfold``).

An adapter knows, for one kind of layer, how to lay the recorded input out as ``a[n, t]`` (shape
``(N, T, d_in)``), how to lay the gradient with respect to the output out as
``g[b, n, t] = \partial \ell_{n,b} / \partial s_{n,t}`` (shape ``(B, N, T, d_out)``, ``b`` indexing the
cotangents of one Fisher backward) and how to read and write the parameter gradient as the
``(d_out, d_in + 1)`` matrix above.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Layout = Literal["out_in", "in_out"]


@dataclass(eq=False)
class KFACLayer:
    """Declares a Linear-like layer that K-FAC cannot recognise by its type.

    The layer must compute, for an input ``h`` of shape ``(N, ..., d_in)`` (features last),

    * ``layout="out_in"``: ``s = h @ weight.T + bias`` with ``weight`` of shape ``(d_out, d_in)``
      (the ``nn.Linear`` convention);
    * ``layout="in_out"``: ``s = h @ weight + bias`` with ``weight`` of shape ``(d_in, d_out)``
      (the convention of Stiefel-constrained projections, whose points are ``(n, p)`` matrices with
      orthonormal columns).

    ``weight`` may be a ``geoopt.ManifoldParameter``: K-FAC writes the preconditioned *Euclidean*
    gradient into its ``.grad``, and the Riemannian optimiser projects it to the tangent space and
    retracts.

    Parameters
    ----------
    module : nn.Module
        The module whose forward call contains the map; a forward hook is registered on it.
    weight : nn.Parameter
        The weight matrix.
    bias : nn.Parameter, optional
        The bias vector of shape ``(d_out,)``, treated as the homogeneous coordinate of the input.
    layout : {"out_in", "in_out"}
        Storage order of ``weight`` (see above).
    get_input : callable, optional
        ``get_input(args, kwargs) -> h`` extracts ``h`` from the module's forward arguments;
        default: the first positional argument.
    get_output : callable, optional
        ``get_output(output) -> s`` extracts the pre-activation ``s`` from the module's return value;
        default: the return value itself. The tensor returned must be exactly ``s`` (no further
        operation applied), e.g. ``lambda out: out.latents`` for a head whose latents are ``h @ W``.

    Notes
    -----
    A module can also declare itself without this object: any module with a ``weight`` parameter and an
    attribute ``kfac_layout`` equal to ``"out_in"`` or ``"in_out"`` whose ``forward(h)`` returns
    ``s`` as above (``bias`` is used when the module has a ``bias`` parameter) is picked up automatically.
    """

    module: nn.Module
    weight: nn.Parameter
    bias: nn.Parameter | None = None
    layout: Layout = "out_in"
    get_input: Callable[[tuple, dict], torch.Tensor] | None = None
    get_output: Callable[[Any], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.layout not in ("out_in", "in_out"):
            raise ValueError(f"layout must be 'out_in' or 'in_out', got {self.layout!r}")
        if self.weight.dim() != 2:
            raise ValueError(f"a Linear-like weight must be a matrix, got shape {tuple(self.weight.shape)}")


class _Adapter(ABC):
    """Common interface; subclasses fill in the input/output reshapes."""

    kind = "linear"

    def __init__(self, module: nn.Module, weight: nn.Parameter, bias: nn.Parameter | None):
        self.module = module
        self.weight = weight
        self.bias = bias

    @property
    def params(self) -> list[nn.Parameter]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    @property
    def has_bias(self) -> bool:
        return self.bias is not None

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """Shape ``(d_out, d_in [+ 1])`` of the gradient matrix."""
        d_out, d_in = self._out_in_shape()
        return d_out, d_in + int(self.has_bias)

    def _out_in_shape(self) -> tuple[int, int]:
        return self.weight.shape[0], self.weight[0].numel()

    def get_input(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return args[0] if args else next(iter(kwargs.values()))

    def get_output(self, output: Any) -> torch.Tensor:
        return output

    @abstractmethod
    def input_positions(self, x: torch.Tensor) -> torch.Tensor:
        """``a[n, t]``, shape ``(N, T, d_in)``."""

    @abstractmethod
    def output_grad_positions(self, g: torch.Tensor) -> torch.Tensor:
        """``g[b, n, t]``, shape ``(B, N, T, d_out)``, from ``g`` of shape ``(B, *output_shape)``."""

    def rows(self, out: torch.Tensor) -> int:
        """``N T``, the rows ``(n, t)`` of an output (or output gradient) ``out`` of this layer."""
        return out.numel() // out.shape[-1]

    def _weight_grad_out_in(self) -> torch.Tensor:
        return self.weight.grad.reshape(self.weight.shape[0], -1)

    def grad_parts(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight gradient as the ``(d_out, d_in)`` matrix (a view of ``.grad``, which must exist) and the
        bias gradient (zeros while the bias has none; ``None`` for a layer without bias)."""
        gb = None
        if self.bias is not None:
            gb = self.bias.grad if self.bias.grad is not None else torch.zeros_like(self.bias)
        return self._weight_grad_out_in(), gb

    def write_grad(self, vw: torch.Tensor, vb: torch.Tensor | None, scale: float = 1.0) -> None:
        """Overwrite ``.grad`` with ``scale`` times the ``(d_out, d_in)`` matrix ``vw`` and the bias part ``vb``."""
        _scaled_copy(self.weight.grad, vw.reshape(self.weight.grad.shape), scale)
        self._write_bias(vb, scale)

    def _write_bias(self, v: torch.Tensor | None, scale: float) -> None:
        if v is None:
            return
        if self.bias.grad is None:
            self.bias.grad = torch.zeros_like(self.bias)
        _scaled_copy(self.bias.grad, v, scale)


class _LinearAdapter(_Adapter):
    """``s = h W^T + b`` (``out_in``) or ``s = h W + b`` (``in_out``), features on the last axis."""

    def __init__(
        self,
        module: nn.Module,
        weight: nn.Parameter,
        bias: nn.Parameter | None,
        layout: Layout = "out_in",
        get_input: Callable | None = None,
        get_output: Callable | None = None,
    ):
        super().__init__(module, weight, bias)
        self.layout = layout
        self.kind = "linear" if layout == "out_in" else "linear(in_out)"
        self._get_input = get_input
        self._get_output = get_output

    def get_input(self, args: tuple, kwargs: dict) -> torch.Tensor:
        if self._get_input is not None:
            return self._get_input(args, kwargs)
        return super().get_input(args, kwargs)

    def get_output(self, output: Any) -> torch.Tensor:
        return output if self._get_output is None else self._get_output(output)

    def input_positions(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def output_grad_positions(self, g: torch.Tensor) -> torch.Tensor:
        return g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1])

    def _weight_grad_out_in(self) -> torch.Tensor:
        return self.weight.grad if self.layout == "out_in" else self.weight.grad.T

    def _out_in_shape(self) -> tuple[int, int]:
        d0, d1 = self.weight.shape
        return (d0, d1) if self.layout == "out_in" else (d1, d0)

    def write_grad(self, vw: torch.Tensor, vb: torch.Tensor | None, scale: float = 1.0) -> None:
        _scaled_copy(self.weight.grad, vw if self.layout == "out_in" else vw.T, scale)
        self._write_bias(vb, scale)


class _ConvAdapter(_Adapter):
    """``nn.Conv1d`` / ``nn.Conv2d`` with ``groups == 1``; the rows are the unfolded patches.

    A 1-D convolution is handled as a 2-D one of height 1. Padding given as a string or with a
    non-zero ``padding_mode`` is applied explicitly (as the module does) before unfolding.
    """

    kind = "conv"

    def __init__(self, module: nn.Conv1d | nn.Conv2d):
        super().__init__(module, module.weight, module.bias)
        self.spatial = 1 if isinstance(module, nn.Conv1d) else 2
        self.kind = f"conv{self.spatial}d"

    def input_positions(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        explicit_pad = isinstance(m.padding, str) or m.padding_mode != "zeros"
        if explicit_pad:
            pads = m._reversed_padding_repeated_twice
            if any(pads):
                mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
                x = F.pad(x, pads, mode=mode)
            padding = (0,) * self.spatial
        else:
            padding = tuple(m.padding)
        kernel, stride, dilation = tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation)
        if self.spatial == 1:
            x = x.unsqueeze(-2)
            kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
            padding = (0, *padding)
        patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, C*k, L)
        return patches.transpose(1, 2)

    def output_grad_positions(self, g: torch.Tensor) -> torch.Tensor:
        # (B, N, C_out, *spatial) -> (B, N, L, C_out), L in the raster order of unfold.
        return g.reshape(g.shape[0], g.shape[1], g.shape[2], -1).transpose(2, 3)

    def rows(self, out: torch.Tensor) -> int:
        return out.numel() // out.shape[1]  # (N, C_out, *spatial): channels on axis 1


def _scaled_copy(dst: torch.Tensor, src: torch.Tensor, scale: float) -> None:
    """``dst <- scale * src`` in one pass (cast to ``dst``'s dtype)."""
    if scale == 1.0:
        dst.copy_(src)
    else:
        torch.mul(src, scale, out=dst)


def adapter_for(module: nn.Module) -> _Adapter | None:
    """The adapter for a module K-FAC recognises by type or protocol, or ``None``."""
    if isinstance(module, nn.Linear):
        return _LinearAdapter(module, module.weight, module.bias)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1:
        return _ConvAdapter(module)
    layout = getattr(module, "kfac_layout", None)
    weight = getattr(module, "weight", None)
    if layout in ("out_in", "in_out") and isinstance(weight, nn.Parameter) and weight.dim() == 2:
        bias = getattr(module, "bias", None)
        return _LinearAdapter(module, weight, bias if isinstance(bias, nn.Parameter) else None, layout)
    return None


def adapter_from_spec(spec: KFACLayer) -> _Adapter:
    return _LinearAdapter(spec.module, spec.weight, spec.bias, spec.layout, spec.get_input, spec.get_output)
