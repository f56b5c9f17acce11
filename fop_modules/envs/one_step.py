"""OneStepGameEnv: the shared frame of the paper's didactic games (section 5.1).

Both didactic games (the QTRAN matrix game and the Max of Two Quadratics differential game) are
cooperative, have a single state and end after one step: every agent sees the same constant
observation, the team receives one shared reward for the joint action and the episode
terminates. This module holds that frame once (specs, reset, step bookkeeping) so that each game
only defines its action spec and its team reward.

Keys follow TorchRL's multi-agent convention, with ``E = num_envs`` copies of the game stepped in
one vectorised call and ``N`` agents:

=============================  ============  ============================================
key                            shape         meaning
=============================  ============  ============================================
``("agents", "observation")``  [E, N, 1]     constant ones (the game has one state)
``("agents", "action_mask")``  [E, N, A]     legal actions (discrete games only)
``("agents", "action")``       [E, N, ...]   set by the game (index or continuous value)
``"state"``                    [E, 1]        constant ones (global state for the critics)
``"reward"``                   [E, 1]        shared team reward
``"done"``, ``"terminated"``   [E, 1]        ``True`` after every step
``"truncated"``                [E, 1]        always ``False``
=============================  ============  ============================================
"""

from __future__ import annotations

import abc

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Binary, Categorical, Composite, TensorSpec, Unbounded
from torchrl.envs import EnvBase

__all__ = ["OneStepGameEnv"]

GROUP = "agents"
ACTION_KEY = (GROUP, "action")
STATE_KEY = "state"
REWARD_KEY = "reward"

OBS_DIM = 1  # the single state is encoded as a constant 1
STATE_DIM = 1


class OneStepGameEnv(EnvBase):
    """Base class for single-state, one-step cooperative games with ``num_envs`` copies.

    Subclasses call ``super().__init__`` (which builds the observation, state, reward and done
    specs), then :meth:`_set_agent_action_spec` with a spec of shape ``[num_envs, n_agents, ...]``
    and implement :meth:`_team_reward`. Resets ignore any partial ``"_reset"`` mask: the game
    has one state, so resetting every copy is the same as resetting the requested ones.

    Args:
        n_agents: number of agents ``N``.
        num_envs: number of game copies ``E`` stepped together (``batch_size == [E]``).
        action_mask: optional boolean ``[N, A]`` table of legal actions; when given it is
            published as ``("agents", "action_mask")`` of shape ``[E, N, A]``.
        device: device of specs and tensors; ``None`` keeps torchrl's default (CPU).

    Raises:
        ValueError: if ``num_envs < 1`` or ``n_agents < 1``.

    Examples:
        >>> import torch
        >>> from torchrl.data import Unbounded
        >>> class SumGame(OneStepGameEnv):
        ...     def __init__(self, num_envs=1):
        ...         super().__init__(n_agents=2, num_envs=num_envs)
        ...         self._set_agent_action_spec(Unbounded(shape=(num_envs, 2, 1)))
        ...     def _team_reward(self, action):
        ...         return action.sum((-2, -1))
        >>> env = SumGame(num_envs=3)
        >>> td = env.rand_step(env.reset())
        >>> td["next", "reward"].shape, bool(td["next", "done"].all())
        (torch.Size([3, 1]), True)
    """

    def __init__(
        self,
        *,
        n_agents: int,
        num_envs: int = 1,
        action_mask: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
        if int(n_agents) < 1:
            raise ValueError(f"n_agents must be >= 1, got {n_agents}.")
        num_envs, n_agents = int(num_envs), int(n_agents)
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self._n_agents = n_agents
        self._action_mask = None
        if action_mask is not None:
            self._action_mask = torch.as_tensor(action_mask, dtype=torch.bool, device=self.device)
        self._make_specs()

    def _make_specs(self) -> None:
        """Builds every spec except the action spec (which the game defines)."""
        E, N = self.batch_size[0], self._n_agents
        group_spec = Composite(
            observation=Unbounded(shape=(E, N, OBS_DIM), dtype=torch.float32, device=self.device),
            shape=(E, N),
            device=self.device,
        )
        if self._action_mask is not None:
            n_actions = self._action_mask.shape[-1]
            group_spec["action_mask"] = Binary(
                n=n_actions, shape=(E, N, n_actions), dtype=torch.bool, device=self.device
            )
        self.observation_spec = Composite(
            {
                GROUP: group_spec,
                STATE_KEY: Unbounded(shape=(E, STATE_DIM), dtype=torch.float32, device=self.device),
            },
            shape=(E,),
            device=self.device,
        )
        self.reward_spec = Unbounded(shape=(E, 1), dtype=torch.float32, device=self.device)
        done = Categorical(n=2, shape=(E, 1), dtype=torch.bool, device=self.device)
        self.done_spec = Composite(
            done=done,
            terminated=done.clone(),
            truncated=done.clone(),
            shape=(E,),
            device=self.device,
        )

    def _set_agent_action_spec(self, spec: TensorSpec) -> None:
        """Publishes ``spec`` (shape ``[E, N, ...]``) as the ``("agents", "action")`` spec."""
        E, N = self.batch_size[0], self._n_agents
        if tuple(spec.shape[:2]) != (E, N):
            raise ValueError(f"action spec shape {tuple(spec.shape)} must start with {(E, N)}.")
        self.full_action_spec = Composite(
            {GROUP: Composite(action=spec, shape=(E, N), device=self.device)},
            shape=(E,),
            device=self.device,
        )

    @property
    def n_agents(self) -> int:
        """Number of agents ``N``."""
        return self._n_agents

    @abc.abstractmethod
    def _team_reward(self, action: torch.Tensor) -> torch.Tensor:
        """Maps the joint action ``("agents", "action")`` of shape ``[E, N, ...]`` to ``[E]``."""

    def _observe(self) -> TensorDict:
        """The (constant) observation of the single state, batch ``[E]``."""
        E, N = self.batch_size[0], self._n_agents
        group = {"observation": torch.ones(E, N, OBS_DIM, device=self.device)}  # [E, N, 1]
        if self._action_mask is not None:
            group["action_mask"] = self._action_mask.expand(E, *self._action_mask.shape).clone()
        return TensorDict(
            {
                GROUP: TensorDict(group, batch_size=(E, N), device=self.device),
                STATE_KEY: torch.ones(E, STATE_DIM, device=self.device),  # [E, 1]
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        out = self._observe()
        not_done = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        out.update(
            {"done": not_done, "terminated": not_done.clone(), "truncated": not_done.clone()}
        )
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        reward = self._team_reward(tensordict.get(ACTION_KEY))  # [E]
        out = self._observe()
        done = torch.ones(*self.batch_size, 1, dtype=torch.bool, device=self.device)  # one step
        out.update(
            {
                REWARD_KEY: reward.to(torch.float32).unsqueeze(-1),  # [E, 1]
                "done": done,
                "terminated": done.clone(),
                "truncated": torch.zeros_like(done),
            }
        )
        return out

    def _set_seed(self, seed: int | None) -> None:
        # The games are deterministic: nothing to seed (random actions use torch's global RNG).
        return None

