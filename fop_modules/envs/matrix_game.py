"""MatrixGameEnv: one-step cooperative matrix games (paper section 5.1, Table 1).

The default payoff is QTRAN's non-monotonic game used by the paper: two agents with actions
{A, B, C}, the optimum (A, A) = 8 surrounded by -12 penalties and a wide plateau of 0 elsewhere,
which monotonic (QMIX-style) and linear (DOP-style) value factorisations fail to represent.

Any table with one dimension per agent works; agents may have different numbers of actions
(e.g. a ``[2, 3]`` table). Actions are indexed up to ``n_actions = max`` over agents and the
extra actions of the smaller agents are masked out in ``("agents", "action_mask")`` and in the
action spec (so ``env.rand_action()`` only samples legal actions).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torchrl.data import Categorical

from fop_modules.envs.one_step import OneStepGameEnv

__all__ = ["MatrixGameEnv", "QTRAN_PAYOFF"]

QTRAN_PAYOFF = (
    (8.0, -12.0, -12.0),
    (-12.0, 0.0, 0.0),
    (-12.0, 0.0, 0.0),
)
"""QTRAN's non-monotonic payoff (paper Table 1a): rows agent 1, columns agent 2, actions A, B, C."""

PayoffLike = Sequence | torch.Tensor


class MatrixGameEnv(OneStepGameEnv):
    """A one-step, single-state cooperative game with a payoff table (team reward).

    Agent ``i`` picks an action index in ``[0, payoff.shape[i])``; every agent receives the team
    reward ``payoff[a_1, ..., a_N]`` and the episode ends. ``num_envs`` copies step in one
    vectorised call.

    Keys (``E = num_envs``, ``N = n_agents``, ``A = n_actions``): ``("agents", "observation")``
    float ``[E, N, 1]`` of ones, ``("agents", "action_mask")`` bool ``[E, N, A]``,
    ``"state"`` float ``[E, 1]`` of ones, ``("agents", "action")`` int64 ``[E, N]``
    (``Categorical(A)``), ``"reward"`` float ``[E, 1]``, ``"done"``/``"terminated"``/``"truncated"``
    bool ``[E, 1]`` (``True``/``True``/``False`` after every step).

    Args:
        payoff: nested sequence or tensor with one dimension per agent; dimension ``i`` has agent
            ``i``'s number of actions. Defaults to :data:`QTRAN_PAYOFF`.
        num_envs: number of game copies stepped together (``batch_size == [num_envs]``).
        device: device of specs and tensors; ``None`` keeps torchrl's default (CPU).

    Raises:
        ValueError: for a ragged (non-rectangular) table, a scalar or empty dimension, non-finite
            entries or ``num_envs < 1``; at step time, for an action an agent does not have.

    Examples:
        >>> import torch
        >>> env = MatrixGameEnv(num_envs=3)
        >>> env.n_agents, env.n_actions, env.optimal_joint_action()
        (2, 3, (0, 0))
        >>> td = env.reset()
        >>> td["agents", "action"] = torch.tensor([[0, 0], [1, 2], [0, 1]])
        >>> env.step(td)["next", "reward"].squeeze(-1)
        tensor([  8.,   0., -12.])
        >>> MatrixGameEnv([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).reset()["agents", "action_mask"]
        tensor([[[ True,  True, False],
                 [ True,  True,  True]]])
    """

    def __init__(
        self,
        payoff: PayoffLike = QTRAN_PAYOFF,
        num_envs: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        table = _payoff_tensor(payoff)  # [n_1, ..., n_N]
        n_agents = table.ndim
        sizes = torch.tensor(table.shape)  # [N] actions per agent
        n_actions = int(sizes.max())
        action_mask = torch.arange(n_actions).expand(n_agents, -1) < sizes.unsqueeze(-1)  # [N, A]
        super().__init__(
            n_agents=n_agents, num_envs=num_envs, action_mask=action_mask, device=device
        )
        self._payoff = table.to(self.device)
        self._n_actions = n_actions
        self._actions_per_agent = sizes.to(self.device)  # [N]
        # Flat index of a joint action: sum_i a_i * stride_i (row-major strides of the table).
        self._strides = torch.tensor(table.stride(), device=self.device)  # [N]
        E = self.batch_size[0]
        self._set_agent_action_spec(
            Categorical(
                n=n_actions,
                shape=(E, n_agents),
                dtype=torch.int64,
                mask=action_mask.expand(E, n_agents, n_actions),
                device=self.device,
            )
        )

    @property
    def payoff(self) -> torch.Tensor:
        """The payoff table, float32 ``[n_1, ..., n_N]`` (a copy)."""
        return self._payoff.clone()

    @property
    def n_actions(self) -> int:
        """Size of every agent's action index space (the largest number of actions)."""
        return self._n_actions

    def optimal_joint_action(self) -> tuple[int, ...]:
        """The joint action with the largest payoff (the first one in row-major order on ties)."""
        flat = int(self._payoff.argmax())
        return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), self._payoff.shape))

    def _team_reward(self, action: torch.Tensor) -> torch.Tensor:
        action = action.long()  # [E, N]
        illegal = (action < 0) | (action >= self._actions_per_agent)  # [E, N]
        if illegal.any():
            env_idx, agent = (int(i) for i in illegal.nonzero()[0])
            raise ValueError(
                f"agent {agent} took action {int(action[env_idx, agent])} (in env {env_idx}), "
                f"but agent {agent} only has actions 0..{int(self._actions_per_agent[agent]) - 1}."
            )
        flat = (action * self._strides).sum(-1)  # [E]
        return self._payoff.reshape(-1)[flat]  # [E]


def _payoff_tensor(payoff: PayoffLike) -> torch.Tensor:
    """Validates ``payoff`` and returns it as a float32 tensor with one dimension per agent."""
    if isinstance(payoff, torch.Tensor):
        table = payoff.detach().to(torch.float32).cpu()
    else:
        shape = _shape(payoff)  # validates before flattening
        table = torch.tensor(_flatten(payoff), dtype=torch.float32).reshape(shape)
    if table.ndim < 1:
        raise ValueError("payoff must have one dimension per agent, got a scalar.")
    if 0 in table.shape:
        raise ValueError(f"payoff has an empty dimension: shape {tuple(table.shape)}.")
    if not torch.isfinite(table).all():
        raise ValueError("payoff contains non-finite values (nan or inf).")
    return table.contiguous()


def _shape(entry: object, path: str = "payoff") -> tuple[int, ...]:
    """Shape of a nested sequence; raises ValueError if it is ragged (non-rectangular)."""
    if isinstance(entry, numbers.Real):
        return ()
    if isinstance(entry, (str, bytes)) or not hasattr(entry, "__len__"):
        raise ValueError(f"{path} must be a number or a sequence, got {type(entry).__name__}.")
    shapes = [_shape(item, f"{path}[{i}]") for i, item in enumerate(entry)]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(
            f"payoff is ragged (not rectangular): {path} has entries of shapes {shapes}."
        )
    return (len(shapes), *(shapes[0] if shapes else ()))


def _flatten(entry: object) -> list[float]:
    """Row-major list of the numbers in a nested sequence (call after :func:`_shape`)."""
    if isinstance(entry, numbers.Real):
        return [float(entry)]
    return [x for item in entry for x in _flatten(item)]
