"""benchmarks/validate_default.py: a real --quick run on tiny data writes the table, the CSV and the fragment."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from lpc_geom.data import load_npz

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "validate_default.py"


def test_quick_run_writes_table_csv_and_fragment_with_numbers(tmp_path):
    out, fragment = tmp_path / "out", tmp_path / "fragment"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--datasets", "spirals-npz", "--out", str(out),
                           "--results-dir", str(fragment)], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| spirals-npz | LPC | 1 |" in proc.stdout
    assert any(word in proc.stdout for word in ("PASS", "FAIL"))

    with open(out / "validate.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["dataset"], r["row"]) for r in rows] == [("spirals-npz", "LPC"), ("spirals-npz", "LinPen"),
                                                        ("spirals-npz", "NoPen")]
    for r in rows:
        assert 0.0 <= float(r["final_test_acc_mean"]) <= 1.0 and float(r["train_separation_ratio_mean"]) > 0
    lpc = rows[0]
    assert float(lpc["mean_tolerance_mean"]) >= 0.01  # the floor, or the noise term of a 10 % split
    assert math.isclose(float(lpc["runs"]), 1.0)

    # the npz the run trained on is a real archive the npz loader reads
    data = load_npz(out / "data" / "spirals-npz-s0.npz")
    assert data.num_classes == 3 and data.input_shape == (2,)

    index = (fragment / "index.md").read_text()
    assert index.startswith("## Validation of the default gamma controller")
    assert "validate_default.py --quick" in index and "spirals-npz" in index and "2 epochs" in index
    payload = json.loads((fragment / "data.json").read_text())
    (verdict,) = payload["criteria"]
    assert verdict["dataset"] == "spirals-npz" and verdict["all"] in (True, False)
    assert math.isfinite(verdict["separation_factor"]) and verdict["separation_factor"] > 0
    assert payload["epochs"] == 2 and payload["seeds"] == [0]
    assert f"{100 * verdict['lpc_minus_nopen']:+.1f}" in index

    # a second launch reuses the finished runs and shows an earlier run's table beside its own
    again = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--datasets", "spirals-npz", "--out", str(out),
                            "--results-dir", str(fragment), "--previous", str(out / "validate.json"),
                            "--previous-label", "the first launch"], capture_output=True, text=True, env=env,
                           timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    index = (fragment / "index.md").read_text()
    assert "### For comparison: the first launch" in index
    assert index.count("| spirals-npz | 3 interleaved spirals") == 2  # this run's criteria and the earlier's
    assert json.loads((out / "runs" / "spirals-npz-LPC-s0" / "record.json").read_text())["status"] == "ok"
    assert json.loads((fragment / "data.json").read_text())["previous"]["label"] == "the first launch"
