"""Tests for lpc_geom.data: loaders, formats, error messages and augmentation.

CIFAR and npz files are written here, in the real formats, with a handful of samples each.
"""

from __future__ import annotations

import inspect
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lpc_geom.data import (
    DATASETS,
    MNIST1D_GENERATOR_KEYS,
    Dataset,
    RandomCropFlip,
    load_cifar,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_digits,
    load_mnist1d,
    load_npz,
    make_blobs,
    random_crop_flip,
    stratified_split,
)
from lpc_geom.data import synthetic as synthetic_module

# ----------------------------------------------------------------------------------------------------
# Writers for the real CIFAR python-pickle format


def _dump(path: Path, obj, protocol: int = 2) -> None:
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)


def write_cifar10(root: Path, n: int = 6, seed: int = 0) -> Path:
    """Write data_batch_1..5, test_batch and batches.meta with ``n`` images each; return the batch dir."""
    rng = np.random.default_rng(seed)
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _dump(
            directory / name,
            {
                b"batch_label": name.encode(),
                b"labels": [int(v) for v in rng.integers(0, 10, n)],
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"filenames": [f"img{i}.png".encode() for i in range(n)],
            },
        )
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(directory / "batches.meta", {b"label_names": names, b"num_vis": 3072, b"num_cases_per_batch": n})
    return directory


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        _dump(
            directory / name,
            {
                b"filenames": [b"x.png"] * n,
                b"batch_label": name.encode(),
                b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                b"coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            },
        )
    _dump(
        directory / "meta",
        {
            b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)],
        },
    )
    return directory


def _raw(batch_file: Path) -> dict:
    with batch_file.open("rb") as handle:
        return pickle.load(handle, encoding="bytes")


# ----------------------------------------------------------------------------------------------------
# CIFAR


def test_cifar10_loads_with_shapes_dtypes_and_names(tmp_path):
    write_cifar10(tmp_path, n=6)
    ds = load_cifar10(tmp_path)
    assert isinstance(ds, Dataset)
    assert ds.name == "cifar10"
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.y_test.dtype == torch.int64 and ds.y_train.shape == (30,)
    assert ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
    assert ds.num_train == 30 and ds.num_test == 6
    assert isinstance(ds.augment, RandomCropFlip)
    assert load_cifar10(tmp_path, augment=False).augment is None


def test_cifar10_labels_and_pixel_layout_follow_the_files(tmp_path):
    directory = write_cifar10(tmp_path, n=4)
    ds = load_cifar10(directory)  # root pointing at the batch directory itself
    labels = np.concatenate([_raw(directory / f"data_batch_{i}")[b"labels"] for i in range(1, 6)])
    assert torch.equal(ds.y_train, torch.from_numpy(labels).long())
    assert torch.equal(ds.y_test, torch.tensor(_raw(directory / "test_batch")[b"labels"]))
    # Each row is the R, G, B 32x32 planes in row-major order: undo the normalisation and compare.
    raw = _raw(directory / "test_batch")[b"data"].reshape(-1, 3, 32, 32).astype(np.float64)
    mean = np.asarray(ds.mean)[:, None, None]
    std = np.asarray(ds.std)[:, None, None]
    recovered = (ds.x_test.double().numpy() * std + mean) * 255.0
    np.testing.assert_allclose(recovered, raw, atol=1e-3)


