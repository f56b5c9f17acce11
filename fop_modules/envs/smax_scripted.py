"""Scripted SMAX teams: what a learning curve's win rate means on a map.

A learned team's greedy win rate is easier to read next to simple hand-written teams played on
the same env. :func:`focus_fire_policy` returns a TorchRL policy (a ``TensorDictModule``) that
every agent follows on its own observation: attack an enemy in range, chosen by ``target``, and
move east (towards the enemy's side on SMAX's maps) when none is in range. ``"random"`` attacks
an enemy in range chosen at random, ``"lowest_index"`` always the first one in SMAX's order
(so the agents that see the same enemies focus their fire without knowing it), ``"weakest"``
the one with the least health left. Play them with :func:`fop_modules.evaluation.play_greedy`.

On 3m with SMAX's heuristic enemy (``docs/results.md``, 64 battles) a uniformly random team wins
none, ``"random"`` about 0.2, ``"lowest_index"`` about 0.55 and ``"weakest"`` about 0.7: a
plateau near 0.5 is focus fire by index, not yet by health.
"""

from __future__ import annotations

from typing import Literal

import torch
from tensordict.nn import TensorDictModule
from torch import Tensor, nn

from fop_modules.envs.smax import STOP_ACTION

__all__ = ["focus_fire_policy", "SCRIPTED_TARGETS"]

SCRIPTED_TARGETS = ("random", "lowest_index", "weakest")
UNIT_FEATURES = 13  # SMAX's unit_list observation: 13 features per other unit, health first
NUM_MOVES = STOP_ACTION + 1  # actions 0-3 move north/east/south/west, 4 stops; 5 + j attacks enemy j
MOVE_EAST = 1


class _FocusFire(nn.Module):
    def __init__(self, n_allies: int, n_enemies: int, target: str) -> None:
        super().__init__()
        self.enemy_start = UNIT_FEATURES * (n_allies - 1)  # other allies first, then the enemies
        self.n_enemies = n_enemies
        self.target = target

    def forward(self, observation: Tensor, action_mask: Tensor) -> Tensor:
        in_range = action_mask[..., NUM_MOVES:]  # [..., N, n_enemies]
        if self.target == "random":
            score = torch.rand(in_range.shape, device=in_range.device)
        elif self.target == "lowest_index":
            score = -torch.arange(self.n_enemies, dtype=torch.float32, device=in_range.device).expand(in_range.shape)
        else:  # "weakest": the least health left (the health feature of each enemy's block)
            columns = self.enemy_start + UNIT_FEATURES * torch.arange(self.n_enemies, device=observation.device)
            score = -observation[..., columns]
        score = score.masked_fill(~in_range, float("-inf"))
        attack = NUM_MOVES + score.argmax(-1)
        no_target = torch.where(action_mask[..., MOVE_EAST], MOVE_EAST, action_mask.float().argmax(-1))
        return torch.where(in_range.any(-1), attack, no_target)


def focus_fire_policy(
    n_allies: int, n_enemies: int, target: Literal["random", "lowest_index", "weakest"] = "weakest"
) -> TensorDictModule:
    """A scripted SMAX team: each agent attacks an enemy in range chosen by ``target``.

    Reads ``("agents", "observation")`` and ``("agents", "action_mask")`` of
    :class:`~fop_modules.envs.SMAXEnv` (``observation_type="unit_list"``) and writes
    ``("agents", "action")``; it has no parameters and plays the same in every exploration mode.

    Args:
        n_allies: the map's number of agents (``env.n_agents``).
        n_enemies: the map's number of enemies (``env.n_enemies``).
        target: which enemy in range to attack: ``"random"``, ``"lowest_index"`` or ``"weakest"``.

    Returns:
        The policy, for ``env.rollout`` or :func:`fop_modules.evaluation.play_greedy`.

    Raises:
        ValueError: on an unknown ``target`` or sizes below 1.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> policy = focus_fire_policy(n_allies=2, n_enemies=2, target="weakest")
        >>> obs = torch.zeros(1, 2, 13 * 3 + 10)
        >>> obs[..., 13 * 1], obs[..., 13 * 2] = 0.9, 0.4  # enemy 0 at 90% health, enemy 1 at 40%
        >>> mask = torch.tensor([[[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]]], dtype=torch.bool)
        >>> td = policy(TensorDict({"agents": {"observation": obs, "action_mask": mask}}, [1]))
        >>> td["agents", "action"].tolist()  # agent 0 attacks enemy 1 (5 + 1); agent 1 has only enemy 0 in range
        [[6, 5]]
    """
    if target not in SCRIPTED_TARGETS:
        raise ValueError(f"target must be one of {SCRIPTED_TARGETS}, got {target!r}")
    if n_allies < 1 or n_enemies < 1:
        raise ValueError(f"n_allies and n_enemies must be >= 1, got {n_allies} and {n_enemies}")
    return TensorDictModule(
        _FocusFire(n_allies, n_enemies, target),
        in_keys=[("agents", "observation"), ("agents", "action_mask")],
        out_keys=[("agents", "action")],
    )
