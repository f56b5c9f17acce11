"""Env frames per second of the whole FOP training loop, and where its wall time goes.

Run: ``OMP_NUM_THREADS=1 python benchmarks/throughput.py [--tasks matrix_game mtq vmas_navigation
smax_3m] [--frames 2000] [--sections] [--override collect.collector=multi_async]``.

Each task is one run of the recipe's ``train()`` (recipes/train.py: env, networks, FOPLoss,
FOPLightningModule and its Lightning Trainer, collector included) with the experiment's settings,
shortened to a few thousand frames by the overrides in :data:`TASKS`, and with Lightning's
``SimpleProfiler`` (``trainer.profiler=simple``). The split of the fit's wall time reads the
profiler's sections:

- ``collect``: ``[_TrainingEpochLoop].train_dataloader_next``, the collector's iteration (env steps,
  policy forward, the recurrent transforms); with ``--override collect.collector=multi_async``
  the envs step in a worker process while the learner updates, and this is only the time the
  learner waits for a batch;
- ``learn``: ``[FOPLightningModule]updates``, every batch's updates with their replay sampling;
- ``eval``: ``[GreedyEvaluation]evaluate``, the greedy evaluations (at frame 0, every
  ``evaluation.interval`` frames and at the end of the run);
- ``warm-up``: ``[LightningModule]FOPLightningModule.train_dataloader`` (the collector and its envs
  built), and what the first collected batch and the first evaluation took beyond a later one
  (envs created; SMAX jit-compiles its reset and step there): what a run pays once, left out of
  the three above;
- ``other``: the rest of the fit (storing batches in the replay, logging, the final checkpoint).

``frames/s`` is env frames / fit seconds of this short run; ``steady frames/s`` leaves out the
warm-up, which is what a long run tends to (its evaluations are also rarer than here: every run
this short evaluates at its start and at its end). The percentages are shares of the fit after
the warm-up, and ``bottleneck`` names the largest of collect, learn and eval.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from smac_shapes import recipe_config
from train import train  # recipes/train.py (smac_shapes puts recipes/ on the path)

COLLECT = "[_TrainingEpochLoop].train_dataloader_next"
LEARN = "[FOPLightningModule]updates"
EVALUATE = "[GreedyEvaluation]evaluate"
SETUP = "[LightningModule]FOPLightningModule.train_dataloader"
SECTION_MIN_SHARE = 0.01  # --sections lists the sections over this share of the fit

# task: (experiment, default frames, overrides given the frames); each keeps its experiment's
# updates per frame and shrinks only what a short run needs shrunk
TASKS = {
    "matrix_game": ("matrix_game", 2000, lambda frames: []),
    "mtq": ("mtq", 2000, lambda frames: [
        f"collect.init_random_frames={frames // 5}",  # 4000 random frames of 20k, then the policy
    ]),
    "vmas_navigation": ("vmas_navigation", 1200, lambda frames: [
        "collect.frames_per_batch=600",  # 60 steps of the 10 envs (BenchMARL: 6000 ...
        "collect.updates_per_batch=100",  # ... and 1000 updates per batch)
        f"evaluation.interval={frames}",
        f"collect.buffer_size={frames}",  # the whole run (1M frames would be allocated up front)
    ]),
    "smax_3m": ("smax_3m", 2000, lambda frames: [
        f"collect.warmup_frames={frames // 5}",  # 10100 of 500k: learn early in a short run
        f"collect.buffer_size={max(frames, 32 * 101)}",  # the run, at least one batch of 32 x 101
    ]),
}


class ProfileReadout(L.Callback):
    """Keeps the trainer's profiler, the fit's wall time and the module's counters after fit."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.profiler = trainer.profiler
        self.start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start
        self.frames, self.updates = pl_module.env_frames, pl_module.updates

    def split(self) -> dict[str, float]:
        """Seconds of the fit: ``warm-up`` (the collector built, and what the first collected
        batch and the first evaluation took beyond a later one: envs created, jit compiles), then
        the rest of ``collect``, ``learn``, ``eval`` and ``other``."""
        durations = self.profiler.recorded_durations
        collect, evaluate = durations.get(COLLECT, []), durations.get(EVALUATE, [])
        collect_once, evaluate_once = first_call_excess(collect), first_call_excess(evaluate)
        parts = {
            "warm-up": sum(durations.get(SETUP, [])) + collect_once + evaluate_once,
            "collect": sum(collect) - collect_once,
            "learn": sum(durations.get(LEARN, [])),
            "eval": sum(evaluate) - evaluate_once,
        }
        parts["other"] = self.seconds - sum(parts.values())
        return parts


def first_call_excess(durations: list[float]) -> float:
    """How much longer the first call took than the median later one (0 without later ones)."""
    if len(durations) < 2:
        return 0.0
    return max(0.0, durations[0] - statistics.median(durations[1:]))


def run(task: str, frames: int | None, extra: list[str] = ()) -> ProfileReadout:
    """One shortened training run of ``task`` with the profiler on (``extra``: more overrides)."""
    experiment, default_frames, overrides = TASKS[task]
    frames = frames or default_frames
    readout = ProfileReadout()
    with tempfile.TemporaryDirectory(prefix=f"throughput-{task}-") as run_dir:
        cfg = recipe_config(experiment, [
            f"collect.total_frames={frames}",
            "checkpoint.every_frames=0",  # one checkpoint, at the end
            "+trainer.profiler=simple",
            "trainer.enable_progress_bar=false",
            *overrides(frames),
            *extra,
        ])
        with contextlib.redirect_stdout(io.StringIO()):  # the recipe's own printout
            train(cfg, Path(run_dir), callbacks=[readout])
    return readout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--frames", type=int, default=None, help="env frames per run (default: per task)")
    parser.add_argument("--sections", action="store_true", help="also print every profiler section")
    parser.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for every run, e.g. collect.collector=multi_async "
                        "(collection in a worker process: 'collect' is then the learner's wait)")
    args = parser.parse_args()
    for name in ("lightning.pytorch", "lightning.fabric", "torchrl"):  # profiler report, banners, storage info
        logging.getLogger(name).setLevel(logging.WARNING)
    print(f"FOP training loop (recipes/train.py), torch threads {torch.get_num_threads()}; seconds of the "
          "fit; % of the fit after its warm-up")
    print(f"{'task':>16} {'frames':>6} {'updates':>7} {'fit s':>6} {'frames/s':>8} {'warm-up s':>9} "
          f"{'steady frames/s':>15} {'collect':>13} {'learn':>13} {'eval':>13} {'other':>13}  bottleneck")
    for task in args.tasks:
        r = run(task, args.frames, args.override)
        parts = r.split()
        warm_up = parts.pop("warm-up")
        steady = r.seconds - warm_up
        cells = " ".join(f"{s:>6.1f} ({100 * s / steady:>3.0f}%)" for s in parts.values())
        bottleneck = max(("collect", "learn", "eval"), key=parts.get)
        print(f"{task:>16} {r.frames:>6} {r.updates:>7} {r.seconds:>6.1f} {r.frames / r.seconds:>8.0f} "
              f"{warm_up:>9.1f} {r.frames / steady:>15.0f} {cells}  {bottleneck}",
              flush=True)
        if args.sections:  # those over 1% of the fit
            for section, durations in sorted(r.profiler.recorded_durations.items(), key=lambda kv: -sum(kv[1])):
                if sum(durations) > SECTION_MIN_SHARE * r.seconds:
                    print(f"{'':>16} {sum(durations):>8.2f} s {len(durations):>6} x  {section}")


if __name__ == "__main__":
    main()
