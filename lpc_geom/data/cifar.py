"""CIFAR-10 and CIFAR-100 from a local copy of the standard python-pickle batches.

Nothing is downloaded. The expected layouts are those of the archives at
https://www.cs.toronto.edu/~kriz/cifar.html ("python version")::

    <root>/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

``root`` may also be the batch directory itself. Each batch is a pickled dict with ``b"data"`` (uint8,
shape (n, 3072), each row the red, green then blue 32x32 planes in row-major order) and ``b"labels"``
(CIFAR-10) or ``b"fine_labels"`` (CIFAR-100).

The batches are read with a restricted unpickler that only resolves the handful of numpy and codec
callables the format needs, so a tampered file fails with a ``ValueError`` instead of running code.
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, TypeVar

import numpy as np
import torch

from .augment import RandomCropFlip
from .base import Dataset, as_int64

try:
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

F = TypeVar("F", bound=Callable)

_IMAGE_SHAPE = (3, 32, 32)
_ROW_SIZE = 3 * 32 * 32

# Globals a pickled dict of numpy arrays and lists may reference. Files written by numpy < 2 name
# numpy.core, by numpy >= 2 numpy._core; protocol-2 pickles from Python 3 encode bytes via _codecs.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
for _module in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS[(f"{_module}.multiarray", "_reconstruct")] = _np_multiarray._reconstruct
    _SAFE_GLOBALS[(f"{_module}.multiarray", "scalar")] = _np_multiarray.scalar
    _SAFE_GLOBALS[(f"{_module}.numeric", "_frombuffer")] = _np_numeric._frombuffer


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR batch"
            ) from None


@dataclass(frozen=True)
class _Layout:
    num_classes: int
    dirname: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)

    def describe(self) -> str:
        return (
            f"expected the python-pickle CIFAR-{self.num_classes} batches laid out as "
            f"<root>/{self.dirname}/{{{', '.join(self.files)}}} (root may also be the "
            f"{self.dirname} directory itself); download and extract the 'python version' archive from "
            "https://www.cs.toronto.edu/~kriz/cifar.html"
        )


_LAYOUTS = {
    10: _Layout(
        num_classes=10,
        dirname="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    100: _Layout(
        num_classes=100,
        dirname="cifar-100-python",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}


def _resolve_directory(root: str | Path, layout: _Layout) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"CIFAR-{layout.num_classes} root {root} does not exist or is not a directory; "
            + layout.describe()
        )
    directory = root / layout.dirname if (root / layout.dirname).is_dir() else root
    missing = [name for name in layout.files if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-{layout.num_classes}: missing {missing} in {directory}; " + layout.describe()
        )
    return directory


def _read_pickle(path: Path) -> dict[str, Any]:
    """Unpickle one batch file; keys are returned as str whether the file stored bytes or str."""
    try:
        with path.open("rb") as handle:
            obj = _RestrictedUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means the file is not a valid batch
        raise ValueError(f"{path}: not a readable CIFAR python-pickle batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _read_batch(path: Path, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle(path)
    missing = [k for k in ("data", layout.label_key) if k not in batch]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; found {sorted(batch)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        desc = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (n, {_ROW_SIZE}), got {desc}")
    if data.shape[1] != _ROW_SIZE:
        raise ValueError(f"{path}: 'data' has shape {data.shape}, expected (n, {_ROW_SIZE})")
    labels = np.asarray(batch[layout.label_key])
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or (
        labels.size and not np.issubdtype(labels.dtype, np.integer)
    ):
        raise ValueError(
            f"{path}: '{layout.label_key}' must be {data.shape[0]} integers (one per row of 'data'), "
            f"got {labels.dtype} array of shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise ValueError(
            f"{path}: '{layout.label_key}' has values in [{labels.min()}, {labels.max()}], "
            f"expected [0, {layout.num_classes})"
        )
    return data, labels.astype(np.int64)


def _read_class_names(path: Path, layout: _Layout) -> list[str]:
    meta = _read_pickle(path)
    if layout.names_key not in meta:
        raise ValueError(f"{path}: missing key '{layout.names_key}'; found {sorted(meta)}")
    raw = meta[layout.names_key]
    if isinstance(raw, np.ndarray) and raw.ndim == 1:
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in raw):
        desc = type(raw).__name__ if not isinstance(raw, (list, tuple)) else (
            f"{type(raw).__name__} holding {sorted({type(n).__name__ for n in raw})}")
        raise ValueError(f"{path}: '{layout.names_key}' must be a list of {layout.num_classes} strings, got {desc}")
    try:
        names = [n.decode("utf-8") if isinstance(n, bytes) else n for n in raw]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: '{layout.names_key}' holds a name that is not UTF-8 ({exc})") from None
    if len(names) != layout.num_classes:
        raise ValueError(
            f"{path}: '{layout.names_key}' has {len(names)} entries, expected {layout.num_classes}"
        )
    return names


def _channel_stats(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of uint8 rows, in [0, 1] units, via a 256-bin histogram.

    Works on the integers, so it needs no float copy of the training set and has no rounding error.
    """
    planes = data.reshape(data.shape[0], 3, -1)
    levels = np.arange(256, dtype=np.float64)
    mean, std = np.empty(3), np.empty(3)
    for c in range(3):
        counts = np.bincount(planes[:, c].ravel(), minlength=256).astype(np.float64)
        n = counts.sum()
        m = (counts @ levels) / n
        var = max((counts @ levels**2) / n - m * m, 0.0)
        mean[c], std[c] = m / 255.0, np.sqrt(var) / 255.0
    return mean, std


