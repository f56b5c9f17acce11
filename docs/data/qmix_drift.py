"""Q_tot against its TD target on replayed batches of a QMIX-RNN run's checkpoints, by kind of step.

The numbers of docs/results.md's "QMIX's divergence on SMAX" come from this script. It loads each
checkpoint (with its replay buffer: checkpoint.replay_buffer=true, the default), draws 8 batches
of 32 episodes with a fixed seed, and prints, for mid-episode steps, the last steps of decided
battles (terminated) and of timed-out ones (truncated, bootstrapped): how many, the mean squared
TD error, the mean Q_tot, its target and the reward; and the largest magnitude in the state.

    cd <repository> && PYTHONPATH=recipes python docs/data/qmix_drift.py RUN_DIR CHECKPOINT...

(recipes/train.py keeps only the last two checkpoints: copy checkpoints/last.ckpt aside as the
run goes to keep earlier ones.)
"""

import sys
from pathlib import Path

import torch

import train  # recipes/train.py: the run's builders
from fop_modules.checkpointing import load_replay_state
from fop_modules.slices import real_steps

BATCHES = 8


def main(run: Path, snapshots: list[str]) -> None:
    cfg = train.saved_config(run)
    typed = train.schema.validate(cfg)
    env = train.make_env(cfg.env, typed.algorithm)
    for snap in snapshots:
        module, _ = train.build_module(cfg, typed, env)
        checkpoint = torch.load(snap, map_location="cpu", weights_only=True, mmap=True)
        module.load_state_dict(checkpoint["state_dict"])
        load_replay_state(module.buffer, checkpoint["fop_run"]["replay"][0])
        loss = module.loss_module
        mixed, targets = [], []  # the mixer's calls (online first, target on the next states last)
        loss.mixer_network.module.register_forward_hook(lambda m, i, o: mixed.append((i, o.detach())))
        estimate = loss.value_estimator.value_estimate
        loss.value_estimator.value_estimate = lambda *a, **k: targets.append(estimate(*a, **k).detach()) or targets[-1]
        torch.manual_seed(0)
        sums, state_max = {}, 0.0
        for _ in range(BATCHES):
            sample = module.sample()
            mixed.clear(), targets.clear()
            with torch.no_grad():
                loss(sample)
            rows = sample[real_steps(loss, sample)]
            q, target = mixed[0][1].squeeze(-1), targets[0].squeeze(-1)
            terminated, done = rows["next", "terminated"].squeeze(-1), rows["next", "done"].squeeze(-1)
            reward = rows["next", "reward"].squeeze(-1)
            state_max = max(state_max, float(rows["state"].abs().max()))
            for kind, m in {"mid": ~done, "terminated": terminated, "truncated": done & ~terminated}.items():
                s = sums.setdefault(kind, dict(n=0, td2=0.0, q=0.0, target=0.0, reward=0.0))
                s["n"] += int(m.sum())
                for key, value in (("td2", (q - target) ** 2), ("q", q), ("target", target), ("reward", reward)):
                    s[key] += float(value[m].sum())
        report = {kind: {"n": s["n"], **{k: round(s[k] / max(s["n"], 1), 4) for k in ("td2", "q", "target", "reward")}}
                  for kind, s in sums.items()}
        print(Path(snap).name, checkpoint["fop_run"]["env_frames"], report, f"state |max| {state_max:.1f}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
