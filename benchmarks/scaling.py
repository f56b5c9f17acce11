"""Time of one FOP update against the number of agents, at fixed per-agent sizes.

Run: ``OMP_NUM_THREADS=1 python benchmarks/scaling.py [--agents 2 4 8 16 32 64] [--episode-limit 60]
[--device cuda]``.

The learner is the authors' SMAC configuration, as in benchmarks/learner_update.py (GRU 64 actor,
MLP 64-64 twin critics, 4-head lambda net, TD(lambda) 0.8, RMSprop; batch 32 whole episodes of
random lengths up to the limit, sampled from the module's own replay buffer), built by the recipe
on :class:`smac_shapes.ScaledSMACShapes`: every agent keeps 3s_vs_3z's per-agent sizes (36
observation features, 9 actions) and the state grows linearly, 18 features per agent (ally
features and last action, and one enemy's features), so only the number of agents N varies. The
episode limit is fixed (60 steps by default, 3m's limit; 3s_vs_3z's 150 would make 64 agents
slow on a small CPU), so each update sees 32 x 60 x N agent-steps.

``bare f+b`` is learner_update.py's bare forward and backward of the same networks on the same
batch. The exponent ``b`` of ``time ~ a * N^b`` is fitted by least squares on log time against
log N, over all points and over N >= 8 (where fixed costs weigh less): b = 1 is linear in the
agents.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from learner_update import measure
from smac_shapes import scaled_learner

MIN_AGENTS_TAIL_FIT = 8  # the second fit uses N >= this


def fitted_exponent(agents: list[int], seconds: list[float]) -> tuple[float, float] | None:
    """(a, b) of ``seconds ~ a * agents^b`` by least squares in log-log; None under two points."""
    if len(agents) < 2:
        return None
    b, log_a = np.polyfit(np.log(agents), np.log(seconds), 1)
    return float(np.exp(log_a)), float(b)


def print_fits(name: str, agents: list[int], seconds: list[float]) -> None:
    tail = [(n, s) for n, s in zip(agents, seconds) if n >= MIN_AGENTS_TAIL_FIT]
    for label, points in (("all N", list(zip(agents, seconds))), (f"N >= {MIN_AGENTS_TAIL_FIT}", tail)):
        fit = fitted_exponent([n for n, _ in points], [s for _, s in points])
        text = "fewer than two points" if fit is None else f"a = {fit[0]:.4f} s, b = {fit[1]:.2f}"
        print(f"{name:>10} ~ a * N^b over {label:>6}: {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--episode-limit", type=int, default=60, help="steps per replayed episode")
    parser.add_argument("--repeats", type=int, default=5, help="timed updates (median)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (the learner's device)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    torch.manual_seed(0)
    limit = args.episode_limit
    print(f"FOP update, authors' SMAC config, 3s_vs_3z per-agent sizes, batch 32 episodes of up to "
          f"{limit} steps; median of {args.repeats}; {device}, torch threads {torch.get_num_threads()}")
    print(f"{'agents':>6} {'state':>6} {'update s':>9} {'bare f+b s':>10} {'ratio':>6}")
    agents, updates, bares = [], [], []
    for n_agents in args.agents:
        # 64 episodes of up to the limit fit; the experiment's 5000 would be allocated up front
        module, env = scaled_learner(n_agents, limit, overrides=[f"collect.buffer_size={64 * limit}"])
        times = measure(module, env, args.repeats, device)
        update, bare = times["update"], times["bare"]
        state_dim = env.full_observation_spec["state"].shape[-1]
        print(f"{n_agents:>6} {state_dim:>6} {update:>9.3f} {bare:>10.3f} {update / bare:>6.2f}", flush=True)
        agents.append(n_agents)
        updates.append(update)
        bares.append(bare)
        del module, env
    print_fits("update", agents, updates)
    print_fits("bare f+b", agents, bares)


if __name__ == "__main__":
    main()
