r"""Certified L2 operator-norm bounds of single layers (the factors of a Lipschitz upper bound).

Every function returns a number :math:`\ge \lVert A\rVert_2` for the layer's linear part :math:`A`
(biases do not change a Lipschitz constant) and is computed in float64, whose rounding
(:math:`\sim 10^{-13}` relative) is far below that of the float32 forward pass the bound describes.

* Dense matrices: the largest singular value, by an exact SVD.
* Convolutions: the exact norm of the *circular* convolution on a grid large enough to contain the
  zero-padded input, computed in the Fourier domain (Sedghi et al. 2019), with a polyphase split for
  strides. The real (zero-padded, strided) convolution is that operator restricted to inputs that vanish
  on the padding and read out at the kept positions, so its norm is at most this one.
* Linear poolings with non-negative weights (average poolings): the Schur test
  :math:`\lVert A\rVert_2 \le \sqrt{\lVert A\rVert_1 \lVert A\rVert_\infty}`, exact for global and
  non-overlapping averages.
* Max poolings: :math:`\sqrt{m}` with ``m`` the largest number of windows an input element belongs to.

Why not power iteration: it converges to :math:`\sigma_{\max}` *from below* and has no a-posteriori
certificate, so a finite number of iterations (even times a safety factor) can undercut the true norm;
the Fourier computation is exact, about as cheap for the layer sizes of classifiers, and so keeps the
product of layer norms a sound upper bound.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "adaptive_max_pool_bound",
    "adaptive_window_multiplicity",
    "batch_norm_norm",
    "conv_fft_cost",
    "conv_layer_norm",
    "conv_matrix_norm",
    "conv_operator_norm",
    "matrix_spectral_norm",
    "max_pool_bound",
    "max_pool_norm_bound",
    "nonnegative_operator_norm_bound",
    "per_axis",
    "window_multiplicity",
]

# Complex entries per batched eigenvalue call in conv_operator_norm (bounds peak memory, ~64 MB in complex128).
_SVD_CHUNK_ELEMENTS = 1 << 22


def matrix_spectral_norm(weight: torch.Tensor) -> float:
    """Largest singular value of a matrix, by an exact float64 SVD.

    Parameters
    ----------
    weight : Tensor, shape (m, n)

    Returns
    -------
    float
        :math:`\\sigma_{\\max}(W) = \\lVert W\\rVert_2` (0 for an empty matrix).
    """
    w = weight.detach().to(torch.float64)
    if w.dim() != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(w.shape)}")
    if w.numel() == 0:
        return 0.0
    return float(torch.linalg.svdvals(w)[0])


def conv_matrix_norm(weight: torch.Tensor, input_size: Sequence[int], *, stride: Sequence[int],
                     padding_left: Sequence[int], output_size: Sequence[int], dilation: Sequence[int],
                     groups: int = 1) -> float:
    r"""Exact L2 norm of a zero-padded convolution, from its full matrix (small feature maps).

    With :math:`S^{(d)}_{j}[o, i] = \mathbb 1[i = o s_d - p_d + j \delta_d]` the selection of the input
    that tap ``j`` reads for output ``o`` along dimension ``d``, the layer's matrix is

    .. math:: A = \sum_{j} K[:, :, j] \otimes \bigotimes_d S^{(d)}_{j_d},

    (block-diagonal over groups), and :math:`\lVert A \rVert_2` is the root of the largest eigenvalue of
    its smaller Gram matrix. Cost :math:`O(|\text{taps}|\, D_{in} D_{out} + \min(D_{in}, D_{out})^3)`:
    exact and cheaper than :func:`conv_operator_norm` on 1x1 or 2x2 maps (the last ResNet stage).

    Parameters
    ----------
    weight : Tensor, shape (C_out, C_in / groups, *kernel)
    input_size, output_size : sequence of int
        Spatial sizes of the input and of the layer's output.
    stride, padding_left, dilation : sequence of int
        Per spatial dimension (``padding_left``: zeros before the first input element).
    groups : int, default 1

    Returns
    -------
    float
    """
    w = weight.detach().to(torch.float64)
    c_out, c_in_g, kernel = w.shape[0], w.shape[1], tuple(w.shape[2:])
    out_g = c_out // groups
    full = w.new_zeros(c_out, c_in_g * groups, *kernel)
    for g in range(groups):
        full[g * out_g:(g + 1) * out_g, g * c_in_g:(g + 1) * c_in_g] = w[g * out_g:(g + 1) * out_g]
    p_in, p_out = math.prod(input_size), math.prod(output_size)
    mat = w.new_zeros(c_out, p_out, c_in_g * groups, p_in)
    for taps in itertools.product(*(range(k) for k in kernel)):
        sel = w.new_ones(1, 1)
        for j, n, o, s, p, dil in zip(taps, input_size, output_size, stride, padding_left, dilation,
                                      strict=True):
            rows = torch.arange(o, device=w.device)
            cols = rows * s - p + j * dil
            s_d = w.new_zeros(o, n)
            ok = (cols >= 0) & (cols < n)
            s_d[rows[ok], cols[ok]] = 1.0
            sel = torch.kron(sel, s_d)
        mat += full[(slice(None), slice(None), *taps)][:, None, :, None] * sel[None, :, None, :]
    return _largest_singular_value(mat.reshape(1, c_out * p_out, -1))


def conv_fft_cost(out_channels: int, in_channels_per_group: int, groups: int, kernel: Sequence[int],
                  input_size: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> float:
    """Rough flop count of :func:`conv_operator_norm` (Gram products and eigenvalues per frequency)."""
    if all(k == 1 for k in kernel):
        return float(groups * (out_channels // groups) ** 2 * in_channels_per_group)
    small = [math.ceil((n + p) / s) for n, p, s in zip(input_size, padding, stride, strict=True)]
    n_freq = math.prod(small[:-1]) * (small[-1] // 2 + 1)
    rows, cols = out_channels // groups, in_channels_per_group * math.prod(stride)
    m, big = min(rows, cols), max(rows, cols)
    return float(groups * n_freq * (m * m * big + m ** 3)) * 4  # complex arithmetic


def conv_operator_norm(weight: torch.Tensor, input_size: Sequence[int], *, stride: Sequence[int],
                       padding: Sequence[int], dilation: Sequence[int], groups: int = 1) -> float:
    r"""Upper bound on the L2 operator norm of a zero-padded convolution (1-, 2- or 3-D).

    The input of spatial size :math:`n_d`, padded with :math:`P_d` zeros in all, is embedded in a grid
    of size :math:`N_d = s_d \lceil (n_d + P_d)/s_d \rceil` (an isometry), on which the strided
    cross-correlation is computed circularly; no kept output wraps around, so the layer is this circular
    operator followed by a selection of outputs (norm :math:`\le 1`). Splitting the grid into its
    :math:`s_d` phases, :math:`x_p[m] = x[m s + p]`, a tap at offset :math:`t = j\delta` reads phase
    :math:`t \bmod s` at shift :math:`\lfloor t/s \rfloor`, so the strided operator is a stride-1
    circular convolution on the grid :math:`M_d = N_d/s_d` with :math:`C_{in} \prod_d s_d` input
    channels. That operator is block-circulant, and its singular values are those of the
    :math:`C_{out}\times C_{in}\prod_d s_d` matrices

    .. math::

        \hat K(\omega) = \sum_{j} K[:, :, j]\, e^{-2\pi i \langle \omega, q_j\rangle / M}
        \quad\text{(placed in the columns of phase } p_j\text{)}, \qquad \omega \in \prod_d \{0..M_d-1\},

    so the bound is :math:`\max_\omega \sigma_{\max}(\hat K(\omega))`, and with groups the maximum over
    the groups' diagonal blocks. It is exact for the circular layer; for zero padding and strides it
    can exceed the true norm (typically by a few percent at stride 1, up to about
    :math:`\sqrt{\prod_d s_d}` for strided layers).

    Parameters
    ----------
    weight : Tensor, shape (C_out, C_in / groups, *kernel)
        Convolution weight in :class:`torch.nn.Conv1d`/``2d``/``3d`` layout.
    input_size : sequence of int
        Spatial size of the input (without channels).
    stride, padding, dilation : sequence of int
        Per spatial dimension; ``padding`` is the *total* zero padding (both sides together).
    groups : int, default 1

    Returns
    -------
    float
    """
    w = weight.detach().to(torch.float64)
    d = w.dim() - 2
    if not (len(input_size) == len(stride) == len(padding) == len(dilation) == d):
        raise ValueError(f"a {d}-D convolution needs {d} spatial sizes, strides, paddings and dilations")
    c_out, c_in_g, kernel = w.shape[0], w.shape[1], tuple(w.shape[2:])
    if c_out % groups:
        raise ValueError(f"{c_out} output channels do not split into {groups} groups")
    out_g = c_out // groups
    if all(k == 1 for k in kernel):
        # A pointwise convolution is the channel matrix applied at each (kept) position.
        blocks = w.reshape(groups, out_g, c_in_g)
        return float(torch.linalg.svdvals(blocks)[:, 0].max())
    grid = [s * math.ceil((n + p) / s) for n, p, s in zip(input_size, padding, stride, strict=True)]
    small = [g // s for g, s in zip(grid, stride, strict=True)]
    poly = w.new_zeros(c_out, c_in_g, *stride, *small)
    for taps in itertools.product(*(range(k) for k in kernel)):
        offsets = [j * dil for j, dil in zip(taps, dilation, strict=True)]
        phase = tuple(t % s for t, s in zip(offsets, stride, strict=True))
        shift = tuple(t // s for t, s in zip(offsets, stride, strict=True))
        poly[(slice(None), slice(None), *phase, *shift)] += w[(slice(None), slice(None), *taps)]
    spec = torch.fft.rfftn(poly, dim=tuple(range(2 + d, 2 + 2 * d)))
    n_freq = math.prod(spec.shape[2 + d:])
    cols = c_in_g * math.prod(stride)
    mats = spec.reshape(groups, out_g, cols, n_freq).permute(0, 3, 1, 2).reshape(-1, out_g, cols)
    chunk = max(1, _SVD_CHUNK_ELEMENTS // (out_g * cols))
    return max(_largest_singular_value(mats[i:i + chunk]) for i in range(0, mats.shape[0], chunk))


def conv_layer_norm(weight: torch.Tensor, input_shape: Sequence[int], output_shape: Sequence[int], *,
                    stride: Sequence[int], padding: str | Sequence[int], dilation: Sequence[int],
                    groups: int = 1) -> float:
    r"""Upper bound on the L2 norm of one zero-padded convolution layer, by the cheaper exact method.

    :func:`conv_matrix_norm` (exact for the layer itself) when its cost
    :math:`\min(D_{in}, D_{out})^3 + D_{in} D_{out} |\text{taps}|` is below that of
    :func:`conv_operator_norm` (exact for the circular operator containing the layer), else the latter.

    Parameters
    ----------
    weight : Tensor, shape (C_out, C_in / groups, *kernel)
    input_shape, output_shape : sequence of int
        Shapes of one input and one output, channels first (no batch axis).
    stride, dilation : sequence of int
        Per spatial dimension.
    padding : "same", "valid" or sequence of int
        As :class:`torch.nn.Conv2d` takes it (per side, per spatial dimension).
    groups : int, default 1

    Returns
    -------
    float
    """
    d = weight.dim() - 2
    if len(input_shape) != d + 1 or len(output_shape) != d + 1:
        raise ValueError(f"a {d}-D convolution reads inputs of shape (C, *{d} spatial sizes), got "
                         f"{tuple(input_shape)} -> {tuple(output_shape)}")
    kernel = tuple(weight.shape[2:])
    if padding == "valid":
        left = total_pad = (0,) * d
    elif padding == "same":  # PyTorch pads total // 2 before and the rest after
        total_pad = tuple(dil * (k - 1) for k, dil in zip(kernel, dilation, strict=True))
        left = tuple(p // 2 for p in total_pad)
    else:
        left, total_pad = tuple(padding), tuple(2 * p for p in padding)
    c_out, c_in_g = weight.shape[:2]
    fft_cost = conv_fft_cost(c_out, c_in_g, groups, kernel, input_shape[1:], stride, total_pad)
    n_in, n_out = math.prod(input_shape), math.prod(output_shape)
    dense_cost = float(min(n_in, n_out)) ** 3 + float(n_in) * n_out * math.prod(kernel)
    if dense_cost < fft_cost:
        # Small feature maps (the last stages of a ResNet): the exact norm of the layer is cheaper.
        return conv_matrix_norm(weight, input_shape[1:], stride=stride, padding_left=left,
                                output_size=output_shape[1:], dilation=dilation, groups=groups)
    return conv_operator_norm(weight, input_shape[1:], stride=stride, padding=total_pad, dilation=dilation,
                              groups=groups)


def batch_norm_norm(running_var: torch.Tensor, weight: torch.Tensor | None, eps: float) -> float:
    r"""Norm of eval-mode batch norm's linear part, :math:`\max_c |\gamma_c| / \sqrt{v_c + \epsilon}`.

    With running variances :math:`v_c`, the layer is :math:`x \mapsto \gamma (x - \mu)/\sqrt{v + \epsilon} + \beta` per
    channel, a diagonal map plus a constant.

    Parameters
    ----------
    running_var : Tensor, shape (C,)
    weight : Tensor, shape (C,), or None
        :math:`\gamma` (None: 1).
    eps : float

    Returns
    -------
    float
    """
    scale = (running_var.detach().double() + eps).rsqrt()
    if weight is not None:
        scale = scale * weight.detach().double().abs()
    return float(scale.max()) if scale.numel() else 0.0


def _largest_singular_value(mats: torch.Tensor) -> float:
    """``max_b sigma_max(mats[b])`` via the largest eigenvalue of the smaller Gram matrix.

    In float64 the top eigenvalue of a Hermitian matrix is computed to ~1e-16 of its size, so the root
    is as accurate as an SVD, and the Gram form is about twice as fast for rectangular blocks.
    """
    gram = mats @ mats.mH if mats.shape[-2] <= mats.shape[-1] else mats.mH @ mats
    return float(torch.linalg.eigvalsh(gram)[:, -1].max().clamp_min(0).sqrt())


def nonnegative_operator_norm_bound(op: Callable[[torch.Tensor], torch.Tensor],
                                    input_shape: Sequence[int], device: torch.device | None = None) -> float:
    r"""Schur-test bound for a linear operator with non-negative matrix entries (e.g. average pooling).

    With :math:`A \ge 0` entrywise, the row sums are :math:`A\mathbf 1` and the column sums
    :math:`A^\top \mathbf 1` (one forward and one backward pass on an all-ones input), and

    .. math:: \lVert A\rVert_2 \le \sqrt{\max_i (A\mathbf 1)_i \;\max_j (A^\top\mathbf 1)_j}.

    Parameters
    ----------
    op : callable
        The operator, applied to a batch of one input of shape ``(1, *input_shape)``. It must be linear
        with non-negative entries; this is not checked.
    input_shape : sequence of int
        Shape of one input (without the batch axis).
    device : torch.device, optional

    Returns
    -------
    float
    """
    with torch.enable_grad():
        ones = torch.ones(1, *input_shape, dtype=torch.float64, device=device, requires_grad=True)
        out = op(ones)
        (col_sums,) = torch.autograd.grad(out.sum(), ones)
    return math.sqrt(float(out.max()) * float(col_sums.max()))


def window_multiplicity(size: int, out_size: int, kernel: int, stride: int, padding: int,
                        dilation: int = 1) -> int:
    """Largest number of pooling windows that contain one input position (one dimension).

    Window ``o`` covers positions ``o * stride - padding + j * dilation`` for ``j < kernel``; positions
    outside ``[0, size)`` are padding and are not counted.

    Returns
    -------
    int
    """
    counts = [0] * size
    for o in range(out_size):
        for j in range(kernel):
            i = o * stride - padding + j * dilation
            if 0 <= i < size:
                counts[i] += 1
    return max(counts, default=0)


def max_pool_norm_bound(multiplicities: Sequence[int]) -> float:
    r"""Lipschitz bound of a max pooling whose windows hold each input at most :math:`m_d` times per axis.

    :math:`|\max_w x - \max_w y| \le \max_w |x - y|`, and summing the squares over all windows counts
    every input at most :math:`m = \prod_d m_d` times, so the bound is :math:`\sqrt m` (1 for
    non-overlapping windows).

    Parameters
    ----------
    multiplicities : sequence of int
        :func:`window_multiplicity` or :func:`adaptive_window_multiplicity` of each pooled axis.

    Returns
    -------
    float
    """
    return math.sqrt(math.prod(multiplicities))


def adaptive_window_multiplicity(size: int, out_size: int) -> int:
    """Largest number of adaptive-pooling windows containing one input position (one dimension).

    Adaptive window ``o`` is ``[floor(o * size / out), ceil((o + 1) * size / out))``, as in PyTorch.

    Returns
    -------
    int
    """
    counts = [0] * size
    for o in range(out_size):
        start = (o * size) // out_size
        end = -((-(o + 1) * size) // out_size)
        for i in range(start, end):
            counts[i] += 1
    return max(counts, default=0)


def per_axis(value: int | Sequence[int], d: int) -> tuple[int, ...]:
    """A pooling or convolution hyperparameter as one int per axis (an int applies to all ``d`` axes)."""
    return tuple(int(v) for v in value) if isinstance(value, Sequence) else (int(value),) * d


def max_pool_bound(input_size: Sequence[int], output_size: Sequence[int], kernel_size: int | Sequence[int],
                   stride: int | Sequence[int] | None, padding: int | Sequence[int],
                   dilation: int | Sequence[int]) -> float:
    r"""Lipschitz bound of a max pooling from its hyperparameters: :math:`\sqrt{\prod_d m_d}`.

    Parameters
    ----------
    input_size, output_size : sequence of int
        Sizes of the ``d`` pooled axes before and after the pooling.
    kernel_size, stride, padding, dilation : int or sequence of int
        As for ``torch.nn.functional.max_pool{d}d``; a ``stride`` of None or an empty sequence is the
        kernel size.

    Returns
    -------
    float
        :func:`max_pool_norm_bound` of the :func:`window_multiplicity` of each axis.
    """
    d = len(input_size)
    kernel = per_axis(kernel_size, d)
    strides = kernel if stride is None or stride == [] or stride == () else per_axis(stride, d)
    return max_pool_norm_bound([window_multiplicity(*args) for args in zip(
        input_size, output_size, kernel, strides, per_axis(padding, d), per_axis(dilation, d), strict=True)])


def adaptive_max_pool_bound(input_size: Sequence[int], output_size: Sequence[int]) -> float:
    """Lipschitz bound of an adaptive max pooling: :func:`max_pool_norm_bound` of its window multiplicities.

    Parameters
    ----------
    input_size, output_size : sequence of int
        Sizes of the pooled axes before and after the pooling.

    Returns
    -------
    float
    """
    return max_pool_norm_bound([adaptive_window_multiplicity(n, o)
                                for n, o in zip(input_size, output_size, strict=True)])
