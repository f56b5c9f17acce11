"""Draws the Max of Two Quadratics payoff surface and prints its two peaks (tutorial 3)."""

# --8<-- [start:surface]
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt
import torch

from fop_modules.envs import DifferentialGameEnv

env = DifferentialGameEnv()  # MTQ by default: two agents, actions in [-10, 10]
for peak in ([-5.0, -5.0], [5.0, 5.0]):
    print(f"payoff{tuple(peak)} = {env.payoff(torch.tensor(peak)).item():.2f}")
print("global optimum (actions, payoff):", env.global_optimum())

grid = torch.linspace(-env.action_bound, env.action_bound, 201)
u1, u2 = torch.meshgrid(grid, grid, indexing="xy")
surface = env.payoff(torch.stack([u1, u2], -1))  # [201, 201]
fig, ax = plt.subplots(figsize=(5, 4))
fig.colorbar(ax.contourf(u1, u2, surface, levels=30), ax=ax, label="payoff")
ax.set_xlabel("agent 1 action")
ax.set_ylabel("agent 2 action")
fig.savefig(sys.argv[1], dpi=100)
# --8<-- [end:surface]
