"""The :class:`Dataset` every loader returns, and helpers shared by the loaders.

A :class:`Dataset` holds the whole train and test split in memory as tensors (every dataset this
package loads fits comfortably: CIFAR's training set is 600 MB as float32). Batching, shuffling and
device placement are the trainer's business; the dataset only promises dtypes, shapes and label
ranges, which :meth:`Dataset.__post_init__` checks so that a malformed loader fails at construction
rather than deep inside a training loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(eq=False)  # field-wise == would compare tensors; identity is the meaningful equality
class Dataset:
    """A labelled train/test split held in memory.

    Parameters
    ----------
    name : str
        Registry name (``"mnist1d"``, ``"cifar10"``, ...) or, for npz files, ``"npz:<stem>"``.
    x_train, x_test : Tensor, float32, shape (N, *input_shape) and (M, *input_shape)
        Inputs, already normalised as the loader documents (see ``mean``/``std``).
    y_train, y_test : Tensor, int64, shape (N,) and (M,)
        Labels in ``[0, num_classes)``.
    num_classes : int
        Number of classes ``K``.
    input_shape : tuple of int
        Shape of one input, ``x_train.shape[1:]``.
    class_names : list of str
        ``class_names[k]`` names label ``k``; length ``num_classes``.
    augment : callable or None, optional
        Train-time, batch-level augmentation ``augment(x_batch, generator) -> x_batch``: takes a batch
        of *normalised* inputs (shape (B, *input_shape)) and a ``torch.Generator`` and returns a batch of
        the same shape, deterministic given the generator's state. Never apply it to test data.
    mean, std : tuple of float or None, optional
        Per-channel statistics the inputs were standardised with, ``x = (raw - mean) / std``, in the
        raw units the loader documents (CIFAR: pixel values scaled to [0, 1]). ``None`` when the loader
        does not standardise.
    source : str or None, optional
        Where the data came from (a directory, a file, or the generator used).
    info : dict, optional
        Loader-specific metadata (seed, generator settings, label mapping, ...).

    Raises
    ------
    ValueError
        If dtypes, shapes, label ranges or ``class_names`` are inconsistent.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]
    augment: AugmentFn | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(s) for s in self.input_shape)
        self.class_names = [str(c) for c in self.class_names]
        if self.num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class_names for {self.num_classes} classes"
            )
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if x.dtype != torch.float32:
                raise ValueError(f"{self.name}: x_{split} must be float32, got {x.dtype}")
            if y.dtype != torch.int64:
                raise ValueError(f"{self.name}: y_{split} must be int64, got {y.dtype}")
            if tuple(x.shape[1:]) != self.input_shape:
                raise ValueError(
                    f"{self.name}: x_{split} has sample shape {tuple(x.shape[1:])}, "
                    f"input_shape is {self.input_shape}"
                )
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{self.name}: y_{split} has shape {tuple(y.shape)}, expected ({x.shape[0]},)"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(
                    f"{self.name}: y_{split} has labels in [{int(y.min())}, {int(y.max())}], "
                    f"expected [0, {self.num_classes})"
                )

    @property
    def num_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test samples."""
        return int(self.x_test.shape[0])

    def to(self, device: torch.device | str) -> Dataset:
        """Return a copy whose four tensors live on ``device`` (metadata is shared).

        Parameters
        ----------
        device : torch.device or str
            Target device.

        Returns
        -------
        Dataset
        """
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, num_train={self.num_train}, num_test={self.num_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"augment={self.augment!r}, source={self.source!r})"
        )


def check_fraction(test_fraction: float) -> float:
    """Validate a test fraction.

    Parameters
    ----------
    test_fraction : float
        Must lie strictly between 0 and 1.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If it does not.
    """
    test_fraction = float(test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return test_fraction


def stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into train and test, class by class.

    Each class ``c`` with ``n_c`` samples sends ``round(n_c * test_fraction)`` of them (at least one,
    and at most ``n_c - 1``) to the test set, so that every class appears in both splits. Both index
    arrays are returned shuffled.

    Parameters
    ----------
    labels : ndarray of int, shape (N,)
        Class of each sample.
    test_fraction : float
        Fraction of each class that goes to the test set, in (0, 1).
    rng : numpy.random.Generator
        Source of randomness (the split is a deterministic function of its state).

    Returns
    -------
    train_idx, test_idx : ndarray of int64

    Raises
    ------
    ValueError
        If ``test_fraction`` is outside (0, 1) or a class has fewer than two samples.
    """
    test_fraction = check_fraction(test_fraction)
    labels = np.asarray(labels)
    train_parts, test_parts = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < 2:
            raise ValueError(f"class {c} has {idx.size} sample(s); a stratified split needs at least 2")
        idx = rng.permutation(idx)
        n_test = min(max(round(idx.size * test_fraction), 1), idx.size - 1)
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train_idx = rng.permutation(np.concatenate(train_parts)).astype(np.int64)
    test_idx = rng.permutation(np.concatenate(test_parts)).astype(np.int64)
    return train_idx, test_idx


def as_float32(x: np.ndarray) -> torch.Tensor:
    """Copy an array into a contiguous float32 tensor (never aliases the input)."""
    return torch.from_numpy(np.array(x, dtype=np.float32, copy=True, order="C"))


def as_int64(y: np.ndarray) -> torch.Tensor:
    """Copy an array into a contiguous int64 tensor (never aliases the input)."""
    return torch.from_numpy(np.array(y, dtype=np.int64, copy=True, order="C"))
