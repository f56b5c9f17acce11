"""Time of one full FOP update with SMAC shapes, and its ratio to the bare forward and backward.

Run: ``OMP_NUM_THREADS=1 python benchmarks/learner_update.py [--threads 1 2] [--maps MMM ...]``.

The learner is the authors' configuration (configs/experiment/smac_authors.yaml: GRU 64 actor on
observation, last action and agent id; MLP 64-64 critic; 4-head lambda net; V_jt hidden 32; twin
critics; TD(lambda) 0.8; analytic V; RMSprop; hard target update) built by the recipe, and the
timed call is ``FOPLightningModule.update`` on a batch of 32 whole episodes of random lengths up to
the map's limit sampled from the module's own replay buffer (benchmarks/smac_shapes.py).

``bare f+b`` runs the same networks once on the same batch with no loss around them: the actor's
GRU unroll (over slices grouped by length, as the loss does), then on the real (unpadded) steps
each twin critic on the root and next steps and each twin mixer, and one backward of the sum. ``ratio`` = update / bare f+b (the loss's overhead: target networks, TD(lambda), several
objectives, optimiser steps).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from smac_shapes import fill, learner


def timed(fn, repeats: int, device: torch.device = torch.device("cpu")) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call (a GPU's queued
    work is waited for inside each timing)."""
    def call():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_forward_backward(module, batch) -> None:
    loss = module.loss_module
    with loss.shared_unroll(batch) as seq:
        rows = loss._rows(seq)  # the real (unpadded) steps, as the update computes them
        total = loss._policy(rows)[1].sum()
        for k in range(loss.num_qvalue_nets):
            q = loss._critic(rows, loss.qvalue_network_params, k)
            q_next = loss._critic(rows.get("next"), loss.qvalue_network_params, k)
            action = rows.get(loss.tensor_keys.action)
            q_i = loss._chosen(q, action)
            v_i = q.mean(-1, keepdim=True)
            q_jt = loss._mix(loss.mixer_params, k, q_i, v_i, rows, action)[0]
            total = total + q_jt.sum() + q_next.sum()
    total.backward()


def measure(module, env, repeats: int, device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """(median update s, median bare forward+backward s) on one batch of the module's replay,
    filled with ``2 x batch_size`` random episodes; module and batch on ``device``."""
    fill(module, env, module.collect.batch_size * 2)
    module.to(device)
    batch = module.sample().to(device)
    update = timed(lambda: module.update(batch), repeats, device)
    bare = timed(lambda: bare_forward_backward(module, batch), repeats, device)
    return update, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", nargs="+", default=["MMM", "MMM2", "3s_vs_3z", "2c_vs_64zg"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7, help="timed updates (median)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"FOP update, authors' SMAC config, batch 32 episodes; median of {args.repeats}")
    print(f"{'map':>11} {'threads':>7} {'update s':>9} {'bare f+b s':>10} {'ratio':>6}")
    for map_name in args.maps:
        module, env = learner(map_name, ["collect.buffer_size=26000"])  # 64 episodes fit
        for threads in args.threads:
            torch.set_num_threads(threads)
            update, bare = measure(module, env, args.repeats)
            print(f"{map_name:>11} {threads:>7} {update:>9.3f} {bare:>10.3f} {update / bare:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