def test_cifar_normalisation_uses_training_statistics(tmp_path):
    directory = write_cifar10(tmp_path, n=8)
    ds = load_cifar10(tmp_path)
    per_channel = ds.x_train.transpose(0, 1).reshape(3, -1).double()
    np.testing.assert_allclose(per_channel.mean(1).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(per_channel.std(1, correction=0).numpy(), 1.0, atol=1e-5)
    train = np.concatenate([_raw(directory / f"data_batch_{i}")[b"data"] for i in range(1, 6)])
    planes = train.reshape(-1, 3, 1024).astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.mean, planes.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(ds.std, planes.std(axis=(0, 2)), rtol=1e-10)
    assert len(ds.mean) == 3 and len(ds.std) == 3


def test_cifar100_fine_labels(tmp_path):
    directory = write_cifar100(tmp_path)
    for root in (tmp_path, directory):
        ds = load_cifar100(root)
        assert ds.name == "cifar100" and ds.num_classes == 100 and len(ds.class_names) == 100
        assert ds.class_names[5] == "fine5"
        assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (8, 3, 32, 32)
        assert torch.equal(ds.y_train, torch.tensor(_raw(directory / "train")[b"fine_labels"]))
    via_registry = load_dataset("cifar100", root=tmp_path, augment=False)
    assert via_registry.augment is None and torch.equal(via_registry.x_test, ds.x_test)
    assert torch.equal(load_cifar(tmp_path, num_classes=100).y_test, ds.y_test)


def test_cifar_reads_files_pickled_by_numpy_2_with_current_protocol(tmp_path):
    directory = write_cifar10(tmp_path, n=3)
    for name in ["data_batch_1", "test_batch"]:
        _dump(directory / name, _raw(directory / name), protocol=pickle.HIGHEST_PROTOCOL)
    assert load_cifar10(tmp_path).num_train == 15


def test_cifar_missing_root_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*cifar-10-batches-py.*data_batch_1"):
        load_cifar10(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"missing \['data_batch_1'.*'batches.meta'\]"):
        load_cifar10(tmp_path)  # empty directory: everything is missing
    directory = write_cifar10(tmp_path, n=2)
    (directory / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert "missing ['data_batch_3']" in message
    assert "cifar-10-batches-py/{data_batch_1, data_batch_2" in message and "test_batch" in message
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/\{train, test, meta\}"):
        load_cifar100(tmp_path)


@pytest.mark.parametrize(
    "corrupt, pattern",
    [
        (lambda b: b.update({b"data": b[b"data"][:, :3000]}), r"shape \(2, 3000\)"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), "uint8"),
        (lambda b: b.update({b"labels": [0, 10]}), r"values in \[0, 10\]"),
        (lambda b: b.update({b"labels": [0, -1]}), r"values in \[-1, 0\]"),
        (lambda b: b.update({b"labels": [0]}), "must be 2 integers"),
        (lambda b: b.update({b"labels": [0.5, 1.0]}), "must be 2 integers"),
        (lambda b: b.pop(b"labels"), r"missing key\(s\) \['labels'\]"),
    ],
)
def test_cifar_corrupt_batch_raises_value_error_naming_file(tmp_path, corrupt, pattern):
    directory = write_cifar10(tmp_path, n=2)
    batch = _raw(directory / "data_batch_4")
    corrupt(batch)
    _dump(directory / "data_batch_4", batch)
    with pytest.raises(ValueError, match=pattern) as info:
        load_cifar10(tmp_path)
    assert "data_batch_4" in str(info.value)


def test_cifar_unreadable_or_hostile_pickles_raise(tmp_path):
    directory = write_cifar10(tmp_path, n=2)
    content = (directory / "test_batch").read_bytes()
    (directory / "test_batch").write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match="test_batch: not a readable CIFAR"):
        load_cifar10(tmp_path)

    marker = tmp_path / "executed"

    class Hostile:
        def __reduce__(self):
            return (Path.touch, (marker,))

    _dump(directory / "test_batch", {b"data": Hostile()}, protocol=4)
    with pytest.raises(ValueError, match=r"test_batch.*not allowed"):
        load_cifar10(tmp_path)
    assert not marker.exists()
    _dump(directory / "test_batch", [1, 2, 3])
    with pytest.raises(ValueError, match="test_batch: expected a pickled dict"):
        load_cifar10(tmp_path)


def test_cifar_bad_meta_and_num_classes(tmp_path):
    directory = write_cifar10(tmp_path, n=2)
    _dump(directory / "batches.meta", {b"label_names": [b"a", b"b"]})
    with pytest.raises(ValueError, match=r"batches.meta.*2 entries, expected 10"):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="10 or 100"):
        load_cifar(tmp_path, num_classes=7)


# ----------------------------------------------------------------------------------------------------
# Augmentation


