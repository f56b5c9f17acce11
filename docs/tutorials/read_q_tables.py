"""Reads a matrix-game run's summary.json: the learned tables beside the payoff (tutorial 2)."""

# --8<-- [start:read]
import json
import sys

import torch

from fop_modules.envs import QTRAN_PAYOFF
from fop_modules.probes import format_matrix_game_tables

summary = json.load(open(sys.argv[1]))
print(format_matrix_game_tables(summary))  # the same lines the recipe prints at the end

payoff = torch.tensor(QTRAN_PAYOFF)  # [A, A], Table 1a
q_jt = torch.tensor(summary["q_jt"])  # [A, A]: the learned Q_jt(u_1, u_2) of every joint action
error = (q_jt - payoff).abs().max().item()
print(f"largest |Q_jt - payoff| over the 9 joint actions: {error:.3f}")
assert summary["greedy_joint_action"] == [0, 0], "FOP should pick (A, A), the optimum"
assert error < 0.1, "the learned Q_jt should reproduce the payoff (docs/results.md: within 0.03)"
# --8<-- [end:read]
