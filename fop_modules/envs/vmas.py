"""VMAS continuous-action tasks as TorchRL envs with FOP's keys (``make_vmas_env``).

`VMAS <https://github.com/proroklab/VectorizedMultiAgentSimulator>`_ simulates ``E`` copies of a
2-D multi-robot task in one batched PyTorch call. TorchRL's :class:`~torchrl.envs.VmasEnv`
publishes per-agent rewards at ``("agents", "reward")`` ``[E, N, 1]`` and the scenario's own
``done``/``terminated`` at the root ``[E, 1]`` (no ``truncated``); given ``max_steps`` it would
also mark the time limit as *terminated*. :func:`make_vmas_env` therefore builds it with
``max_steps=None`` and adds transforms so that the env has FOP's layout (``N`` agents):

=============================  =============  ==================================================
key                            shape          meaning
=============================  =============  ==================================================
``("agents", "observation")``  [E, N, obs]    per-agent observation (float32)
``("agents", "action")``       [E, N, act]    ``Bounded`` force/velocity, bounds from VMAS
``("agents", "info", ...)``    [E, N, 1]      the scenario's diagnostics (e.g. ``pos_rew``)
``"state"``                    [E, N * obs]   all agents' observations concatenated (agent 0 first)
``"reward"``                   [E, 1]         team reward: mean over agents of VMAS's rewards
``"terminated"``               [E, 1]         the scenario's own ``done`` (goal reached, fall, ...)
``"truncated"``                [E, 1]         ``step_count == max_steps`` (never terminated there)
``"done"``                     [E, 1]         ``terminated | truncated``
``"step_count"``               [E, 1]         steps since the env's last reset (int64)
=============================  =============  ==================================================

Rewards of the verified scenarios (VMAS 1.5.2): ``balance`` and ``transport`` give every agent
the same shared reward, so the mean is that reward; ``navigation`` gives every agent the shared
distance shaping (``shared_rew=True``) plus the shared final bonus plus the agent's *own*
collision penalty, so the team reward is the shared part plus the mean collision penalty.
"""

from __future__ import annotations

import difflib

import torch
from tensordict import TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs import Compose, FlattenObservation, StepCounter, Transform, TransformedEnv
from torchrl.envs.libs.vmas import VmasEnv
from torchrl.envs.utils import MarlGroupMapType

from fop_modules.optional import require

__all__ = ["TeamReward", "make_vmas_env"]

GROUP = "agents"
OBSERVATION_KEY = (GROUP, "observation")
AGENT_REWARD_KEY = (GROUP, "reward")
STATE_KEY = "state"
REWARD_KEY = "reward"
AGENT_DIM = -2  # the agent dimension of [E, N, 1] rewards and [E, N, obs] observations
VERIFIED_SCENARIOS = ("navigation", "balance", "transport")  # checked by tests/test_vmas_env.py
SEED_HIGH = 2**31 - 1  # seeds drawn from torch when none is given


class TeamReward(Transform):
    """Replaces the per-agent rewards ``[*B, N, 1]`` by their mean over agents ``[*B, 1]``.

    FOP's mixer and TD targets use one team reward at the root; VMAS gives one reward per agent.
    The per-agent key leaves the data and the reward spec (the env then has one reward key).

    Args:
        in_key: the per-agent reward key.
        out_key: the team reward key.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"agents": TensorDict({"reward": torch.tensor([[[1.0], [3.0]]])},
        ...                  batch_size=(1, 2))}, batch_size=(1,))
        >>> TeamReward()(td)["reward"]
        tensor([[2.]])
    """

    def __init__(self, in_key: tuple[str, str] = AGENT_REWARD_KEY, out_key: str = REWARD_KEY):
        super().__init__(in_keys=[in_key], out_keys=[out_key])

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        reward = next_tensordict.pop(self.in_keys[0])  # [*B, N, 1]
        next_tensordict.set(self.out_keys[0], reward.mean(AGENT_DIM))  # [*B, 1]
        return next_tensordict

    forward = _call

    def _reset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        return tensordict_reset  # no reward at reset

    def transform_reward_spec(self, reward_spec: Composite) -> Composite:
        in_key, out_key = self.in_keys[0], self.out_keys[0]
        agent_spec = reward_spec[in_key]  # [*B, N, 1]
        del reward_spec[in_key]
        group = in_key[:-1]
        if not reward_spec[group].keys():  # drop the group once it holds no reward
            del reward_spec[group]
        shape = agent_spec.shape[:AGENT_DIM] + agent_spec.shape[AGENT_DIM + 1 :]  # [*B, 1]
        reward_spec[out_key] = Unbounded(
            shape=shape, dtype=agent_spec.dtype, device=agent_spec.device
        )
        return reward_spec


