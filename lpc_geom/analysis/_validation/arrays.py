"""Arrays: latents, weights, biases, logits and classifier heads, returned as float64 tensors without NaN/Inf."""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from lpc_geom.analysis._validation.manifolds import work_device

# Squared distances of larger entries overflow float64.
_MAX_ABS = 1e150


def _float_eps(dtype) -> float:
    """Machine epsilon of the *input* dtype (integers are exact: treated as float64)."""
    if isinstance(dtype, torch.dtype):
        return torch.finfo(dtype).eps if dtype.is_floating_point else float(np.finfo(np.float64).eps)
    dtype = np.dtype(dtype)
    return float(np.finfo(dtype).eps) if dtype.kind == "f" else float(np.finfo(np.float64).eps)


def check_latents(
    latents, *, name: str = "latents", min_dim: int = 2, min_samples: int = 2, keep_float32: bool = False
) -> tuple[torch.Tensor, float]:
    """Validate an (N, d) array of real numbers and return it as a float64 tensor.

    Parameters
    ----------
    latents : numpy.ndarray or torch.Tensor, shape (N, d)
        Any real dtype (float16/bfloat16/32/64 or integer); any torch device.
    name : str
        Argument name used in error messages.
    min_dim : int
        Smallest accepted ``d`` (the analyzers need ``d >= 2``).
    min_samples : int
        Smallest accepted ``N`` (2 for an analysis; a streamed batch may hold 1).
    keep_float32 : bool
        Return float32 input as it is (no float64 copy; a numpy array's memory is shared, never written):
        for callers that convert row blocks to float64 themselves.

    Returns
    -------
    z : torch.Tensor, float64 (or float32 with ``keep_float32``), shape (N, d)
        On the input's device (CPU for numpy input and for MPS tensors).
    eps : float
        Machine epsilon of the input dtype: the relative resolution the input was stored with.

    Raises
    ------
    TypeError
        Not an array/tensor, or a complex, boolean, string or object dtype.
    ValueError
        Not 2-D, fewer than ``min_samples`` samples, ``d < min_dim``, any NaN/Inf (the count and first
        row are named), or entries above 1e150 in magnitude (their squares overflow).
    """
    if isinstance(latents, torch.Tensor):
        t = latents.detach()
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be real-valued; got torch dtype {t.dtype}")
        eps = _float_eps(t.dtype)
        t = t.to(device=work_device(t.device))
    elif isinstance(latents, (np.ndarray, list, tuple)):
        arr = np.asarray(latents)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be a real numeric array; got numpy dtype {arr.dtype}")
        eps = _float_eps(arr.dtype)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor of shape (N, d); got {type(latents)!r}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, d); got shape {tuple(t.shape)}")
    n, d = t.shape
    if n < min_samples:
        raise ValueError(f"{name} must hold at least {min_samples} samples; got N = {n}")
    if d < min_dim:
        raise ValueError(
            f"{name} has d = {d}; the analyzers need d >= {min_dim} (angles, ETF and hypercube figures "
            "are undefined in one dimension)"
        )
    # A sum is finite when every entry is (NaN/Inf propagate); it can also overflow on finite entries, so
    # only a non-finite sum leads to the entrywise check (in the input dtype). The sum runs in the input's
    # own dtype (float32 for the half types, whose range a sum overflows at once): a float64 sum of float32
    # entries would convert every entry first.
    sum_dtype = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None
    if t.is_floating_point() and not math.isfinite(float(t.sum(dtype=sum_dtype))):
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad_rows = (~finite).any(dim=1)
            first = int(torch.nonzero(bad_rows)[0, 0])
            raise ValueError(
                f"{name} contains {int((~finite).sum())} NaN/Inf entries in {int(bad_rows.sum())} rows "
                f"(first at row {first})"
            )
    z = t if keep_float32 and t.dtype == torch.float32 else t.to(torch.float64)
    # Only float64 can hold such entries (the float32 maximum is 3.4e38); aminmax makes no |z| copy.
    if t.dtype == torch.float64 and z.numel():
        lo, hi = torch.aminmax(z)
        if max(-float(lo), float(hi)) > _MAX_ABS:
            raise ValueError(
                f"{name} has entries above {_MAX_ABS:.0e} in magnitude: their squares overflow float64; rescale them"
            )
    return z, eps


