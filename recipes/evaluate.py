"""Evaluate a trained run: `python recipes/evaluate.py <run dir> [--episodes N] [--render out.gif|out.mp4]`.

Reads top to bottom: the run's config.yaml -> its env and networks, built by recipes/train.py's
own builders -> the weights of checkpoints/last.ckpt -> N greedy episodes (the policy's
deterministic action: argmax over available actions, or the tanh-Gaussian's mean) -> the mean
return with its 95% Student-t interval and, on SMAC and SMAX, the win rate with its 95% Wilson
interval. ``--render`` also writes one greedy episode of a VMAS team or a SMAX battle as a GIF or
MP4 (``pip install -e ".[render]"``). Works for every algorithm the recipe trains (FOP and the
baselines). ``--json FILE`` writes the numbers. A bad run directory or a missing package prints
one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from omegaconf import DictConfig
from torchrl.envs import EnvBase

import train  # recipes/train.py: the builders of a run (env, networks, loss, Lightning module)
from fop_modules import evaluation, render

CHECKPOINT = Path("checkpoints") / "last.ckpt"
SEED_OFFSET = 20_000  # evaluation seeds: the run's seed + this (training's evaluations use + 10_000 + frames)
MAX_ENVS = 64  # copies of a batched env played side by side


class LoadedRun(NamedTuple):
    """A trained run: its config, its policy and how to make its env (``make_env(num_envs=...)``)."""

    cfg: DictConfig
    policy: torch.nn.Module
    make_env: Callable[..., EnvBase]


def load_run(run_dir: Path, checkpoint: Path | None = None) -> LoadedRun:
    """The run's config, its trained policy (the module's weights loaded from the checkpoint) and
    its env's maker (the env and the transforms its algorithm's agents need)."""
    config, ckpt = run_dir / "config.yaml", checkpoint or run_dir / CHECKPOINT
    for path in (config, ckpt):
        if not path.is_file():
            raise train.ConfigError(
                f"{run_dir}: no {path.relative_to(run_dir) if path.is_relative_to(run_dir) else path}; "
                "give a run directory written by recipes/train.py (outputs/<name>/<time>_seed<seed>) "
                "after its first checkpoint"
            )
    cfg = train.saved_config(run_dir)  # a run saved by an older recipe too
    typed = train.schema.validate(cfg)
    make_env = partial(train.make_env, cfg.env, typed.algorithm)
    env = make_env()
    module, policy = train.build_module(cfg, typed, env)
    env.close()
    # mmap: only the weights are read from disk, not the replay buffer saved beside them (GBs on SMAC)
    state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    module.load_state_dict(state)  # strict: the same networks as the run's, or a clear error
    return LoadedRun(cfg, policy.eval(), make_env)


def evaluate(run_dir: Path, episodes: int, max_steps: int | None = None, seed: int | None = None,
             video: Path | None = None, checkpoint: Path | None = None) -> dict:
    """Plays ``episodes`` greedy episodes of the run's policy; returns the numbers it prints."""
    cfg, policy, make_env = load_run(run_dir, checkpoint)
    seed = cfg.seed + SEED_OFFSET if seed is None else seed
    max_steps = max_steps or cfg.evaluation.max_steps
    torch.manual_seed(seed)
    env = make_env(num_envs=min(episodes, MAX_ENVS))
    env.set_seed(seed)
    result = evaluation.play_greedy(env, policy, episodes, max_steps).summary()
    env.close()
    result.update(run=str(run_dir), algorithm=cfg.algorithm.name, seed=seed, max_steps=max_steps)
    if video is not None:
        env = make_env(num_envs=1)
        env.set_seed(seed)
        frames, fps = render.episode_frames(env, policy, max_steps)
        env.close()
        result["video"] = str(render.write_video(frames, video, fps))
    return result


def report(result: dict) -> str:
    """The printed lines."""
    lines = [f"{result['run']}: {result['algorithm']}, {result['episodes']} greedy episodes "
             f"({result['ended']} ended within {result['max_steps']} steps), seed {result['seed']}"]
    ci = result["return_ci95"]
    lines.append(f"mean return {result['mean_return']:.4f}"
                 + (f" (95% CI {ci[0]:.4f} to {ci[1]:.4f})" if ci else " (one episode: no interval)"))
    if result["win_rate"] is not None:
        lo, hi = result["win_rate_ci95"]
        won = round(result["win_rate"] * result["episodes"])
        lines.append(f"win rate {result['win_rate']:.3f} ({won}/{result['episodes']}; 95% CI {lo:.3f} to {hi:.3f})")
    if "video" in result:
        lines.append(f"video: {result['video']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="outputs/<name>/<time>_seed<seed> of recipes/train.py")
    parser.add_argument("--episodes", type=int, default=32, help="greedy episodes to play (default 32)")
    parser.add_argument("--render", type=Path, default=None, metavar="OUT.gif|OUT.mp4",
                        help="also write one greedy episode as a video (VMAS and SMAX runs)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="step limit of an episode (default: the run's evaluation.max_steps)")
    parser.add_argument("--seed", type=int, default=None, help=f"env seed (default: the run's seed + {SEED_OFFSET})")
    parser.add_argument("--checkpoint", type=Path, default=None, help=f"default: <run dir>/{CHECKPOINT}")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.render is not None and args.render.suffix.lower() not in render.VIDEO_SUFFIXES:
        parser.error(f"--render must end in one of {render.VIDEO_SUFFIXES}, got {args.render.name!r}")
    try:
        result = evaluate(args.run_dir, args.episodes, args.max_steps, args.seed, args.render, args.checkpoint)
    except (*train.USER_ERRORS, ValueError) as error:  # what to change or install, not a traceback
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    print(report(result), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
