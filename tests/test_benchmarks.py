"""The benchmark scripts run on the real pipeline (a smoke test: their figures are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_learner_update_benchmark_times_the_real_update():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "learner_update.py"), "--maps", "3s_vs_3z",
         "--threads", "1", "--repeats", "1", "--profile"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    row = [line.split() for line in out.splitlines() if line.strip().startswith("3s_vs_3z")]
    assert row and row[0][2] == "32-true" and float(row[0][3]) > 0 and float(row[0][5]) > 0  # update s, ratio
    gflop, float32, bfloat16 = map(float, row[0][6:9])  # the update's matrix products alone
    assert gflop > 0.5 and float32 > 0 and bfloat16 > 0
    for stage in ("actor GRU unroll", "eq. 9 loss", "eq. 11 loss", "aten::"):  # the profile
        assert stage in out


def test_replay_memory_benchmark_prints_its_ratio():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "replay_memory.py"), "--episodes", "4"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    assert "float32" in out


def test_scaling_benchmark_fits_the_exponent_over_the_agents():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--agents", "2", "4",
         "--episode-limit", "5", "--repeats", "1"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["2"], ["4"])]
    assert [int(r[1]) for r in rows] == [36, 72]  # the state grows linearly: 18 features per agent
    assert all(float(r[2]) > 0 for r in rows)  # update s
    assert "update ~ a * N^b over  all N: a =" in out


def test_throughput_benchmark_splits_a_real_training_run():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--tasks", "matrix_game",
         "--frames", "160"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    row = [line.split() for line in out.splitlines() if line.strip().startswith("matrix_game")]
    assert row and int(row[0][1]) == 160 and int(row[0][2]) > 0  # frames, updates
    assert float(row[0][4]) > 0 and row[0][-1] in ("collect", "learn", "eval")  # frames/s, bottleneck


def test_update_cost_benchmark_checks_the_hand_written_update_is_the_same_update():
    tasks = ["matrix_game", "mtq", "vmas_navigation"]  # discrete; continuous with V_i and alpha_i; twins, learned alpha
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "update_cost.py"), "--tasks", *tasks,
         "--rounds", "1", "--repeats", "2"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in tasks}
    assert sorted(rows) == sorted(tasks)
    for row in rows.values():
        assert float(row[1]) < 1e-5  # one update of each from the same state: same parameters
        assert float(row[2]) > 0 and float(row[3]) > 0 and float(row[4]) > 0
