"""Every script in examples/ runs on a tiny setting, so that the examples never rot.

Each example is executed as ``__main__`` (``runpy``, in this process) with the command-line arguments of
:data:`TINY_ARGS`; a new example without an entry there fails :func:`test_every_example_has_a_tiny_setting`.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: Example file -> (tiny command line, text its output must contain).
TINY_ARGS = {
    "analyze_your_latents.py": (["--samples", "300", "--classes", "4", "--dim", "6"], "rotated hypercube"),
    "manifold_head.py": (["--epochs", "2", "--samples", "300", "--width", "16", "--latent-dim", "4"],
                         "Collapse report"),
    "kfac_training.py": (["--epochs", "2", "--samples", "300", "--width", "16"], "final test accuracy"),
    "own_loop.py": (["--epochs", "2"], "Collapse report"),
}


def test_every_example_has_a_tiny_setting():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(TINY_ARGS)


@pytest.mark.parametrize("name", sorted(TINY_ARGS))
def test_example_runs(name, monkeypatch, capsys):
    args, expected = TINY_ARGS[name]
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    assert expected in capsys.readouterr().out


@pytest.mark.parametrize("manifold", ["sphere", "stiefel"])
def test_manifold_head_example_other_manifolds(manifold, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["manifold_head.py", "--manifold", manifold, "--epochs", "1", "--samples",
                                      "200", "--width", "16", "--latent-dim", "4"])
    runpy.run_path(str(EXAMPLES / "manifold_head.py"), run_name="__main__")
    assert "Collapse report" in capsys.readouterr().out
