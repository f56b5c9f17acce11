"""The benchmark scripts run on the real pipeline (a smoke test: their figures are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_learner_update_benchmark_times_the_real_update():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "learner_update.py"), "--maps", "3s_vs_3z",
         "--threads", "1", "--repeats", "1"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    row = [line.split() for line in out.splitlines() if line.strip().startswith("3s_vs_3z")]
    assert row and float(row[0][2]) > 0 and float(row[0][4]) > 0  # update s, ratio


def test_replay_memory_benchmark_prints_its_ratio():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "replay_memory.py"), "--episodes", "4"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    assert "float32" in out
