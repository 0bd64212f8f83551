"""Procedurally generated datasets: MNIST-1D, Gaussian blobs, sklearn classification families, spirals.

All are generated offline and deterministically from a seed. MNIST-1D (Greydanus, 2020) comes from the
``mnist1d`` package's ``make_dataset``; its ``get_dataset`` is never called because it downloads.
"""

from __future__ import annotations

import functools
import math
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
    return _split_dataset(
        "blobs", x, labels, train_idx, test_idx, [f"blob{k}" for k in range(num_classes)],
        source="gaussian blobs",
        info={"seed": int(seed), "separation": separation, "centers": torch.from_numpy(centers).float()},
    )


def _split_dataset(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    class_names: list[str],
    **fields: Any,
) -> Dataset:
    """The :class:`Dataset` of rows ``train_idx`` / ``test_idx`` of in-memory arrays.

    Parameters
    ----------
    name : str
        Registry name of the dataset.
    x : ndarray, shape (N, *input_shape)
        Inputs, already normalised; copied into float32 tensors.
    y : ndarray of int, shape (N,)
        Labels in ``[0, len(class_names))``; copied into int64 tensors.
    train_idx, test_idx : ndarray of int
        Rows of the two splits (e.g. from :func:`~lpc_geom.data.base.stratified_split`).
    class_names : list of str
        One name per class; their number is ``num_classes``.
    **fields
        The remaining :class:`Dataset` fields (``source``, ``info``, ``mean``, ``std``, ...).

    Returns
    -------
    Dataset
        ``input_shape == x.shape[1:]``.
    """
    return Dataset(
        name=name,
        x_train=as_float32(x[train_idx]),
        y_train=as_int64(y[train_idx]),
        x_test=as_float32(x[test_idx]),
        y_test=as_int64(y[test_idx]),
        num_classes=len(class_names),
        input_shape=x.shape[1:],
        class_names=class_names,
        **fields,
    )


def _standardised_split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    test_fraction: float,
    rng: np.random.Generator,
    class_names: list[str],
    source: str,
    info: dict[str, Any],
) -> Dataset:
    """Stratified split, then ``(x - mean) / std`` per feature with the training rows' statistics.

    A constant feature keeps std 1. The statistics are appended to ``info`` as ``"feature_mean"`` and
    ``"feature_std"`` (lists); the dataset's ``mean``/``std`` stay ``None``.
    """
    train_idx, test_idx = stratified_split(y, test_fraction, rng)
    mean = x[train_idx].mean(axis=0)
    std = x[train_idx].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return _split_dataset(
        name, (x - mean) / std, y, train_idx, test_idx, class_names, source=source,
        info={**info, "feature_mean": mean.tolist(), "feature_std": std.tolist()},
    )


