"""Procedurally generated datasets: MNIST-1D and Gaussian blobs.

Both are generated offline and deterministically from a seed. MNIST-1D (Greydanus, 2020) comes from the
``mnist1d`` package's ``make_dataset``; its ``get_dataset`` is never called because it downloads.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .base import Dataset, as_float32, as_int64, check_fraction, stratified_split

# Generator settings of mnist1d's get_dataset_args() a caller may override through ``generator_args``.
# num_samples, seed and train_split have their own parameters; url is only used by the downloader.
MNIST1D_GENERATOR_KEYS = (
    "template_len",
    "padding",
    "scale_coeff",
    "max_translation",
    "corr_noise_scale",
    "iid_noise_scale",
    "shear_scale",
    "shuffle_seq",
    "final_seq_length",
)


def _freeze(value: Any) -> Any:
    """Make a generator-argument value hashable (``padding`` is a list) for the cache key."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


@functools.lru_cache(maxsize=8)
def _generate_mnist1d(
    num_samples: int, seed: int, train_split: float, overrides: tuple[tuple[str, Any], ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run mnist1d's generator with numpy's and Python's global RNG states restored afterwards.

    Generating 10,000 samples takes several seconds, and sweeps load the same dataset once per run,
    so results are cached; the arrays are made read-only and the loader copies them into tensors.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    args.train_split = train_split
    for key, value in overrides:
        setattr(args, key, list(value) if isinstance(value, tuple) else value)
    # make_dataset calls np.random.seed and random.seed (mnist1d.utils.set_seed) and then draws from
    # the global generators: restore both so that loading data never perturbs the caller's streams.
    np_state = np.random.get_state()  # noqa: NPY002 (saving the legacy global state is the point)
    py_state = random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    arrays = (data["x"], data["y"], data["x_test"], data["y_test"])
    for a in arrays:
        a.setflags(write=False)
    return arrays


def load_mnist1d(
    num_samples: int = 10_000,
    seed: int = 0,
    test_fraction: float = 0.2,
    generator_args: Mapping[str, Any] | None = None,
) -> Dataset:
    """MNIST-1D: ten procedurally generated 1-D "digit" signals of length 40.

    Parameters
    ----------
    num_samples : int, optional
        Total number of samples (train + test). The generator makes ``num_samples // 10`` per class, so
        the total is rounded down to a multiple of 10. Default 10,000: at that size MLPs overfit and CNNs
        reach ~94 % test accuracy; the original benchmark uses 5,000.
    seed : int, optional
        Generator seed; the same seed gives the same samples and split.
    test_fraction : float, optional
        Fraction of the (shuffled) samples held out for testing.
    generator_args : mapping, optional
        Overrides of mnist1d's generation settings; accepted keys are
        :data:`MNIST1D_GENERATOR_KEYS` (e.g. ``{"shuffle_seq": True}`` permutes the 40 positions with a
        fixed permutation, ``{"iid_noise_scale": 0.05}`` adds more noise).

    Returns
    -------
    Dataset
        ``input_shape == (40,)`` (``(final_seq_length,)`` if overridden): flat signals without a channel
        axis; a 1-D CNN adds the channel itself. The generator already centres the whole dataset and
        scales it to unit standard deviation, so no further normalisation is applied
        (``mean``/``std`` are ``None``). No augmentation.

    Raises
    ------
    ValueError
        For ``num_samples < 20``, ``test_fraction`` outside (0, 1), or unknown ``generator_args`` keys.

    Notes
    -----
    ``mnist1d.make_dataset`` reseeds numpy's and Python's global random generators; this loader saves
    and restores both, so calling it has no effect on global random state. Generated arrays are cached
    in-process (8 most recent settings).
    """
    num_samples = int(num_samples)
    if num_samples < 20:
        raise ValueError(f"num_samples must be >= 20 (10 classes, train and test), got {num_samples}")
    test_fraction = check_fraction(test_fraction)
    generator_args = dict(generator_args or {})
    unknown = sorted(set(generator_args) - set(MNIST1D_GENERATOR_KEYS))
    if unknown:
        raise ValueError(
            f"unknown mnist1d generator_args {unknown}; accepted: {list(MNIST1D_GENERATOR_KEYS)}"
        )
    overrides = tuple(sorted((k, _freeze(v)) for k, v in generator_args.items()))
    x, y, x_test, y_test = _generate_mnist1d(num_samples, int(seed), 1.0 - test_fraction, overrides)
    if len(y) == 0 or len(y_test) == 0:
        raise ValueError(
            f"test_fraction={test_fraction} with num_samples={num_samples} leaves an empty split"
        )
    return Dataset(
        name="mnist1d",
        x_train=as_float32(x),
        y_train=as_int64(y),
        x_test=as_float32(x_test),
        y_test=as_int64(y_test),
        num_classes=10,
        input_shape=x.shape[1:],
        class_names=[str(k) for k in range(10)],
        source="mnist1d.data.make_dataset",
        info={"seed": int(seed), "num_samples": num_samples, "generator_args": generator_args},
    )


def make_blobs(
    num_classes: int = 10,
    dim: int = 32,
    num_samples: int = 4_000,
    separation: float = 4.0,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    """Isotropic Gaussian clusters, one per class.

    Class ``k`` has centre ``mu_k = separation * u_k`` with ``u_k`` an independent uniformly random unit
    vector in ``R^dim``, and samples ``x = mu_k + eps``, ``eps ~ N(0, I_dim)``. In high dimension random
    unit vectors are nearly orthogonal, so centres sit ``~ sqrt(2) * separation`` apart and the Bayes
    error falls quickly as ``separation`` grows (``separation`` is in units of the noise standard
    deviation).

    Parameters
    ----------
    num_classes : int, optional
        Number of clusters ``K`` (>= 2).
    dim : int, optional
        Input dimension ``d`` (>= 1).
    num_samples : int, optional
        Total samples (train + test); classes are balanced to within one sample.
    separation : float, optional
        Norm of every class centre (>= 0).
    seed : int, optional
        Seed for centres, noise and split.
    test_fraction : float, optional
        Fraction of each class held out for testing.

    Returns
    -------
    Dataset
        ``input_shape == (dim,)``, unnormalised; ``info["centers"]`` holds the (K, d) centres.

    Raises
    ------
    ValueError
        For invalid sizes, a negative separation or ``num_samples < 2 * num_classes``.
    """
    num_classes, dim, num_samples = int(num_classes), int(dim), int(num_samples)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if num_samples < 2 * num_classes:
        raise ValueError(
            f"num_samples must be >= 2 * num_classes = {2 * num_classes} (every class in both splits), "
            f"got {num_samples}"
        )
    separation = float(separation)
    if not separation >= 0.0:
        raise ValueError(f"separation must be >= 0, got {separation}")
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((num_classes, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    centers = separation * directions
    labels = np.arange(num_samples) % num_classes
    x = centers[labels] + rng.standard_normal((num_samples, dim))
    train_idx, test_idx = stratified_split(labels, test_fraction, rng)
    return Dataset(
        name="blobs",
        x_train=as_float32(x[train_idx]),
        y_train=as_int64(labels[train_idx]),
        x_test=as_float32(x[test_idx]),
        y_test=as_int64(labels[test_idx]),
        num_classes=num_classes,
        input_shape=(dim,),
        class_names=[f"blob{k}" for k in range(num_classes)],
        source="gaussian blobs",
        info={"seed": int(seed), "separation": separation, "centers": torch.from_numpy(centers).float()},
    )