def make_vmas_env(
    scenario: str,
    num_envs: int = 10,
    max_steps: int = 100,
    seed: int | None = None,
    device: str = "cpu",
    **scenario_kwargs,
) -> TransformedEnv:
    """A VMAS task with continuous actions, a team reward, a global state and a time limit.

    Builds ``VmasEnv(scenario, continuous_actions=True, max_steps=None)`` with all agents in one
    group ``"agents"`` and adds three transforms: :class:`~torchrl.envs.FlattenObservation`
    writes ``"state"`` ``[E, N * obs]``, the concatenation of all agents' observations (VMAS
    has no separate global state; FOP's mixer conditions on this one), :class:`TeamReward`
    writes the team reward ``"reward"`` ``[E, 1]`` (mean over agents), and
    :class:`~torchrl.envs.StepCounter` sets ``"truncated"`` (and ``"done"``) after
    ``max_steps`` steps while ``"terminated"`` stays the scenario's own done, so TD targets
    bootstrap at the time limit. Partial resets (a ``"_reset"`` mask ``[E, 1]``) reset only
    the masked copies and their step counters. See the module docstring for every key.

    Args:
        scenario: a VMAS scenario name, e.g. ``"navigation"``, ``"balance"``, ``"transport"``
            (any of ``VmasEnv.available_envs`` whose agents share observation and action sizes).
        num_envs: number of copies ``E`` simulated together (``batch_size == [E]``).
        max_steps: time limit in steps; episodes are truncated when it is reached.
        seed: seed of VMAS's random stream (one stream shared by every VMAS env of the
            process, kept apart from torch's global RNG); ``None`` draws one from torch.
        device: device of the simulation and of every tensor.
        **scenario_kwargs (Any): passed to the scenario, e.g. ``n_agents`` (navigation: 4, balance:
            3, transport: 4 by default), ``shared_rew``, ``collisions`` (navigation),
            ``package_mass`` (balance, transport), ``n_packages`` (transport).

    Returns:
        The transformed env.

    Raises:
        MissingDependency: if the ``vmas`` package is not installed (names the install command).
        ValueError: for an unknown scenario, ``num_envs < 1``, ``max_steps < 1``, or agents of
            different observation or action sizes.

    Examples:
        >>> env = make_vmas_env("navigation", num_envs=2, max_steps=3, seed=0)
        >>> td = env.rollout(2)
        >>> td["agents", "observation"].shape, td["agents", "action"].shape
        (torch.Size([2, 2, 4, 18]), torch.Size([2, 2, 4, 2]))
        >>> td["state"].shape, td["next", "reward"].shape, td["next", "truncated"].shape
        (torch.Size([2, 2, 72]), torch.Size([2, 2, 1]), torch.Size([2, 2, 1]))
        >>> td["next", "step_count"].squeeze(-1).tolist()
        [[1, 2], [1, 2]]
    """
    require("vmas", needed_for="make_vmas_env", extra="vmas")  # else no scenarios
    available = VmasEnv.available_envs
    if scenario not in available:
        close = difflib.get_close_matches(scenario, available, n=3)
        examples = ", ".join(repr(s) for s in dict.fromkeys([*close, *VERIFIED_SCENARIOS]))
        raise ValueError(
            f"unknown VMAS scenario {scenario!r}; valid ones include {examples} "
            f"({len(available)} in all: VmasEnv.available_envs)."
        )
    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    if seed is None:
        seed = int(torch.randint(0, SEED_HIGH, ()))
    env = VmasEnv(
        scenario=scenario,
        num_envs=int(num_envs),
        continuous_actions=True,
        max_steps=None,  # VMAS would report the limit as terminated: StepCounter truncates
        seed=int(seed),
        device=device,
        group_map=MarlGroupMapType.ALL_IN_ONE_GROUP,
        **scenario_kwargs,
    )
    if env.het_specs:
        env.close()
        raise ValueError(
            f"VMAS scenario {scenario!r} has agents with different observation or action sizes; "
            "FOP's shared networks need one size."
        )
    return TransformedEnv(
        env,
        Compose(
            # [E, N, obs] -> [E, N * obs]: the mixer's global state
            FlattenObservation(AGENT_DIM, -1, in_keys=[OBSERVATION_KEY], out_keys=[STATE_KEY]),
            TeamReward(),  # ("agents", "reward") [E, N, 1] -> "reward" [E, 1]
            StepCounter(max_steps=int(max_steps)),  # "truncated", "step_count" [E, 1]
        ),
    )
