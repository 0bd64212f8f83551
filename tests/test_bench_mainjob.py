"""benchmarks/bench_mainjob.py runs, checks the folded passes against the unfolded ones and writes its fragment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_mainjob_writes_its_table_and_parity(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_mainjob.py"), "--repeats", "1",
                           "--fmn-steps", "1", "--results-dir", str(tmp_path / "frag")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "frag" / "index.md").read_text()
    for row in ("| train step |", "| evaluation, folded |", "| attack step, folded |", "| fmn, folded |"):
        assert row in text
    data = json.loads((tmp_path / "frag" / "data.json").read_text())
    assert 0 <= max(data["parity"].values()) < 1e-4
    assert all(seconds > 0 for seconds in data["median_cpu_seconds"].values())