def _as_float64(x, what: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, (np.ndarray, list, tuple, numbers.Real)):
        a = np.asarray(x)
        if a.dtype.kind not in "iuf":
            raise TypeError(f"{what} must be real-valued; got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    else:
        raise TypeError(f"{what} must be a numpy array or torch tensor; got {type(x)!r}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must be real-valued; got {t.dtype}")
    t = t.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN/Inf")
    return t


def check_array(x, name: str, ndim: int | None = None) -> torch.Tensor:
    """A real array or tensor (classifier weights, biases, plane vectors) as a float64 CPU tensor.

    Raises
    ------
    TypeError
        Not an array/tensor/number, or a complex or boolean dtype.
    ValueError
        ``ndim`` given and not matched, or NaN/Inf entries.
    """
    t = _as_float64(x, name, torch.device("cpu"))
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    return t


def _is_linear_module(module: torch.nn.Module) -> bool:
    """An ``nn.Linear`` whose forward pass is ``nn.Linear``'s own (``W z + b``)."""
    return isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward


def _check_weights(w, b, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    W = _as_float64(w, "classifier weight W", device)
    if W.ndim != 2 or W.shape[1] != d:
        hint = " (looks transposed: W must be (K, d) like nn.Linear.weight)" if W.ndim == 2 and W.shape[0] == d else ""
        raise ValueError(f"classifier weight W must have shape (K, d={d}); got {tuple(W.shape)}{hint}")
    B = None
    if b is not None:
        B = _as_float64(b, "classifier bias b", device).reshape(-1)
        if B.shape[0] != W.shape[0]:
            raise ValueError(f"classifier bias b must have {W.shape[0]} entries (one per row of W); got {B.shape[0]}")
    return W, B


def check_classifier(classifier, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return the weights ``(W, b)`` as float64 tensors from ``(W, b)``, ``(W,)``, ``W`` or an object with
    ``.weight`` (and optional ``.bias``): an ``nn.Linear``, a duck-typed linear layer, or a module head whose
    ``.weight`` holds its class rows (e.g. ``HyperbolicMLR``'s normals, ``SphereClassifier``'s directions).

    ``W`` must have shape (K_w, d) (torch's ``nn.Linear`` layout); ``b`` shape (K_w,) or ``None``. Only the
    weight-based figures (``nc3``) use this for a module head; its logits come from :func:`check_head`.
    """
    if hasattr(classifier, "weight") and not isinstance(classifier, (torch.Tensor, np.ndarray)):
        w, b = classifier.weight, getattr(classifier, "bias", None)
    elif isinstance(classifier, (tuple, list)):
        if len(classifier) not in (1, 2):
            raise TypeError(f"classifier must be (W, b) or (W,); got a sequence of length {len(classifier)}")
        w = classifier[0]
        b = classifier[1] if len(classifier) == 2 else None
    elif isinstance(classifier, (torch.Tensor, np.ndarray)):
        w, b = classifier, None
    else:
        raise TypeError(
            f"classifier must be (W, b), W, or a module with .weight (and optional .bias); got {type(classifier)!r}"
        )
    return _check_weights(w, b, d, device)


@dataclass(frozen=True, eq=False)
class ClassifierHead:
    """A validated classifier head: linear ``f(z) = W z + b``, or a differentiable module.

    Attributes
    ----------
    weight : Tensor or None
        (K_out, d) float64 on the work device: the linear weights, or a module head's ``.weight`` (its
        class rows, used by ``nc3``); ``None`` for a module without a (K_out, d) ``.weight``.
    bias : Tensor or None
        (K_out,) float64 bias of a linear head.
    module : torch.nn.Module or None
        ``None`` for a linear head. Otherwise a float64 copy of the given module on the CPU, in eval mode
        (``copy.deepcopy(module).to("cpu", torch.float64).eval()``; the caller's module is untouched):
        its outputs are the logits, and its Fisher geometry is computed through autograd.
    n_out : int
        Number of outputs K_out.
    """

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    module: torch.nn.Module | None
    n_out: int

    @property
    def linear(self) -> bool:
        return self.module is None

    def logits(self, z: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """Float64 logits (N, K_out) of latents ``z`` (N, d; float64, or float32 converted in row blocks), on
        ``z``'s device."""
        if self.module is None:
            if z.dtype == torch.float64:
                out = z @ self.weight.T
            else:
                out = torch.empty(z.shape[0], self.n_out, dtype=torch.float64, device=z.device)
                rows = max(64, (1 << 18) // z.shape[1])  # blocks of ~2 MiB of float64, reused from the cache
                for s in range(0, z.shape[0], rows):
                    torch.matmul(z[s : s + rows].to(torch.float64), self.weight.T, out=out[s : s + rows])
            return out if self.bias is None else out.add_(self.bias)
        with torch.no_grad():
            parts = [self.module(z[s : s + chunk].cpu().to(torch.float64)) for s in range(0, z.shape[0], chunk)]
        L = torch.cat(parts).to(z.device)
        if not bool(torch.isfinite(L).all()):
            raise ValueError("the classifier module returned NaN/Inf logits at the given latents")
        return L


def check_head(classifier, z: torch.Tensor) -> ClassifierHead:
    """Validate a classifier against float64 latents ``z`` (N, d) and return a :class:`ClassifierHead`.

    * ``(W, b)``, ``(W,)``, ``W``, an ``nn.Linear`` (with ``nn.Linear``'s own forward), or a non-module
      object with ``.weight``/``.bias``: linear, :math:`f(z) = Wz + b` (see :func:`check_classifier`).
    * Any other ``torch.nn.Module`` (a manifold head's classifier such as ``HyperbolicMLR``,
      ``HyperbolicPrototypes``, ``SphereClassifier``, a cosine classifier, a wrapper that scales logits):
      evaluated by calling a float64 CPU copy of it in eval mode on the latents. It must map (n, d)
      latents to (n, K_out) logits, K_out >= 2. Its ``.weight``, when it is a (K_out, d) array, is kept
      for ``nc3``.

    Parameters
    ----------
    classifier : tuple, array, torch.nn.Module or object with ``.weight``
        As accepted by :func:`lpc_geom.analyze`.
    z : torch.Tensor, shape (N, d)
        The validated latents, float64 or float32 (the first row is used to check a module's output).

    Returns
    -------
    ClassifierHead

    Raises
    ------
    TypeError
        An unsupported object, a module that cannot be copied or converted to float64, or whose output
        is not a tensor.
    ValueError
        Bad shapes, NaN/Inf weights, fewer than 2 outputs, or non-finite logits at the first latent.
    """
    d = z.shape[1]
    if not isinstance(classifier, torch.nn.Module) or _is_linear_module(classifier):
        W, B = check_classifier(classifier, d, z.device)
        if W.shape[0] < 2:
            raise ValueError(f"classifier must have at least 2 outputs (rows of W); got {W.shape[0]}")
        return ClassifierHead(W, B, None, W.shape[0])
    try:
        module = copy.deepcopy(classifier).to(device="cpu", dtype=torch.float64).eval()
    except Exception as err:  # deepcopy/conversion failures of arbitrary user modules
        raise TypeError(
            f"classifier module {type(classifier).__name__} could not be copied and converted to float64: {err}"
        ) from err
    with torch.no_grad():
        out = module(z[:1].cpu().to(torch.float64))
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        raise TypeError(
            f"classifier module {type(classifier).__name__} must map (n, d) latents to an (n, K) logits tensor; "
            f"got {type(out).__name__}{'' if not isinstance(out, torch.Tensor) else tuple(out.shape)}"
        )
    if out.shape[1] < 2:
        raise ValueError(f"classifier module must return at least 2 logits; got {out.shape[1]}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("the classifier module returned NaN/Inf logits at the first latent")
    if out.dtype != torch.float64:
        raise TypeError(
            f"classifier module {type(classifier).__name__} returned {out.dtype} logits after .double(); "
            "it must compute in the dtype of its parameters and input"
        )
    weight = None
    w = getattr(classifier, "weight", None)
    if isinstance(w, (torch.Tensor, np.ndarray)) and tuple(w.shape) == (out.shape[1], d):
        weight = _as_float64(w, "classifier weight", z.device)
    return ClassifierHead(weight, None, module, int(out.shape[1]))


def check_logits(logits, n: int, device: torch.device) -> torch.Tensor:
    """Validate network outputs of shape (N, K_l) without NaN/Inf; returned as float64."""
    L = _as_float64(logits, "logits", device)
    if L.ndim != 2 or L.shape[0] != n:
        raise ValueError(f"logits must have shape (N={n}, K); got {tuple(L.shape)}")
    if L.shape[1] < 2:
        raise ValueError(f"logits must have at least 2 columns; got {L.shape[1]}")
    return L
