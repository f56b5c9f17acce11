"""The sizes FOP's networks and mixer are built with, read from a multi-agent env's specs.

Every env of this package (and any TorchRL env brought as the own-env tutorial shows) carries
``("agents", "observation")`` [*E, N, obs], a global ``"state"`` [*E, S] and
``("agents", "action")``: indices [*E, N] for discrete actions, vectors [*E, N, d] in a box for
continuous ones; discrete envs may add ``("agents", "action_mask")`` [*E, N, A].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrl.envs import EnvBase

from fop_modules.networks import ACTION_KEY, MASK_KEY, OBS_KEY

__all__ = ["EnvSizes", "env_sizes"]

STATE_KEY = "state"


@dataclass(frozen=True)
class EnvSizes:
    """What a multi-agent env's specs say about its agents.

    Attributes:
        n_agents: agents N.
        obs_dim: size of one agent's observation.
        state_dim: size of the global state (the mixer's input).
        discrete: whether actions are indices (else vectors in a box).
        action_dim: the number of actions (discrete) or the size of one agent's action vector
            (continuous): the mixer's ``action_dim`` either way.
        masked: whether the env gives each agent's available actions (``("agents", "action_mask")``).
        low, high: the action box's smallest lower and largest upper bound (continuous; None for
            discrete actions).
    """

    n_agents: int
    obs_dim: int
    state_dim: int
    discrete: bool
    action_dim: int
    masked: bool
    low: float | None
    high: float | None


def env_sizes(env: EnvBase) -> EnvSizes:
    """:class:`EnvSizes` of ``env``, read from its specs (any number of parallel copies).

    Raises:
        KeyError: if the env lacks one of the keys above, naming it.

    Examples:
        >>> from fop_modules.envs import MatrixGameEnv
        >>> sizes = env_sizes(MatrixGameEnv(num_envs=16))  # the paper's game: 2 agents, 3 actions
        >>> sizes.n_agents, sizes.discrete, sizes.action_dim, sizes.masked
        (2, True, 3, True)
    """
    observations, actions = env.full_observation_spec, env.full_action_spec
    for key, specs in ((OBS_KEY, observations), (STATE_KEY, observations), (ACTION_KEY, actions)):
        if key not in specs.keys(True):
            raise KeyError(
                f"env_sizes: the env has no {key!r} spec; FOP's envs carry ('agents', 'observation'), "
                "'state' and ('agents', 'action') (the own-env tutorial shows how to add them)"
            )
    obs, action = observations[OBS_KEY], actions[ACTION_KEY]
    discrete = action.dtype in (torch.int64, torch.int32)
    low = high = None
    if not discrete:
        low, high = action.space.low.min().item(), action.space.high.max().item()
    return EnvSizes(
        n_agents=obs.shape[-2],
        obs_dim=obs.shape[-1],
        state_dim=observations[STATE_KEY].shape[-1],
        discrete=discrete,
        action_dim=action.space.n if discrete else action.shape[-1],
        masked=MASK_KEY in observations.keys(True),
        low=low,
        high=high,
    )
