"""Bytes of the replay buffer holding 5000 MMM episodes, beside one float32 copy of the data.

Run: ``OMP_NUM_THREADS=1 python benchmarks/replay_memory.py [--map MMM] [--episodes 5000]``.

A full 5000-episode MMM buffer (750k frames) does not fit this shared machine, so the script fills
the module's own buffer (``FOPLightningModule._make_buffer``: ``LazyTensorStorage`` + SliceSampler)
with ``--probe`` episodes through the real pipeline, reads the bytes per frame of every stored key
from the storage's tensors, and scales them to ``episodes x episode_limit`` frames (the storage
allocates its whole capacity up front, so that product is its size). It also prints the resident
memory growth while filling the probe, as a check on the per-frame figure. "One copy" is the
authors' layout: per step each agent's observation, the state, actions, rewards, masks, once,
in float32.
"""

from __future__ import annotations

import argparse
import resource

from smac_shapes import fill, learner


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", default="MMM")
    parser.add_argument("--episodes", type=int, default=5000)
    parser.add_argument("--probe", type=int, default=40, help="episodes actually stored")
    args = parser.parse_args()
    module, env = learner(args.map, ["collect.buffer_size=6000"])
    limit = module.collect.sequence_length
    before = rss_mb()
    fill(module, env, args.probe)
    grown = rss_mb() - before
    storage = module.buffer.storage._storage  # the lazily allocated [capacity] tensordict
    capacity = storage.shape[0]
    frames = args.episodes * limit
    print(f"{args.map}: {args.episodes} episodes x {limit} steps = {frames:,} frames")
    print(f"{'key':>40} {'dtype':>8} {'bytes/frame':>11} {'GB full':>8}")
    total = 0
    for key, value in sorted(storage.items(True, True), key=lambda kv: -kv[1].nbytes):
        per_frame = value.nbytes / capacity
        total += per_frame
        name = "/".join(key) if isinstance(key, tuple) else key
        print(f"{name:>40} {str(value.dtype).replace('torch.', ''):>8} {per_frame:>11,.0f} {per_frame * frames / 1e9:>8.2f}")
    n, a = env.n_agents, env.n_actions
    obs, state = env.full_observation_spec["agents", "observation"].shape[-1], env.full_observation_spec["state"].shape[-1]
    one_copy = 4 * (n * obs + state + n * a + n + 1 + 1 + 1)  # obs, state, avail, actions, reward, terminated, filled
    one_copy_total = one_copy * (limit + 1) * args.episodes  # the authors store limit + 1 steps
    print(f"{'total':>40} {'':>8} {total:>11,.0f} {total * frames / 1e9:>8.2f}")
    print(f"one float32 copy (authors' layout, limit+1 steps): {one_copy_total / 1e9:.2f} GB; "
          f"ratio {total * frames / one_copy_total:.2f}")
    stored = len(module.buffer)
    print(f"check: RSS grew {grown:.0f} MB storing {stored:,} frames (stored bytes "
          f"{total * stored / 2**20:.0f} MB, plus the episodes' temporaries); peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