def make_classification(
    num_classes: int = 5,
    num_features: int = 20,
    num_informative: int = 10,
    num_samples: int = 3_000,
    clusters_per_class: int = 2,
    class_sep: float = 1.0,
    flip_y: float = 0.01,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    """A family of tabular problems from ``sklearn.datasets.make_classification`` (Guyon's Madelon design).

    Each class is a union of ``clusters_per_class`` Gaussian clusters centred on vertices of a hypercube
    of side ``2 * class_sep`` in the ``num_informative``-dimensional informative subspace; then
    ``min(num_informative, num_features - num_informative) // 2`` redundant features (random linear
    combinations of the informative ones) and independent standard-normal noise features fill the
    ``num_features`` columns, which are shuffled. ``flip_y`` is the fraction of labels replaced by a
    uniformly random class (label noise; it bounds the achievable accuracy near ``1 - flip_y (K-1)/K``).
    Features are standardised with the training split's per-feature mean and standard deviation.

    Parameters
    ----------
    num_classes : int, optional
        Number of classes ``K`` (>= 2); ``K * clusters_per_class <= 2 ** num_informative``.
    num_features : int, optional
        Input dimension (>= ``num_informative``).
    num_informative : int, optional
        Dimension of the subspace the classes differ in (>= 1).
    num_samples : int, optional
        Total samples (train + test), >= ``2 * num_classes``.
    clusters_per_class : int, optional
        Gaussian clusters per class (>= 1): more clusters, a less linear problem.
    class_sep : float, optional
        Half the hypercube side (> 0): smaller is harder.
    flip_y : float, optional
        Fraction of labels randomised, in [0, 1).
    seed : int, optional
        Seed of the generator and of the stratified split.
    test_fraction : float, optional
        Fraction of each class held out for testing.

    Returns
    -------
    Dataset
        ``name == "classification"``, ``input_shape == (num_features,)``; ``mean``/``std`` are ``None``
        (per-feature statistics are in ``info["feature_mean"]`` / ``info["feature_std"]``).

    Raises
    ------
    ValueError
        For sizes or ranges outside the above, naming the option.
    """
    from sklearn.datasets import make_classification as _sk_make_classification

    num_classes, num_features, num_informative = int(num_classes), int(num_features), int(num_informative)
    num_samples, clusters_per_class = int(num_samples), int(clusters_per_class)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 1 <= num_informative <= num_features:
        raise ValueError(f"need 1 <= num_informative <= num_features, got num_informative={num_informative}, "
                         f"num_features={num_features}")
    if clusters_per_class < 1 or num_classes * clusters_per_class > 2**num_informative:
        raise ValueError(f"need clusters_per_class >= 1 and num_classes * clusters_per_class <= "
                         f"2 ** num_informative = {2**num_informative}, got {num_classes} * {clusters_per_class}")
    if num_samples < 2 * num_classes:
        raise ValueError(f"num_samples must be >= 2 * num_classes = {2 * num_classes}, got {num_samples}")
    class_sep, flip_y = float(class_sep), float(flip_y)
    if not class_sep > 0.0:
        raise ValueError(f"class_sep must be > 0, got {class_sep}")
    if not 0.0 <= flip_y < 1.0:
        raise ValueError(f"flip_y must be in [0, 1), got {flip_y}")
    test_fraction = check_fraction(test_fraction)
    redundant = min(num_informative, num_features - num_informative) // 2
    x, y = _sk_make_classification(
        n_samples=num_samples, n_features=num_features, n_informative=num_informative, n_redundant=redundant,
        n_repeated=0, n_classes=num_classes, n_clusters_per_class=clusters_per_class, flip_y=flip_y,
        class_sep=class_sep, shuffle=True, random_state=int(seed) % 2**32)
    return _standardised_split(
        "classification", x, y, test_fraction, np.random.default_rng(seed),
        [f"class{k}" for k in range(num_classes)], "sklearn.datasets.make_classification",
        {"seed": int(seed), "num_informative": num_informative, "num_redundant": redundant,
         "clusters_per_class": clusters_per_class, "class_sep": class_sep, "flip_y": flip_y},
    )


def make_spirals(
    num_classes: int = 3,
    num_samples: int = 3_000,
    turns: float = 1.5,
    noise: float = 0.15,
    dim: int = 2,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    r"""Interleaved Archimedean spirals, one arm per class, optionally embedded in more dimensions.

    A sample of class ``k`` at position :math:`t \sim U(0, 1)` along its arm is
    :math:`r (\cos\theta, \sin\theta) + \epsilon` with :math:`r = t`, :math:`\theta = 2\pi (\mathrm{turns}
    \cdot t + k / K)` and :math:`\epsilon \sim N(0, \mathrm{noise}^2 I_2)`: the arms wind around the origin
    and interleave, so no linear or radial rule separates them, and they touch near the centre (where
    ``noise`` exceeds the gap between arms), which bounds the achievable accuracy. With ``dim > 2`` the
    plane is mapped into :math:`\mathbb{R}^{dim}` by a random orthonormal ``(2, dim)`` matrix and every
    coordinate gets independent :math:`N(0, \mathrm{noise}^2)` noise. Inputs are standardised per feature
    with the training split's statistics.

    Parameters
    ----------
    num_classes : int, optional
        Number of arms ``K`` (>= 2).
    num_samples : int, optional
        Total samples (train + test), >= ``2 * num_classes``; classes are balanced to within one sample.
    turns : float, optional
        Revolutions of each arm (> 0): more turns, a harder problem.
    noise : float, optional
        Standard deviation of the Gaussian noise (>= 0), in units of the outer radius.
    dim : int, optional
        Input dimension (>= 2).
    seed : int, optional
        Seed of the positions, noise, embedding and split.
    test_fraction : float, optional
        Fraction of each class held out for testing.

    Returns
    -------
    Dataset
        ``name == "spirals"``, ``input_shape == (dim,)``; the per-feature statistics are in
        ``info["feature_mean"]`` / ``info["feature_std"]``.

    Raises
    ------
    ValueError
        For sizes or ranges outside the above, naming the option.
    """
    num_classes, num_samples, dim = int(num_classes), int(num_samples), int(dim)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if num_samples < 2 * num_classes:
        raise ValueError(f"num_samples must be >= 2 * num_classes = {2 * num_classes}, got {num_samples}")
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    turns, noise = float(turns), float(noise)
    if not (turns > 0.0 and math.isfinite(turns)):
        raise ValueError(f"turns must be a finite number > 0, got {turns}")
    if not (noise >= 0.0 and math.isfinite(noise)):
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    test_fraction = check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    labels = np.arange(num_samples) % num_classes
    t = rng.uniform(0.0, 1.0, num_samples)
    theta = 2.0 * np.pi * (turns * t + labels / num_classes)
    plane = t[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    if dim == 2:
        x = plane + noise * rng.standard_normal((num_samples, 2))
    else:
        basis, _ = np.linalg.qr(rng.standard_normal((dim, 2)))  # (dim, 2), orthonormal columns
        x = plane @ basis.T + noise * rng.standard_normal((num_samples, dim))
    return _standardised_split(
        "spirals", x, labels, test_fraction, rng, [f"arm{k}" for k in range(num_classes)],
        "interleaved spirals", {"seed": int(seed), "turns": turns, "noise": noise, "dim": dim},
    )
