"""Time of one full FOP update with SMAC shapes, and its ratio to the bare forward and backward.

Run: ``OMP_NUM_THREADS=1 python benchmarks/learner_update.py [--threads 1 2] [--maps MMM ...] [--profile]``.

The learner is the authors' configuration (configs/experiment/smac_authors.yaml: GRU 64 actor on
observation, last action and agent id; MLP 64-64 critic; 4-head lambda net; V_jt hidden 32; twin
critics; TD(lambda) 0.8; analytic V; RMSprop; hard target update) built by the recipe, and the
timed call is ``FOPLightningModule.update`` on a batch of 32 whole episodes of random lengths up to
the map's limit sampled from the module's own replay buffer (benchmarks/smac_shapes.py).

``bare f+b`` runs the same networks once on the same batch with no loss around them: the actor's
GRU unroll (over each slice's real steps, as the loss does), then on the real (unpadded) steps
each twin critic on the root and next steps and each twin mixer, and one backward of the sum.
``ratio`` = update / bare f+b (the loss's overhead: target networks, TD(lambda), several
objectives, optimiser steps).

``GFLOP`` counts the matrix products one update computes (every linear layer, GRU step and their
gradients, recorded by torch.profiler), and ``products f32 s`` / ``bf16 s`` time those same
products alone on random operands: the least an update can cost at that precision on this
machine, whatever else it does.
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
    rows = loss.unroll(batch).rows  # the real (unpadded) steps, as the update computes them
    total = loss._policy(rows)[1].sum()
    for k in range(loss.num_qvalue_nets):
        action = rows.get(loss.tensor_keys.action)
        q, q_i = loss._critic_at(rows, loss.qvalue_network_params, k, action)
        q_next = loss._critic(rows.get("next"), loss.qvalue_network_params, k)
        v_i = q.mean(-1, keepdim=True)
        q_jt = loss._mix(loss.mixer_params, k, q_i, v_i, rows, action)[0]
        total = total + q_jt.sum() + q_next.sum()
    total.backward()


def matrix_products(module, batch) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The operand shapes ``([m, k], [k, n])`` of every matrix product one update computes
    (``mm``, ``addmm``, ``addmm_``: every linear layer, GRU step and their gradients), as
    torch.profiler records them."""
    from torch.profiler import profile

    with profile(record_shapes=True) as prof:
        module.update(batch)
    products = []
    for event in prof.events():
        if event.name in ("aten::mm", "aten::addmm", "aten::addmm_"):
            shapes = event.input_shapes[:2] if event.name == "aten::mm" else event.input_shapes[1:3]
            products.append((tuple(shapes[0]), tuple(shapes[1])))
    return products


def products_time(products, dtype: torch.dtype, repeats: int, device: torch.device) -> float:
    """Median seconds of the same matrix products alone, on random operands of ``dtype``: what an
    update costs at least at that precision, whatever else it does."""
    generator = torch.Generator(device).manual_seed(0)
    operands = [(torch.randn(a, dtype=dtype, device=device, generator=generator),
                 torch.randn(b, dtype=dtype, device=device, generator=generator)) for a, b in products]
    return timed(lambda: [torch.mm(a, b) for a, b in operands], repeats, device)


def fixed_batch(module, env):
    """The map's one benchmark batch: the module's replay emptied, filled with the same
    ``2 x batch_size`` random episodes and sampled with the same seed at every call (the same
    batch for every thread count, precision and code version)."""
    module.buffer.empty()
    fill(module, env, module.collect.batch_size * 2)
    torch.manual_seed(0)
    return module.sample()


def measure(module, env, repeats: int, device: torch.device = torch.device("cpu"),
            products: bool = False) -> dict[str, float]:
    """Median seconds of the update and of the bare forward+backward (``update``, ``bare``) on the
    map's :func:`fixed_batch`, module and batch on ``device``; with ``products``, also the update's matrix products: their ``gflop`` and their
    time alone in ``float32`` and ``bfloat16``."""
    module.to(device)
    batch = fixed_batch(module, env).to(device)
    precision = module.trainer.precision_plugin  # trainer.precision: bf16-mixed autocasts, as in fit()
    with precision.train_step_context():
        recorded = matrix_products(module, batch) if products else []
        times = {"update": timed(lambda: module.update(batch), repeats, device),
                 "bare": timed(lambda: bare_forward_backward(module, batch), repeats, device)}
    if products:
        times["gflop"] = sum(2 * a[0] * a[1] * b[1] for a, b in recorded) / 1e9
        for dtype in (torch.float32, torch.bfloat16):
            times[str(dtype).removeprefix("torch.")] = products_time(recorded, dtype, repeats, device)
    return times


