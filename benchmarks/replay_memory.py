"""Bytes of the replay buffer holding 5000 MMM episodes, beside one float32 copy of the data.

Run: ``OMP_NUM_THREADS=1 python benchmarks/replay_memory.py [--map MMM] [--episodes 5000]
[--storage both|compact|plain]``.

A full 5000-episode MMM buffer (750k frames) does not fit this shared machine, so the script fills
the module's own buffer (``FOPLightningModule._make_buffer``: :class:`CompactTensorStorage` +
SliceSampler; ``plain``: TorchRL's ``LazyTensorStorage``, what it replaced) with ``--probe``
episodes through the real pipeline (random-length episodes laid out as the collector writes them,
extended in collector batches of ``collect.frames_per_batch`` frames), reads the bytes per frame
of every stored column from the storage's tensors, and scales them to ``episodes x
episode_limit`` frames (the storage allocates its whole capacity up front, so that product is its
size). The compact storage's side table (the ``"next"`` values of episode ends and batch
boundaries) is amortised by the rate of side rows measured in the probe, times the bytes of one
entry, plus the table's 25% growth slack. It also prints the resident memory growth while
filling each probe, as a check on the per-frame figure. "One copy" is the authors' layout: per
step each agent's observation, the state, actions, rewards, masks, once, in float32.
"""

from __future__ import annotations

import argparse
import resource

from smac_shapes import fill, learner

from fop_modules.replay import SIDE_GROWTH, CompactTensorStorage, make_replay_buffer


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def name(key) -> str:
    return "/".join(key) if isinstance(key, tuple) else key


def columns(td, rows: int) -> list[tuple[str, str, float]]:
    """(key, dtype, bytes per row) of every column, largest first."""
    out = [(name(k), str(v.dtype).replace("torch.", ""), v.nbytes / rows) for k, v in td.items(True, True)]
    return sorted(out, key=lambda c: -c[2])


def measure(module, env, probe: int, frames: int, compact: bool) -> float:
    """Fills a fresh buffer with ``probe`` episodes, prints its table; bytes per frame when full."""
    c = module.collect
    module.buffer = make_replay_buffer(c.buffer_size, c.batch_size, c.sequence_length, compact=compact)
    before = rss_mb()
    fill(module, env, probe)
    grown = rss_mb() - before
    storage = module.buffer.storage
    capacity = storage._storage.shape[0]
    stored = len(module.buffer)
    kind = "compact (CompactTensorStorage, now)" if compact else "plain (LazyTensorStorage, before)"
    print(f"\n{kind}")
    print(f"{'key':>40} {'dtype':>8} {'bytes/frame':>11} {'GB full':>8}")
    total = 0.0
    for key, dtype, per_frame in columns(storage._storage, capacity):
        total += per_frame
        print(f"{key:>40} {dtype:>8} {per_frame:>11,.0f} {per_frame * frames / 1e9:>8.2f}")
    if isinstance(storage, CompactTensorStorage):
        side = storage._side
        entry = sum(v.nbytes for v in side.values(True, True)) / side.shape[0] + 1  # + its used flag
        rate = storage.side_rows / stored
        per_frame = rate * entry * SIDE_GROWTH
        total += per_frame
        print(f"{'side table (next of unlinked rows)':>40} {'':>8} {per_frame:>11,.0f} {per_frame * frames / 1e9:>8.2f}"
              f"   {storage.side_rows} of {stored:,} rows ({1000 * rate:.1f} per 1000 frames) x {entry:,.0f} B"
              f" x {SIDE_GROWTH} growth slack")
    print(f"{'total':>40} {'':>8} {total:>11,.0f} {total * frames / 1e9:>8.2f}")
    print(f"check: RSS grew {grown:.0f} MB storing {stored:,} frames (stored bytes "
          f"{total * stored / 2**20:.0f} MB, plus the episodes' temporaries)")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", default="MMM")
    parser.add_argument("--episodes", type=int, default=5000)
    parser.add_argument("--probe", type=int, default=100,
                        help="episodes written (about 7500 frames: the 6000-frame probe buffer wraps)")
    parser.add_argument("--storage", choices=["both", "compact", "plain"], default="both")
    args = parser.parse_args()
    module, env = learner(args.map, ["collect.buffer_size=6000"])
    limit = module.collect.sequence_length
    frames = args.episodes * limit
    n, a = env.n_agents, env.n_actions
    obs, state = env.full_observation_spec["agents", "observation"].shape[-1], env.full_observation_spec["state"].shape[-1]
    one_copy = 4 * (n * obs + state + n * a + n + 1 + 1 + 1)  # obs, state, avail, actions, reward, terminated, filled
    one_copy_total = one_copy * (limit + 1) * args.episodes  # the authors store limit + 1 steps
    print(f"{args.map}: {args.episodes} episodes x {limit} steps = {frames:,} frames; collector batches of "
          f"{module.collect.frames_per_batch} frames")
    print(f"one float32 copy (authors' layout, limit+1 steps): {one_copy_total / 1e9:.2f} GB "
          f"= {one_copy_total / frames:,.0f} bytes/frame")
    # compact first: a later fill reuses memory the earlier buffer freed, which flatters its RSS check
    kinds = {"both": [True, False], "compact": [True], "plain": [False]}[args.storage]
    for compact in kinds:
        total = measure(module, env, args.probe, frames, compact)
        print(f"{'compact' if compact else 'plain'}: {total:,.0f} bytes/frame, {total * frames / 1e9:.2f} GB; "
              f"ratio to one float32 copy {total * frames / one_copy_total:.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
