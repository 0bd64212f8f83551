"""Helpers of the tests that drive real ``lpc-geom`` processes."""

from __future__ import annotations

import json
import time


def wait_for_epochs(proc, out, n, timeout=300):
    """Return once the run writing ``out`` has ``n`` epochs in its history; fail if ``proc`` ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        history = out / "history.json"
        if history.exists() and len(json.loads(history.read_text() or "[]")) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run ended before {n} epochs: {proc.communicate()}")
