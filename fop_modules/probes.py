"""What a trained agent has learned on the didactic games, as plain numbers.

``matrix_game_tables`` reads the learned Q_i, the Q_jt table over every joint action (where the
method has one: FOP, QMIX, VDN) and the greedy joint action (paper Table 1b);
``differential_game_result`` reads the greedy actions and their payoff (paper Fig. 2). Both
return JSON-ready dicts (they go into summary.json).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Callable

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs import ExplorationType, RewardScaling, set_exploration_type

from fop_modules.reward_scaling import to_reward_units

if TYPE_CHECKING:
    from fop_modules.envs import DifferentialGameEnv, MatrixGameEnv

__all__ = ["matrix_game_tables", "format_matrix_game_tables", "differential_game_result", "greedy_action"]


def _round(x: torch.Tensor, digits: int = 3):
    return torch.round(x, decimals=digits).tolist()


@torch.no_grad()
def greedy_action(policy: nn.Module, env) -> torch.Tensor:
    """The deterministic joint action of the policy at a reset state of ``env`` ([N] or [N, d])."""
    td = env.reset()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        return policy(td).get(("agents", "action"))[0]


@torch.no_grad()
def matrix_game_tables(
    joint_q: Callable[[TensorDictBase], dict],
    env: MatrixGameEnv,
    policy: nn.Module | None = None,
    reward_scaling: RewardScaling | None = None,
) -> dict:
    """Learned Q_i, Q_jt over all joint actions, and the greedy joint action (as indices).

    ``joint_q(batch)`` returns ``"q_i"`` [*B, N, A] and, where the method has them, ``"q_jt"``
    [*B, 1] of the batch's joint actions and ``"v_i"`` [*B, N, 1] (``FOPLoss.joint_q``: twin
    0's; ``Baseline.joint_q``). The greedy joint action is the policy's deterministic action when
    given (FOP: each agent's argmax of pi_i, under IGO also the argmax of Q_i), else argmax Q_i.
    Values learned on a standardised reward (``reward_scaling``, see
    :mod:`fop_modules.reward_scaling`) are given in the payoff's units: Q_jt as
    ``q * scale + loc``, Q_i and V_i (defined up to a shared constant) as ``q * scale``.
    """
    td = env.reset()[:1]  # the game has one state
    n, a = env.n_agents, env.n_actions
    joint = torch.tensor(list(itertools.product(range(a), repeat=n)))  # [A^N, N]
    batch = td.expand(joint.shape[0]).clone()
    batch.set(("agents", "action"), joint)
    out = joint_q(batch)
    if reward_scaling is not None:  # back to the payoff's units
        out = {key: to_reward_units(value, reward_scaling) if key == "q_jt" else value * reward_scaling.scale
               for key, value in out.items() if key in ("q_i", "v_i", "q_jt")}
    q_i = out["q_i"][0]  # [N, A]
    mask = td.get(("agents", "action_mask"))[0]
    if policy is not None:
        greedy = greedy_action(policy, env)
    else:
        greedy = q_i.masked_fill(~mask, -torch.inf).argmax(-1)
    greedy = [int(u) for u in greedy]
    tables = {"q_i": _round(q_i.masked_fill(~mask, torch.nan))}
    if "v_i" in out:
        tables["v_i"] = _round(out["v_i"][0].squeeze(-1))
    if "q_jt" in out:
        tables["q_jt"] = _round(out["q_jt"].reshape([a] * n))
    return {
        **tables,
        "greedy_joint_action": greedy,
        "greedy_payoff": float(env.payoff[tuple(greedy)]),
        "optimal_joint_action": list(env.optimal_joint_action()),
    }


def format_matrix_game_tables(tables: dict, action_names: str = "ABCDEFGHIJ") -> str:
    """Human-readable Q_i, Q_jt (2 agents: a table) and greedy joint action."""
    lines = []
    for i, row in enumerate(tables["q_i"]):
        lines.append(f"Q_{i + 1} = [" + ", ".join(f"{round(q, 2) + 0.0:6.2f}" for q in row) + "]")
    q_jt = torch.tensor(tables.get("q_jt", []))
    if "q_jt" not in tables:
        lines.append("Q_jt: none (this method learns no joint action value)")
    elif q_jt.dim() == 2:
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