def _batch(b=16, c=3, h=8, w=8, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _all_crops(x, padding, fill=0.0):
    """Every shifted window of ``x``, shape (B, (2p+1)^2, C, H, W)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (padding,) * 4, value=fill)
    size = 2 * padding + 1
    return torch.stack(
        [padded[..., i : i + h, j : j + w] for i in range(size) for j in range(size)], dim=1
    )


def test_augment_keeps_shape_dtype_and_input():
    x = _batch(b=32, h=32, w=32)
    before = x.clone()
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before)


def test_flip_is_an_exact_mirror_and_identity_when_disabled():
    x = _batch()
    g = torch.Generator().manual_seed(1)
    assert torch.equal(random_crop_flip(x, g, padding=0, flip_prob=1.0), x.flip(-1))
    assert torch.equal(random_crop_flip(x, g, padding=0, flip_prob=0.0), x)


def test_flip_probability():
    x = torch.arange(4.0).reshape(1, 1, 1, 4).expand(4000, 1, 1, 4)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0, flip_prob=0.5)
    flipped = (out[:, 0, 0, 0] == 3.0).float().mean().item()
    assert 0.46 < flipped < 0.54


@pytest.mark.parametrize("fill", [0.0, -1.5])
def test_crop_is_a_shift_with_constant_fill(fill):
    padding = 2
    x = _batch(b=64, h=8, w=8)
    out = random_crop_flip(x, torch.Generator().manual_seed(3), padding=padding, flip_prob=0.0, fill=fill)
    crops = _all_crops(x, padding, fill)
    matches = (crops == out[:, None]).flatten(2).all(-1)  # (B, 25)
    assert torch.all(matches.sum(1) == 1), "each output must be exactly one shifted window"
    offsets = matches.float().argmax(1)
    assert offsets.unique().numel() > 10, "offsets should vary across the batch"


def test_crop_and_flip_together_give_a_window_of_the_image_or_its_mirror():
    padding = 4
    x = _batch(b=64, h=32, w=32)
    out = RandomCropFlip(padding=padding)(x, torch.Generator().manual_seed(5))
    crops = torch.cat([_all_crops(x, padding), _all_crops(x.flip(-1), padding)], dim=1)
    matches = (crops == out[:, None]).flatten(2).all(-1)
    assert torch.all(matches.any(1))
    n_windows = (2 * padding + 1) ** 2
    flipped = matches[:, n_windows:].any(1)
    assert 0 < int(flipped.sum()) < 64
    zero_rows = (out == 0).all(-1).all(1).any(-1)  # some image has a whole zero-filled row
    assert zero_rows.any()


def test_augment_is_deterministic_given_the_generator():
    x = _batch(b=32, h=32, w=32)
    a = random_crop_flip(x, torch.Generator().manual_seed(7))
    b = random_crop_flip(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(7)
    first, second = random_crop_flip(x, g), random_crop_flip(x, g)
    assert torch.equal(first, a) and not torch.equal(first, second)
    assert not torch.equal(a, random_crop_flip(x, torch.Generator().manual_seed(8)))
    aug = RandomCropFlip(padding=4, flip_prob=0.5)
    assert torch.equal(aug(x, torch.Generator().manual_seed(7)), a)
    assert pickle.loads(pickle.dumps(aug)) == aug


def test_augment_rejects_bad_arguments():
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_crop_flip(torch.zeros(3, 8, 8), g)
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(torch.zeros(1, 3, 8, 8), g, padding=-1)
    with pytest.raises(ValueError, match="flip_prob"):
        random_crop_flip(torch.zeros(1, 3, 8, 8), g, flip_prob=1.5)
    with pytest.raises(ValueError, match="flip_prob"):
        RandomCropFlip(flip_prob=-0.1)


def test_cifar_dataset_augment_runs_on_a_training_batch(tmp_path):
    write_cifar10(tmp_path, n=4)
    ds = load_cifar10(tmp_path)
    out = ds.augment(ds.x_train[:8], torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 32, 32)
    assert torch.equal(out, ds.augment(ds.x_train[:8], torch.Generator().manual_seed(0)))


# ----------------------------------------------------------------------------------------------------
# MNIST-1D


def test_mnist1d_default_size_and_shapes():
    # Generating the default 10,000 samples takes 4-10 s on two shared cores; the default is checked
    # from the signature and the train/test sizes on 1,000 samples.
    assert inspect.signature(load_mnist1d).parameters["num_samples"].default == 10_000
    ds = load_mnist1d(num_samples=1000)
    assert ds.name == "mnist1d" and ds.input_shape == (40,)
    assert ds.x_train.shape == (800, 40) and ds.x_test.shape == (200, 40)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert set(ds.y_train.unique().tolist()) == set(range(10)) and ds.num_classes == 10
    assert ds.augment is None and ds.mean is None


def test_mnist1d_leaves_global_rng_state_untouched():
    synthetic_module._generate_mnist1d.cache_clear()  # make sure the generator really runs
    np.random.seed(1234)  # noqa: NPY002 (the legacy global state is what is under test)
    random.seed(1234)
    np_state = np.random.get_state()  # noqa: NPY002
    py_state = random.getstate()
    load_mnist1d(num_samples=100, seed=0)
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state


def test_mnist1d_deterministic_per_seed_and_independent_of_cache():
    synthetic_module._generate_mnist1d.cache_clear()
    a = load_mnist1d(num_samples=200, seed=3)
    synthetic_module._generate_mnist1d.cache_clear()
    b = load_mnist1d(num_samples=200, seed=3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.num_train == 160 and a.num_test == 40
    c = load_mnist1d(num_samples=200, seed=4)
    assert not torch.equal(a.x_train, c.x_train)
    b.x_train.zero_()  # a cached result must not alias tensors handed out earlier
    assert torch.equal(load_mnist1d(num_samples=200, seed=3).x_train, a.x_train)
    half = load_mnist1d(num_samples=200, seed=3, test_fraction=0.5)
    assert half.num_train == 100 and half.num_test == 100


def test_mnist1d_generator_args_and_errors():
    shuffled = load_mnist1d(num_samples=100, generator_args={"shuffle_seq": True})
    plain = load_mnist1d(num_samples=100)
    assert shuffled.input_shape == (40,) and not torch.equal(shuffled.x_train, plain.x_train)
    assert set(MNIST1D_GENERATOR_KEYS) >= {"shuffle_seq", "iid_noise_scale"}
    with pytest.raises(ValueError, match=r"unknown mnist1d generator_args \['url'\]; accepted"):
        load_mnist1d(num_samples=100, generator_args={"url": "http://example.invalid"})
    with pytest.raises(ValueError, match="test_fraction"):
        load_mnist1d(num_samples=100, test_fraction=1.0)
    with pytest.raises(ValueError, match="num_samples"):
        load_mnist1d(num_samples=5)


# ----------------------------------------------------------------------------------------------------
# Digits


def test_digits_shapes_standardisation_and_split():
    ds = load_digits()
    assert ds.input_shape == (64,) and ds.x_train.dtype == torch.float32
    assert ds.num_train + ds.num_test == 1797
    assert abs(ds.num_test - 0.25 * 1797) < 10
    assert set(ds.y_test.unique().tolist()) == set(range(10))
    assert abs(ds.x_train.mean().item()) < 1e-5 and abs(ds.x_train.std(correction=0).item() - 1) < 1e-5
    assert 0.0 < ds.mean[0] < 1.0 and len(ds.std) == 1
    images = load_digits(flatten=False)
    assert images.input_shape == (1, 8, 8)
    assert torch.equal(images.x_train.reshape(-1, 64), ds.x_train)


def test_digits_deterministic_per_seed():
    a, b, c = load_digits(seed=1), load_digits(seed=1), load_digits(seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.y_train, c.y_train)


# ----------------------------------------------------------------------------------------------------
# Blobs


def _nearest_centroid_accuracy(ds: Dataset) -> float:
    centroids = torch.stack([ds.x_train[ds.y_train == k].mean(0) for k in range(ds.num_classes)])
    predictions = torch.cdist(ds.x_test, centroids).argmin(1)
    return (predictions == ds.y_test).float().mean().item()


def test_blobs_shapes_balance_and_centres():
    ds = make_blobs(num_classes=5, dim=7, num_samples=500, separation=3.0, seed=0)
    assert ds.input_shape == (7,) and ds.num_classes == 5
    assert ds.num_train == 400 and ds.num_test == 100
    assert torch.bincount(ds.y_test).tolist() == [20] * 5
    norms = ds.info["centers"].norm(dim=1)
    torch.testing.assert_close(norms, torch.full((5,), 3.0))
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64


def test_blobs_deterministic_per_seed():
    a, b = make_blobs(num_samples=300, seed=5), make_blobs(num_samples=300, seed=5)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, make_blobs(num_samples=300, seed=6).x_train)


def test_blobs_separation_controls_difficulty():
    accuracies = [
        _nearest_centroid_accuracy(make_blobs(num_samples=2000, separation=s, seed=0)) for s in (0.0, 1.0, 2.0, 5.0)
    ]
    assert accuracies[0] < 0.2  # no signal: chance level is 0.1
    assert accuracies[0] < accuracies[1] < accuracies[2] < accuracies[3]
    assert accuracies[3] > 0.97


def test_blobs_rejects_bad_arguments():
    with pytest.raises(ValueError, match="separation"):
        make_blobs(separation=-1.0)
    with pytest.raises(ValueError, match="num_samples"):
        make_blobs(num_classes=10, num_samples=15)
    with pytest.raises(ValueError, match="num_classes"):
        make_blobs(num_classes=1)


# ----------------------------------------------------------------------------------------------------
# npz


def _write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _valid_arrays(rng, shape=(5,), labels=(0, 1, 2)):
    labels = np.asarray(labels)
    return {
        "x_train": rng.standard_normal((30, *shape)),
        "y_train": labels[np.arange(30) % len(labels)],
        "x_test": rng.standard_normal((9, *shape)),
        "y_test": labels[np.arange(9) % len(labels)],
    }


def test_npz_loads(tmp_path, rng):
    arrays = _valid_arrays(rng)
    path = _write_npz(tmp_path / "toy.npz", **arrays)
    ds = load_npz(path)
    assert ds.name == "npz:toy" and ds.source == str(path.resolve())
    assert ds.x_train.shape == (30, 5) and ds.x_train.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64 and ds.num_classes == 3 and ds.class_names == ["0", "1", "2"]
    np.testing.assert_allclose(ds.x_test.numpy(), arrays["x_test"].astype(np.float32))
    assert torch.equal(ds.y_test, torch.from_numpy(arrays["y_test"]))
    assert load_dataset("npz", path=str(path), name="custom").name == "custom"


def test_npz_remaps_arbitrary_integer_labels(tmp_path, rng):
    arrays = _valid_arrays(rng, labels=(9, 3, 7))
    ds = load_npz(_write_npz(tmp_path / "remap.npz", **arrays))
    assert ds.num_classes == 3 and ds.class_names == ["3", "7", "9"]
    assert ds.info["label_values"] == [3, 7, 9]
    original = np.asarray(ds.info["label_values"])[ds.y_train.numpy()]
    np.testing.assert_array_equal(original, arrays["y_train"])


def test_npz_float_integral_labels_images_and_class_names(tmp_path, rng):
    arrays = _valid_arrays(rng, shape=(1, 4, 4))
    arrays["y_train"] = arrays["y_train"].astype(np.float64)
    ds = load_npz(_write_npz(tmp_path / "img.npz", **arrays, class_names=np.array(["a", "b", "c", "d"])))
    assert ds.input_shape == (1, 4, 4) and ds.x_test.shape == (9, 1, 4, 4)
    assert ds.num_classes == 4 and ds.class_names == ["a", "b", "c", "d"]  # class "d" has no samples
    assert torch.equal(ds.y_train, torch.from_numpy(arrays["y_train"]).long())


def _corrupt(rng, key, value):
    arrays = _valid_arrays(rng)
    arrays[key] = value
    return arrays


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda r: {k: v for k, v in _valid_arrays(r).items() if k != "y_test"},
         r"missing key\(s\) \['y_test'\].*required keys are \['x_train', 'y_train', 'x_test', 'y_test'\]"),
        (lambda r: {**_valid_arrays(r), "extra": np.zeros(3)}, r"unknown key\(s\) \['extra'\]"),
        (lambda r: _corrupt(r, "y_train", np.zeros(29, dtype=int)), "has 29 labels but 'x_train' has 30"),
        (lambda r: _corrupt(r, "x_train", np.full((30, 5), np.nan)), "'x_train' has 150 non-finite"),
        (lambda r: _corrupt(r, "x_test", np.array([[np.inf] * 5] + [[0.0] * 5] * 8)), "'x_test' has 5 non"),
        (lambda r: _corrupt(r, "x_test", np.full((9, 5), 1e300)), "'x_test' has 45 non-finite"),
        (lambda r: _corrupt(r, "y_train", np.full(30, 0.5)), "'y_train' has non-integer label"),
        (lambda r: _corrupt(r, "y_test", np.array(["a"] * 9)), "'y_test' must hold integer labels"),
        (lambda r: _corrupt(r, "y_test", np.zeros((9, 1), dtype=int)), "'y_test' must be 1-D"),
        (lambda r: _corrupt(r, "x_test", np.zeros((9, 6))), r"x_train samples have shape \(5,\) but x_test"),
        (lambda r: _corrupt(r, "x_train", np.zeros(30)), "'x_train' must have shape"),
        (lambda r: _corrupt(r, "x_train", np.array(["a"] * 30).reshape(30, 1)), "must hold real numbers"),
        (lambda r: _corrupt(r, "x_test", np.zeros((0, 5))), "must both be non-empty"),
        (lambda r: {**_valid_arrays(r), "class_names": np.array(["a", "b"])},
         r"'y_train' has labels in \[0, 2\] but 'class_names' defines 2 classes"),
        (lambda r: {**_valid_arrays(r), "class_names": np.arange(3)}, "'class_names' must be a non-empty"),
    ],
)
def test_npz_invalid_content_raises_value_error_naming_file(tmp_path, rng, make, pattern):
    path = _write_npz(tmp_path / "bad_file.npz", **make(rng))
    with pytest.raises(ValueError, match=pattern) as info:
        load_npz(path)
    assert "bad_file.npz" in str(info.value)


def test_npz_unreadable_files(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        load_npz(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(ValueError, match=r"garbage\.npz: not a readable"):
        load_npz(garbage)
    single = tmp_path / "single.npz"
    with single.open("wb") as handle:
        np.save(handle, np.zeros(3))
    with pytest.raises(ValueError, match=r"single\.npz: expected an \.npz archive"):
        load_npz(single)
    objects = _valid_arrays(rng)
    objects["y_train"] = np.array([{"label": 1}] * 30, dtype=object)
    path = _write_npz(tmp_path / "objects.npz", **objects)
    with pytest.raises(ValueError, match=r"objects.npz: cannot read array 'y_train'"):
        load_npz(path)


# ----------------------------------------------------------------------------------------------------
# Registry and Dataset


def test_registry_names_and_option_errors(tmp_path):
    assert set(DATASETS) == {"mnist1d", "digits", "blobs", "classification", "spirals", "cifar10", "cifar100", "npz"}
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; accepted: \['blobs', 'cifar10'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['epochs'\].*accepted: \['num_classes'"):
        load_dataset("blobs", epochs=3)
    with pytest.raises(ValueError, match=r"requires option\(s\) \['root'\]"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match=r"requires option\(s\) \['path'\]"):
        load_dataset("npz")
    ds = load_dataset("Blobs", num_classes=3, dim=4, num_samples=60)
    assert ds.name == "blobs" and ds.input_shape == (4,)
    assert load_dataset("mnist1d", num_samples=100).input_shape == (40,)
    assert load_dataset("digits", flatten=False).input_shape == (1, 8, 8)
    write_cifar10(tmp_path, n=2)
    assert load_dataset("cifar10", root=tmp_path).num_train == 10


def test_dataset_validates_its_fields():
    x, y = torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])
    ok = Dataset("toy", x, y, x.clone(), y.clone(), 2, (3,), ["a", "b"])
    assert "num_train=4" in repr(ok) and ok.to("cpu").x_train.shape == (4, 3)
    with pytest.raises(ValueError, match="float32"):
        Dataset("toy", x.double(), y, x, y, 2, (3,), ["a", "b"])
    with pytest.raises(ValueError, match="int64"):
        Dataset("toy", x, y.int(), x, y, 2, (3,), ["a", "b"])
    with pytest.raises(ValueError, match=r"labels in \[0, 1\], expected \[0, 1\)"):
        Dataset("toy", x, y, x, y, 1, (3,), ["a"])
    with pytest.raises(ValueError, match="class_names"):
        Dataset("toy", x, y, x, y, 2, (3,), ["a"])
    with pytest.raises(ValueError, match="input_shape"):
        Dataset("toy", x, y, x, y, 2, (4,), ["a", "b"])
    with pytest.raises(ValueError, match="y_test has shape"):
        Dataset("toy", x, y, x, y[:3], 2, (3,), ["a", "b"])


def test_stratified_split_keeps_every_class_in_both_splits():
    labels = np.repeat(np.arange(4), [2, 5, 10, 40])
    train, test = stratified_split(labels, 0.2, np.random.default_rng(0))
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(labels)
    assert set(labels[train]) == set(labels[test]) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="at least 2"):
        stratified_split(np.array([0, 1, 1]), 0.5, np.random.default_rng(0))