def profile_update(module, batch, top: int = 12) -> None:
    """Prints where one update spends its time (torch.profiler): the update's stages (inclusive
    CPU time; the TD target is part of eq. 9) and the operators with the most self time."""
    from torch.profiler import profile, record_function

    loss = module.loss_module
    stages = {  # label -> (object, method) wrapped in a record_function while profiling
        "actor GRU unroll": (loss._encoders[0], "unroll_steps") if loss._encoders else None,
        "TD target (no grad)": (loss, "_td_target"),
        "eq. 9 loss (TD target incl.)": (loss, "qvalue_loss"),
        "eq. 11 loss": (loss, "actor_loss"),
        "backward + clip + optimiser step": (module, "_step"),
        "target update": (module.target_updater, "step"),
    }
    originals = {}
    for label, where in stages.items():
        if where is not None:
            obj, name = where
            originals[label] = (obj, name, getattr(obj, name))
            setattr(obj, name, _labelled(record_function, label, getattr(obj, name)))
    try:
        module.update(batch)  # warm-up
        with profile() as prof:
            module.update(batch)
    finally:
        for obj, name, method in originals.values():
            setattr(obj, name, method)
    events = {e.key: e for e in prof.key_averages()}
    total = sum(e.self_cpu_time_total for e in events.values()) / 1e3
    print(f"\nprofile of one update ({total:.0f} ms under the profiler), stages (inclusive):")
    for label in originals:
        if label in events:
            ms = events[label].cpu_time_total / 1e3
            print(f"{label:>34} {ms:8.1f} ms {100 * ms / total:5.1f}%")
    print(f"operators by self time (top {top}):")
    ops = sorted((e for e in events.values() if e.key not in originals), key=lambda e: -e.self_cpu_time_total)
    for e in ops[:top]:
        ms = e.self_cpu_time_total / 1e3
        print(f"{e.key:>34} {ms:8.1f} ms {100 * ms / total:5.1f}% {e.count:6d} calls")


def _labelled(record_function, label, method):
    def call(*args, **kwargs):
        with record_function(label):
            return method(*args, **kwargs)
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", nargs="+", default=["MMM", "MMM2", "3s_vs_3z", "2c_vs_64zg"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7, help="timed updates (median)")
    parser.add_argument("--precision", nargs="+", default=["32-true"], choices=["32-true", "bf16-mixed"],
                        help="trainer.precision of the learner (bf16-mixed: autocast, as Lightning's fit)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU (threads: the CPU's)")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one update of the first map (torch.profiler, 1 thread)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch here")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"FOP update, authors' SMAC config, batch 32 episodes; median of {args.repeats}; {where}")
    print(f"{'map':>11} {'threads':>7} {'precision':>10} {'update s':>9} {'bare f+b s':>10} {'ratio':>6} "
          f"{'GFLOP':>6} {'products f32 s':>14} {'bf16 s':>7}")
    for map_name in args.maps:
        for precision in args.precision:
            module, env = learner(map_name, ["collect.buffer_size=26000",  # 64 episodes fit
                                             f"trainer.precision={precision}",
                                             f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}"])
            for threads in args.threads:
                torch.set_num_threads(threads)
                m = measure(module, env, args.repeats, device, products=True)
                print(f"{map_name:>11} {threads:>7} {precision:>10} {m['update']:>9.3f} {m['bare']:>10.3f} "
                      f"{m['update'] / m['bare']:>6.2f} {m['gflop']:>6.1f} {m['float32']:>14.3f} "
                      f"{m['bfloat16']:>7.3f}", flush=True)
    if args.profile:
        torch.set_num_threads(1)
        module, env = learner(args.maps[0], ["collect.buffer_size=26000"])
        profile_update(module, fixed_batch(module, env))


if __name__ == "__main__":
    main()
