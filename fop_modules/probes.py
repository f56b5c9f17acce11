"""What a trained FOP agent has learned on the didactic games, as plain numbers.

``matrix_game_tables`` reads the learned Q_i, the Q_jt table over every joint action and the greedy
joint action (paper Table 1b); ``differential_game_result`` reads the greedy actions and their
payoff (paper Fig. 2). Both return JSON-ready dicts (they go into summary.json).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch
from torch import nn
from torchrl.envs import ExplorationType, set_exploration_type

from fop_modules.loss import FOPLoss

if TYPE_CHECKING:
    from fop_modules.envs import DifferentialGameEnv, MatrixGameEnv

__all__ = ["matrix_game_tables", "format_matrix_game_tables", "differential_game_result"]


def _round(x: torch.Tensor, digits: int = 3):
    return torch.round(x, decimals=digits).tolist()


@torch.no_grad()
def greedy_action(policy: nn.Module, env) -> torch.Tensor:
    """The deterministic joint action of the policy at a reset state of ``env`` ([N] or [N, d])."""
    td = env.reset()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        return policy(td).get(("agents", "action"))[0]


@torch.no_grad()
def matrix_game_tables(loss: FOPLoss, env: MatrixGameEnv, policy: nn.Module | None = None) -> dict:
    """Learned Q_i, Q_jt over all joint actions, and the greedy joint action (as indices).

    Q_i and Q_jt are twin 0's. The greedy joint action is each agent's argmax of pi_i, which under
    IGO is also the argmax of Q_i (the policy is used when given, else argmax Q_i).
    """
    td = env.reset()[:1]  # the game has one state
    n, a = env.n_agents, env.n_actions
    joint = torch.tensor(list(itertools.product(range(a), repeat=n)))  # [A^N, N]
    batch = td.expand(joint.shape[0]).clone()
    batch.set(("agents", "action"), joint)
    out = loss.joint_q(batch)
    q_i = out["q_i"][0]  # [N, A]
    mask = td.get(("agents", "action_mask"))[0]
    if policy is not None:
        greedy = greedy_action(policy, env)
    else:
        greedy = q_i.masked_fill(~mask, -torch.inf).argmax(-1)
    greedy = [int(u) for u in greedy]
    return {
        "q_i": _round(q_i.masked_fill(~mask, torch.nan)),
        "v_i": _round(out["v_i"][0].squeeze(-1)),
        "q_jt": _round(out["q_jt"].reshape([a] * n)),
        "greedy_joint_action": greedy,
        "greedy_payoff": float(env.payoff[tuple(greedy)]),
        "optimal_joint_action": list(env.optimal_joint_action()),
    }


def format_matrix_game_tables(tables: dict, action_names: str = "ABCDEFGHIJ") -> str:
    """Human-readable Q_i, Q_jt (2 agents: a table) and greedy joint action."""
    lines = []
    for i, row in enumerate(tables["q_i"]):
        lines.append(f"Q_{i + 1} = [" + ", ".join(f"{round(q, 2) + 0.0:6.2f}" for q in row) + "]")
    q_jt = torch.tensor(tables["q_jt"])
    if q_jt.dim() == 2:
        names = action_names[: q_jt.shape[1]]
        lines.append("Q_jt:   " + "".join(f"{c:>8}" for c in names))
        for r, row in zip(names, q_jt.tolist()):
            lines.append(f"     {r}  " + "".join(f"{round(q, 2) + 0.0:8.2f}" for q in row))
    else:
        lines.append(f"Q_jt (shape {list(q_jt.shape)}): see summary.json")
    greedy = tables["greedy_joint_action"]
    lines.append(
        "greedy joint action: (" + ", ".join(action_names[u] for u in greedy) + f")  "
        f"indices {greedy}, payoff {tables['greedy_payoff']:g}"
    )
    return "\n".join(lines)


@torch.no_grad()
def differential_game_result(policy: nn.Module, env: DifferentialGameEnv) -> dict:
    """Greedy actions (one per agent) and their unscaled payoff."""
    action = greedy_action(policy, env).reshape(env.n_agents)
    return {
        "greedy_action": _round(action),
        "greedy_payoff": float(env.payoff(action)),
        "global_optimum": list(env.global_optimum()[0]),
    }