def _normalise(data: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(data).view(-1, *_IMAGE_SHAPE).to(torch.float32).div_(255.0)
    x.sub_(torch.from_numpy(mean).float()[:, None, None]).div_(torch.from_numpy(std).float()[:, None, None])
    return x


def load_cifar(root: str | Path, num_classes: int = 10, augment: bool = True) -> Dataset:
    """Load CIFAR-10 or CIFAR-100 (fine labels) from local python-pickle batches.

    Pixels are scaled to [0, 1] and standardised per channel with the training set's mean and standard
    deviation (computed exactly from the files, stored in ``Dataset.mean``/``Dataset.std`` in [0, 1]
    units, applied to train and test alike).

    Parameters
    ----------
    root : str or Path
        Directory containing ``cifar-10-batches-py`` / ``cifar-100-python``, or that directory itself.
    num_classes : {10, 100}, optional
        Which CIFAR.
    augment : bool, optional
        If true, ``Dataset.augment`` is :class:`~lpc_geom.data.augment.RandomCropFlip` (random 32x32
        crop after 4 pixels of zero padding, then a horizontal flip with probability 0.5). It acts on
        normalised batches, so the zero padding is the training set's mean colour rather than black.

    Returns
    -------
    Dataset
        ``input_shape == (3, 32, 32)``; 50,000 / 10,000 samples for the full datasets.

    Raises
    ------
    ValueError
        For ``num_classes`` other than 10 or 100, or a file whose content is not a valid batch
        (unreadable pickle, missing keys, wrong shape or dtype, labels out of range, class names that
        are not a list of strings); the message names the file.
    FileNotFoundError
        If ``root`` or any expected file is missing; the message names what is missing and spells
        out the expected layout.
    """
    if num_classes not in _LAYOUTS:
        raise ValueError(f"num_classes must be 10 or 100 (CIFAR-10 / CIFAR-100), got {num_classes}")
    layout = _LAYOUTS[num_classes]
    directory = _resolve_directory(root, layout)
    parts = [_read_batch(directory / name, layout) for name in layout.train_files]
    train_data = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    test_data, test_labels = _read_batch(directory / layout.test_file, layout)
    class_names = _read_class_names(directory / layout.meta_file, layout)
    if train_data.shape[0] == 0:
        raise ValueError(f"{directory}: the training batches {list(layout.train_files)} hold no samples")
    mean, std = _channel_stats(train_data)
    if np.any(std == 0):
        raise ValueError(
            f"{directory}: a colour channel is constant across the training batches "
            f"{list(layout.train_files)} (std {std.tolist()}); cannot standardise"
        )
    return Dataset(
        name=f"cifar{num_classes}",
        x_train=_normalise(train_data, mean, std),
        y_train=as_int64(train_labels),
        x_test=_normalise(test_data, mean, std),
        y_test=as_int64(test_labels),
        num_classes=num_classes,
        input_shape=_IMAGE_SHAPE,
        class_names=class_names,
        augment=RandomCropFlip(padding=4, flip_prob=0.5, fill=0.0) if augment else None,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        source=str(directory.resolve()),
        info={"label_key": layout.label_key},
    )


# The parameters of the one-CIFAR loaders below, substituted for ``${parameters}`` in their docstrings
# (``string.Template``; ``$dirname`` is the layout's batch directory).
_VARIANT_PARAMETERS = Template("""Parameters
    ----------
    root : str or Path
        Directory containing ``$dirname``, or that directory itself.
    augment : bool, optional
        Attach the random crop + flip training augmentation.

    Returns
    -------
    Dataset""")


def _variant_docs(num_classes: int) -> Callable[[F], F]:
    """Fill a one-CIFAR loader's ``${parameters}`` with :data:`_VARIANT_PARAMETERS` for that layout."""
    parameters = _VARIANT_PARAMETERS.substitute(dirname=_LAYOUTS[num_classes].dirname)

    def decorate(fn: F) -> F:
        fn.__doc__ = Template(fn.__doc__).substitute(parameters=parameters)
        return fn

    return decorate


@_variant_docs(10)
def load_cifar10(root: str | Path, augment: bool = True) -> Dataset:
    """CIFAR-10; see :func:`load_cifar`.

    ${parameters}
    """
    return load_cifar(root, num_classes=10, augment=augment)


@_variant_docs(100)
def load_cifar100(root: str | Path, augment: bool = True) -> Dataset:
    """CIFAR-100 with its 100 fine labels; see :func:`load_cifar`.

    ${parameters}
    """
    return load_cifar(root, num_classes=100, augment=augment)
