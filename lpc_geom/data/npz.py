"""Any labelled dataset stored as a NumPy ``.npz`` archive.

The archive holds four arrays, ``x_train`` (N, *shape), ``y_train`` (N,), ``x_test`` (M, *shape) and
``y_test`` (M,), and optionally ``class_names`` (K,) strings. It is opened with ``allow_pickle=False``,
so object arrays are rejected and loading never runs code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .base import Dataset, as_float32, as_int64

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_KEYS = ("class_names",)


def _check_inputs(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool):
        raise ValueError(f"{path}: '{key}' must hold real numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{path}: '{key}' must have shape (num_samples, *input_shape), got {x.shape}")
    # Checked after the cast: float64 values beyond float32's range become inf there (the overflow is
    # reported below as a ValueError, so numpy's warning is redundant).
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(x32)))
    if bad:
        raise ValueError(f"{path}: '{key}' has {bad} non-finite value(s) (NaN or inf, after casting to float32)")
    return x32


def _check_labels(path: Path, key: str, y: np.ndarray, num_samples: int, x_key: str) -> np.ndarray:
    if y.ndim != 1:
        raise ValueError(f"{path}: '{key}' must be 1-D (one label per sample), got shape {y.shape}")
    if y.shape[0] != num_samples:
        raise ValueError(f"{path}: '{key}' has {y.shape[0]} labels but '{x_key}' has {num_samples} samples")
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        if np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            return y.astype(np.int64)
        raise ValueError(f"{path}: '{key}' has non-integer label values (dtype {y.dtype})")
    raise ValueError(f"{path}: '{key}' must hold integer labels, got dtype {y.dtype}")


def load_npz(path: str | Path, name: str | None = None) -> Dataset:
    """Load a train/test split from an ``.npz`` archive.

    Inputs are cast to float32 and used as stored (no normalisation, no augmentation).

    Labels may be any integers (integer dtype, or a float dtype holding integral values):

    * without ``class_names`` in the file, the distinct values of ``y_train`` and ``y_test`` together,
      sorted, are remapped to ``0..K-1`` and ``class_names[k]`` is the original value as a string (so
      labels ``{3, 7, 9}`` become ``{0, 1, 2}`` named ``["3", "7", "9"]``); ``info["label_values"]``
      lists the original value of every class;
    * with ``class_names`` (K strings), labels must already lie in ``0..K-1`` and are kept; classes
      without samples are allowed.

    Parameters
    ----------
    path : str or Path
        The ``.npz`` file.
    name : str, optional
        Dataset name; default ``"npz:<file stem>"``.

    Returns
    -------
    Dataset
        ``input_shape == x_train.shape[1:]``.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not an existing file.
    ValueError
        Naming the file, if it is not a readable npz archive, keys are missing or unknown, a member is not a
        NumPy array, an array has
        the wrong dtype or shape, label and sample counts differ, inputs are non-finite, labels are not
        integers, train and test sample shapes differ, or labels fall outside ``class_names``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"npz dataset file {path} does not exist")
    accepted = [*REQUIRED_KEYS, *OPTIONAL_KEYS]
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: expected an .npz archive with keys {accepted}, found a single array")
    with archive:
        keys = set(archive.files)
        missing = [k for k in REQUIRED_KEYS if k not in keys]
        unknown = sorted(keys - set(accepted))
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing key(s) {missing}")
            if unknown:
                problems.append(f"unknown key(s) {unknown}")
            raise ValueError(
                f"{path}: {' and '.join(problems)}; required keys are {list(REQUIRED_KEYS)}, "
                f"optional {list(OPTIONAL_KEYS)}"
            )
        arrays = {}
        for key in sorted(keys):
            try:
                arrays[key] = archive[key]
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                raise ValueError(f"{path}: cannot read array '{key}' ({exc})") from exc
            # numpy hands back a member that is not in .npy format as its raw bytes
            if not isinstance(arrays[key], np.ndarray):
                raise ValueError(f"{path}: member '{key}' is not a NumPy array (.npy), got "
                                 f"{type(arrays[key]).__name__}")

    x_train = _check_inputs(path, "x_train", arrays["x_train"])
    x_test = _check_inputs(path, "x_test", arrays["x_test"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{path}: x_train samples have shape {x_train.shape[1:]} but x_test samples {x_test.shape[1:]}"
        )
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise ValueError(f"{path}: x_train and x_test must both be non-empty, got {x_train.shape[0]} "
                         f"and {x_test.shape[0]} samples")
    y_train = _check_labels(path, "y_train", arrays["y_train"], x_train.shape[0], "x_train")
    y_test = _check_labels(path, "y_test", arrays["y_test"], x_test.shape[0], "x_test")

    info: dict = {}
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US" or names.size == 0:
            raise ValueError(
                f"{path}: 'class_names' must be a non-empty 1-D array of strings, "
                f"got dtype {names.dtype} shape {names.shape}"
            )
        class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names.tolist()]
        num_classes = len(class_names)
        for key, y in (("y_train", y_train), ("y_test", y_test)):
            if y.min() < 0 or y.max() >= num_classes:
                raise ValueError(
                    f"{path}: '{key}' has labels in [{y.min()}, {y.max()}] but 'class_names' defines "
                    f"{num_classes} classes (labels must be 0..{num_classes - 1})"
                )
        info["label_values"] = list(range(num_classes))
    else:
        values = np.unique(np.concatenate([y_train, y_test]))
        num_classes = int(values.size)
        y_train = np.searchsorted(values, y_train)
        y_test = np.searchsorted(values, y_test)
        class_names = [str(int(v)) for v in values]
        info["label_values"] = [int(v) for v in values]

    return Dataset(
        name=name if name is not None else f"npz:{path.stem}",
        x_train=as_float32(x_train),
        y_train=as_int64(y_train),
        x_test=as_float32(x_test),
        y_test=as_int64(y_test),
        num_classes=num_classes,
        input_shape=x_train.shape[1:],
        class_names=class_names,
        source=str(path.resolve()),
        info=info,
    )


def save_npz(dataset: Dataset, path: str | Path) -> Path:
    """Write ``dataset`` as an ``.npz`` archive that :func:`load_npz` reads back.

    The archive holds the four arrays (inputs as float32, labels as int64) and ``class_names``; the
    dataset's augmentation, normalisation statistics and ``info`` are not stored.

    Parameters
    ----------
    dataset : Dataset
    path : str or Path
        Destination (``.npz`` is appended by NumPy when missing); its directory must exist.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    FileNotFoundError
        If the destination's directory does not exist.
    """
    path = Path(path).expanduser()
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {path.parent} does not exist")
    np.savez(path, x_train=dataset.x_train.cpu().numpy(), y_train=dataset.y_train.cpu().numpy(),
             x_test=dataset.x_test.cpu().numpy(), y_test=dataset.y_test.cpu().numpy(),
             class_names=np.asarray(dataset.class_names, dtype=str))
    return path
