"""Datasets for lpc_geom: a registry of loaders that all return a :class:`Dataset`.

* ``"mnist1d"``: :func:`load_mnist1d`, generated offline; ``input_shape == (40,)``.
* ``"digits"``: :func:`load_digits`, bundled with scikit-learn; ``(64,)``, or ``(1, 8, 8)`` with
  ``flatten=False``.
* ``"blobs"``: :func:`make_blobs`, Gaussian clusters; ``(dim,)``.
* ``"classification"``: :func:`make_classification`, scikit-learn's hypercube-cluster families (classes,
  noise features, label noise); ``(num_features,)``.
* ``"spirals"``: :func:`make_spirals`, interleaved spiral arms; ``(dim,)``.
* ``"cifar10"`` / ``"cifar100"``: :func:`load_cifar10` / :func:`load_cifar100`, local python-pickle
  batches (``root=``); ``(3, 32, 32)``, with crop + flip augmentation.
* ``"npz"``: :func:`load_npz`, a local ``.npz`` file (``path=``); shape as stored (:func:`save_npz`
  writes one).

Nothing is ever downloaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .augment import RandomCropFlip, random_crop_flip
from .base import Dataset, stratified_split
from .cifar import load_cifar, load_cifar10, load_cifar100
from .digits import load_digits
from .npz import load_npz, save_npz
from .synthetic import MNIST1D_GENERATOR_KEYS, load_mnist1d, make_blobs, make_classification, make_spirals

DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist1d": load_mnist1d,
    "digits": load_digits,
    "blobs": make_blobs,
    "classification": make_classification,
    "spirals": make_spirals,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "npz": load_npz,
}


def load_dataset(name: str, /, **options: Any) -> Dataset:
    """Load a dataset by registry name.

    Parameters
    ----------
    name : str
        One of the keys of :data:`DATASETS` (case-insensitive). Positional-only, so that a loader's own
        ``name`` option (npz) can be passed through ``options``.
    **options
        Keyword arguments of that loader (e.g. ``root=`` for CIFAR, ``path=`` for npz,
        ``num_samples=``/``seed=`` for the generated datasets).

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        If ``name`` is not registered, an option is not accepted by the loader, or a required option
        (``root``, ``path``) is missing; the message lists what is accepted. Loader errors propagate.
    """
    key = str(name).strip().lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {sorted(DATASETS)}")
    loader = DATASETS[key]
    params = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dataset {key!r}; accepted: {list(params)}")
    required = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty]
    missing = [p for p in required if p not in options]
    if missing:
        raise ValueError(f"dataset {key!r} requires option(s) {missing}; accepted: {list(params)}")
    return loader(**options)


__all__ = [
    "DATASETS",
    "MNIST1D_GENERATOR_KEYS",
    "Dataset",
    "RandomCropFlip",
    "load_cifar",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_mnist1d",
    "load_npz",
    "make_blobs",
    "make_classification",
    "make_spirals",
    "random_crop_flip",
    "save_npz",
    "stratified_split",
]
