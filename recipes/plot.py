"""Figures of several runs (Hydra multirun sweeps): `python recipes/plot.py DIR ... [--kind K]`.

Each DIR is a run directory of recipes/train.py (it holds logs/metrics.csv; finished or still
running), or a folder searched for them (a Hydra multirun sweep).

--kind curves (default): learning curves grouped by config name (or by algorithm with
    --group-by algorithm), each group the mean over its seeds with a Student-t 95% confidence
    band (and each seed as a thin line) on the env-frame axis; dashed reference levels.
--kind qtables: matrix games, paper Table 1 style: the payoff, then one panel per algorithm with
    its Q_jt averaged over seeds and how many seeds chose the optimal joint action.
--kind paths: differential games, paper Figure 2 style: one panel per algorithm with every
    seed's greedy-action path over the reward surface and how many seeds reach the optimum.

    python recipes/plot.py multirun/smax_3m outputs/smax_3s_vs_3z --metric eval/win_rate \
        --reference "random policy=0" --bounds 0 1 --out win_rate.png
    python recipes/plot.py multirun/mtq --kind paths --out mtq_paths.png
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fop_modules import plots  # noqa: E402
from fop_modules.evaluation import t_quantile  # noqa: E402  (two-sided 95% Student-t quantiles)


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (with logs/metrics.csv) at or under ``paths``; finished or still running."""
    runs = []
    for path in paths:
        found = [p.parent.parent for p in sorted(path.rglob("logs/metrics.csv"))]
        if not found:
            raise FileNotFoundError(f"no logs/metrics.csv at or under {path}: not a run of recipes/train.py")
        runs += found
    return runs


def run_config(run: Path):
    """The run's composed config: saved at the end of a run, or Hydra's copy of a running one."""
    saved = run / "config.yaml"
    return OmegaConf.load(saved if saved.exists() else run / ".hydra" / "config.yaml")


def run_name(run: Path, group_by: str = "config") -> str:
    """The run's config name (``group_by="config"``) or algorithm name (``"algorithm"``)."""
    config = run_config(run)
    return str(config.name if group_by == "config" else config.algorithm.name)


def finished_summaries(runs: list[Path]) -> dict[str, list[dict]]:
    """summary.json of every finished run, grouped by algorithm (sorted by name)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        if (run / "summary.json").exists():
            summary = json.loads((run / "summary.json").read_text())
            groups[summary.get("algorithm") or run_name(run, "algorithm")].append(summary)
    if not groups:
        raise FileNotFoundError("none of these runs has finished (no summary.json)")
    return dict(sorted(groups.items()))


def metric_files(run: Path) -> list[Path]:
    """The run's metrics files, oldest first: ``metrics.before_resume_<k>.csv`` (the parts before
    each resume) then ``metrics.csv``."""
    logs = run / "logs"
    parts = sorted(logs.glob("metrics.before_resume_*.csv"), key=lambda p: int(p.stem.rpartition("_")[2]))
    return [*parts, logs / "metrics.csv"]


def read_curve(run: Path, metric: str) -> tuple[list[float], list[float]]:
    """(env_frames, value) of every logged ``metric`` of one run, resumed runs as one history: each
    file's points replace the earlier files' from its first logged frame on (a resume continues
    from a checkpoint, so an interrupted part's points past it were computed again)."""
    points: list[tuple[float, float]] = []
    for path in metric_files(run):
        with open(path) as f:
            part = [(float(row["env_frames"]), float(row[metric])) for row in csv.DictReader(f)
                    if row.get(metric) and row.get("env_frames")]
        if part:
            points = [p for p in points if p[0] < part[0][0]] + part
    if not points:
        raise ValueError(f"{run / 'logs' / 'metrics.csv'} has no {metric!r} column with values")
    return [x for x, _ in points], [y for _, y in points]


def mean_and_ci(curves: list[tuple[list[float], list[float]]]) -> tuple[list, list, list, list]:
    """Frames, mean and 95% CI half-width over runs, and each run's values. Runs evaluated at
    different frames are linearly interpolated onto every frame any of them logged, within the
    range all of them reached."""
    start = max(frames[0] for frames, _ in curves)
    stop = min(frames[-1] for frames, _ in curves)
    grid = sorted({x for frames, _ in curves for x in frames if start <= x <= stop})
    table = torch.tensor(np.stack([np.interp(grid, f, v) for f, v in curves]))  # [runs, points]
    mean = table.mean(0)
    half = torch.zeros_like(mean)
    if len(curves) > 1:
        half = t_quantile(len(curves) - 1) * table.std(0) / math.sqrt(len(curves))
    return grid, mean.tolist(), half.tolist(), table.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or sweep folders")
    parser.add_argument("--kind", choices=("curves", "qtables", "paths"), default="curves",
                        help="learning curves, matrix-game Q tables or differential-game paths")
    parser.add_argument("--group-by", choices=("config", "algorithm"), default="config",
                        help="curves: one curve per config name or per algorithm")
    parser.add_argument("--metric", default="eval/return", help="metrics.csv column (eval/win_rate, ...)")
    parser.add_argument("--reference", action="append", default=[], metavar="LABEL=VALUE",
                        help="a dashed reference level, e.g. 'random policy=0' (repeatable)")
    parser.add_argument("--bounds", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="the metric's range (a win rate: 0 1): the CI band is clipped to it")
    parser.add_argument("--out", type=Path, default=Path("curves.png"), help="output PNG")
    args = parser.parse_args()
    runs = find_runs(args.paths)
    if args.kind != "curves":
        summaries = finished_summaries(runs)
        env = instantiate(run_config(runs[0]).env)  # every run of a sweep plays the same game
        if args.kind == "qtables":
            plots.matrix_game_panels(summaries, env.payoff, args.out)
        else:
            plots.differential_game_panels(summaries, env, args.out)
        for name, group in summaries.items():
            print(f"{name}: {len(group)} runs")
        print(f"plot: {args.out}")
        return

    groups: dict[str, list] = defaultdict(list)
    for run in runs:
        groups[run_name(run, args.group_by)].append(read_curve(run, args.metric))

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, curves in sorted(groups.items()):
        frames, mean, half, runs = mean_and_ci(curves)
        line, = ax.plot(frames, mean, label=f"{name}: mean of {len(curves)} seed{'s' * (len(curves) > 1)}")
        for run in runs if len(runs) > 1 else []:  # each seed, thin
            ax.plot(frames, run, color=line.get_color(), linewidth=0.6, alpha=0.5)
        low, high = args.bounds or (-math.inf, math.inf)
        ax.fill_between(frames, [max(low, m - h) for m, h in zip(mean, half)],
                        [min(high, m + h) for m, h in zip(mean, half)], color=line.get_color(),
                        alpha=0.15)
        print(f"{name}: {len(curves)} runs, final {args.metric} {mean[-1]:.3f} +- {half[-1]:.3f} "
              f"(95% CI) at {frames[-1]:.0f} frames")
    for reference in args.reference:
        label, _, value = reference.rpartition("=")
        ax.axhline(float(value), linestyle="--", color="grey", label=label)
    ax.set_xlabel("env frames")
    ax.set_ylabel(args.metric)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
