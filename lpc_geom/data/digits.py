"""scikit-learn's bundled handwritten digits (1,797 8x8 images, ten classes), available offline."""

from __future__ import annotations

import numpy as np

from .base import Dataset, stratified_split
from .synthetic import _split_dataset


def load_digits(seed: int = 0, test_fraction: float = 0.25, flatten: bool = True) -> Dataset:
    """The UCI optical digits as shipped by ``sklearn.datasets.load_digits``.

    Pixels (integers 0..16) are scaled to [0, 1], then standardised with the training set's mean and
    standard deviation over all pixels (one channel, so one scalar each; a per-pixel statistic would
    divide by zero on the border pixels that are always blank).

    Parameters
    ----------
    seed : int, optional
        Seed of the stratified train/test split.
    test_fraction : float, optional
        Fraction of each class held out for testing.
    flatten : bool, optional
        ``True`` (default): inputs are flat vectors, ``input_shape == (64,)``, ready for an MLP.
        ``False``: single-channel images, ``input_shape == (1, 8, 8)``, for a 2-D CNN.

    Returns
    -------
    Dataset
        ``mean``/``std`` are one-element tuples in [0, 1] pixel units. No augmentation.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(y, test_fraction, np.random.default_rng(seed))
    mean = float(x[train_idx].mean())
    std = float(x[train_idx].std())
    x = (x - mean) / std
    shape = (64,) if flatten else (1, 8, 8)
    x = x.reshape((-1, *shape))
    return _split_dataset(
        "digits", x, y, train_idx, test_idx, [str(k) for k in range(10)],
        mean=(mean,),
        std=(std,),
        source="sklearn.datasets.load_digits",
        info={"seed": int(seed), "flatten": bool(flatten)},
    )
