"""Env steps per second of SMAXEnv random rollouts (TorchRL adapter over JaxMARL's SMAX).

Run: ``OMP_NUM_THREADS=1 python benchmarks/smax_env_steps.py [--scenario 3m] [--steps 500]``.

For each batch size E it times ``env.rollout(steps, break_when_any_done=False)`` with random
available actions (the env resets finished copies itself) after a warm-up rollout that pays the
jit compile, and reports env steps (transitions) per second = E * steps / seconds. The
``kernel`` column times the adapter's jitted vmapped SMAX step alone (random move/stop actions, no
resets), i.e. without TorchRL's overhead: rand_action, step_mdp, partial resets, stacking.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fop_modules.envs.smax import SMAXEnv

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--scenario", default="3m", help="SMAX map name")
parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 8, 64], help="batch sizes E")
parser.add_argument("--steps", type=int, default=500, help="timed batched steps per rollout")
args = parser.parse_args()
torch.manual_seed(0)

print(f"SMAXEnv({args.scenario!r}) random rollouts, {args.steps} batched steps, torch threads "
      f"{torch.get_num_threads()}")
print(f"{'E':>5} {'compile s':>10} {'ms/step':>9} {'env-steps/s':>12} {'kernel env-steps/s':>19}")
for num_envs in args.num_envs:
    env = SMAXEnv(args.scenario, num_envs=num_envs, seed=0)
    start = time.perf_counter()
    env.rollout(3, break_when_any_done=False)  # compiles reset and step for this E
    compile_s = time.perf_counter() - start

    start = time.perf_counter()
    env.rollout(args.steps, break_when_any_done=False)
    seconds = time.perf_counter() - start

    # The bare kernel, no resets: random moves or stop (always available to live units; dead
    # units ignore actions), the state kept on the JAX side.
    kernels, key, state = env._kernels, env._key, env._state
    actions = np.random.default_rng(0).integers(0, 5, (args.steps, num_envs, env.n_agents))
    actions = actions.astype(np.int32)
    key, state, out = kernels.step(key, state, actions[0])
    start = time.perf_counter()
    for action in actions:
        key, state, out = kernels.step(key, state, action)
        np.asarray(out[0])  # wait for the result, as the adapter does
    kernel_s = time.perf_counter() - start

    print(f"{num_envs:>5} {compile_s:>10.1f} {1e3 * seconds / args.steps:>9.2f} "
          f"{num_envs * args.steps / seconds:>12,.0f} {num_envs * args.steps / kernel_s:>19,.0f}")
