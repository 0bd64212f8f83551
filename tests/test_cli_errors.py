"""Every error a user can cause ends the command with one line on stderr and exit code 2 (usage) or 1 (runtime).

Damaged inputs are real files in real formats, and the command runs as a real ``python -m lpc_geom`` process.
"""

import contextlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lpc_geom.cli import describe_error, main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "blobs", "--set", 'dataset_options={"num_classes": 3, "dim": 8, "num_samples": 120}',
        "--set", 'backbone_options={"hidden": [8]}', "--latent-dim", "4", "--epochs", "1", "--no-progress"]


def lpc_geom(*args, prefix=()):
    """Run ``python -m lpc_geom ARGS``; return (exit code, stdout, stderr lines).

    Each process spends seconds importing torch, so variants of one damaged input run in-process
    (:func:`in_process`) and one of them as a real process.
    """
    command = [*prefix, sys.executable, "-m", "lpc_geom", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    return result.returncode, result.stdout, result.stderr.splitlines()


def in_process(*args):
    """``lpc_geom.cli.main(ARGS)`` in this process; the same (exit code, stdout, stderr lines)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        returncode = main(list(args))
    return returncode, out.getvalue(), err.getvalue().splitlines()


def assert_one_line_error(result, command, code, *fragments):
    returncode, _, lines = result
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    assert lines[0].startswith(f"lpc-geom {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert returncode == code, (returncode, lines)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def test_truncated_checkpoint(run_copy):
    checkpoint = run_copy / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    returncode, _, lines = lpc_geom("analyze", str(run_copy))
    assert len(lines) == 1 and "Traceback" not in lines[0] and returncode != 0, lines
    assert lines[0].startswith("lpc-geom analyze: error: ")


def test_latents_npz_missing_a_key(run_copy):
    with np.load(run_copy / "latents.npz") as archive:
        arrays = {key: archive[key] for key in archive.files if key != "test_latents"}
    np.savez(run_copy / "latents.npz", **arrays)
    assert_one_line_error(lpc_geom("analyze", str(run_copy)), "analyze", 2,
                          f"{run_copy / 'latents.npz'}: missing array(s) ['test_latents']")


def test_other_damage_to_a_run_directory(run_copy):
    (run_copy / "history.json").write_bytes(b'[{"epoch": 0,')
    assert_one_line_error(in_process("analyze", str(run_copy)), "analyze", 2,
                          f"{run_copy / 'history.json'}: not loaded: not valid JSON")
    (run_copy / "history.json").write_text("[]")
    with zipfile.ZipFile(run_copy / "latents.npz", "a") as archive:
        archive.writestr("notes.txt", "not an array")
    assert_one_line_error(in_process("analyze", str(run_copy)), "analyze", 2,
                          f"{run_copy / 'latents.npz'}: not loaded: member(s) ['notes.txt'] are not NumPy arrays")
    (run_copy / "latents.npz").write_bytes(b"PK\x03\x04 truncated")
    assert_one_line_error(in_process("analyze", str(run_copy)), "analyze", 2,
                          f"{run_copy / 'latents.npz'}: not loaded: not a readable .npz archive")


@pytest.mark.parametrize(("change", "message", "cli"), [({"bogus": 1}, "unknown key(s) ['bogus']", lpc_geom),
                                                         ({"lr": None}, "lr: expected a number, got null", in_process)])
def test_config_json_with_an_unknown_key_or_null(run_copy, change, message, cli):
    path = run_copy / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    assert_one_line_error(cli("analyze", str(run_copy)), "analyze", 2, f"{path}: ", message)


def _blobs_npz(path, *, x_train):
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in (("y_train", np.arange(20) % 2), ("x_test", rng.normal(size=(10, 4))),
                           ("y_test", np.arange(10) % 2)):
            with archive.open(f"{key}.npy", "w") as handle:
                np.save(handle, value)
        archive.writestr("x_train.npy", x_train)


def test_npz_member_that_is_not_an_array(tmp_path):
    data = tmp_path / "data.npz"
    _blobs_npz(data, x_train=b"these bytes are not in .npy format")
    result = lpc_geom("train", "--dataset", "npz", "--data-root", str(data), "--epochs", "1", "--no-progress",
                      "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "train", 2, f"{data}: member 'x_train' is not a NumPy array (.npy)")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def _cifar10(root, label_names):
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    (directory / "batches.meta").write_bytes(pickle.dumps({b"label_names": label_names}, protocol=2))
    return directory


@pytest.mark.parametrize(("label_names", "cli"), [(10, lpc_geom), ({b"cat": 0}, in_process),
                                                 ([b"cat", 3] * 5, in_process)])
def test_cifar_label_names_of_the_wrong_type(tmp_path, label_names, cli):
    directory = _cifar10(tmp_path, label_names)
    result = cli("train", "--dataset", "cifar10", "--data-root", str(tmp_path), "--backbone", "mlp",
                      "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "train", 2,
                          f"{directory / 'batches.meta'}: 'label_names' must be a list of 10 strings, got ")


def test_out_naming_a_file(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    assert_one_line_error(lpc_geom("train", *TINY, "--out", str(file)), "train", 2,
                          f"--out {file}: is a file, not a directory")
    result = in_process("train", *TINY, "--out", str(file / "run"))
    assert_one_line_error(result, "train", 2)
    assert result[2][0] == f"lpc-geom train: error: --out {file / 'run'}: {file} is a file, not a directory"
    assert file.read_text() == "keep me"


def test_batch_size_one_trains_nothing_so_it_is_refused(tmp_path):
    result = lpc_geom("train", *TINY, "--batch-size", "1", "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "train", 2, "--batch-size: 1 is out of range (must be >= 2)")
    assert not (tmp_path / "run").exists()


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-U", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(os.geteuid() == 0 and not _unshare_works(),
                    reason="root writes into read-only directories and `unshare -U` is unavailable")
@pytest.mark.parametrize("command", [["analyze"], ["robustness", "--samples", "5"]])
def test_read_only_run_directory_is_refused_before_computing(finished_run, command):
    # As root, the command runs as an unmapped user of a new user namespace, to whom the mode bits apply.
    prefix = ["unshare", "-U"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="lpc_geom_ro."))
    try:
        run = Path(shutil.copytree(finished_run, base / "run"))
        for path in (base, *run.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        run.chmod(0o555)
        returncode, stdout, lines = lpc_geom(command[0], str(run), *command[1:], prefix=prefix)
        assert_one_line_error((returncode, stdout, lines), command[0], 1)
        assert lines[0] == f"lpc-geom {command[0]}: error: {run}: cannot write files here: Permission denied"
        assert stdout == ""  # nothing was computed, so nothing was printed
    finally:
        run.chmod(0o755)
        shutil.rmtree(base)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_disk_hidden_in_a_chained_torch_error(tmp_path, monkeypatch):
    # Every torch.save of the run writes to /dev/full, which fails each write with ENOSPC as a full disk does.
    import torch

    save = torch.save

    def save_to_full_disk(obj, f, *args, **kwargs):
        with open("/dev/full", "wb") as full:
            save(obj, full, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_to_full_disk)
    result = in_process("train", *TINY, "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "train", 1)
    assert result[2][0] == f"lpc-geom train: error: {tmp_path / 'run'}: No space left on device [ENOSPC]"


def test_describe_error_finds_the_os_error_behind_a_runtime_error():
    try:
        try:
            raise OSError(28, "No space left on device", "/data/run/checkpoint.pt")
        except OSError as exc:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from exc
    except RuntimeError as exc:
        assert describe_error(exc) == ("/data/run/checkpoint.pt: No space left on device [ENOSPC]", 1)
    try:
        try:
            raise OSError(22, "Invalid argument")
        except OSError as exc:
            raise RuntimeError("PytorchStreamReader failed reading zip archive") from exc
    except RuntimeError as exc:  # not a condition of the machine: the outer message says more
        assert describe_error(exc) == ("RuntimeError: PytorchStreamReader failed reading zip archive", 1)
    assert describe_error(KeyError("test_latents")) == ("missing key 'test_latents'", 2)
    assert describe_error(RuntimeError("line one\n  line two")) == ("RuntimeError: line one line two", 1)
    assert describe_error(ValueError("x.npz: bad")) == ("x.npz: bad", 2)


def test_syntax_error_in_a_config_file_and_debug_traceback(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("epochs = = 3\n")
    assert main(["train", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lpc-geom train: error: {path}: invalid TOML: ")
    assert "line 1, column" in lines[0]
    assert main(["train", str(path), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1] == lines[0]
    assert main(["--debug", "train", str(path)]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "fragment"), [
    (["train", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["train", "--geometry", "hyperbolic"], "argument --geometry: invalid choice: 'hyperbolic' (choose from "
                                            "'euclidean', 'sphere', 'poincare', 'stiefel')"),
    ([], "the following arguments are required: COMMAND"),
])
def test_usage_errors_are_one_line_too(argv, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    lines = capsys.readouterr().err.splitlines()
    assert info.value.code == 2 and len(lines) == 1 and fragment in lines[0]
    assert lines[0].startswith(f"lpc-geom{' ' + argv[0] if argv else ''}: error: ")
