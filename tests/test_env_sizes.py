"""env_sizes: the sizes FOP's networks and mixer need, read from every env kind's specs."""

from __future__ import annotations

import pytest
from torchrl.envs import VmasEnv

from fop_modules.envs import DifferentialGameEnv, EnvSizes, MatrixGameEnv, SMACEnv, env_sizes, make_vmas_env


def test_discrete_games_give_their_action_count_and_mask():
    assert env_sizes(MatrixGameEnv([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 3.0]], num_envs=5)) == EnvSizes(
        n_agents=2, obs_dim=1, state_dim=1, discrete=True, action_dim=4, masked=True, low=None, high=None)


def test_continuous_games_give_their_action_box():
    assert env_sizes(DifferentialGameEnv()) == EnvSizes(
        n_agents=2, obs_dim=1, state_dim=1, discrete=False, action_dim=1, masked=False, low=-10.0, high=10.0)


def test_vmas_sizes_do_not_depend_on_the_number_of_envs():
    one, many = (env_sizes(make_vmas_env("balance", num_envs=n, seed=0)) for n in (1, 6))
    assert one == many == EnvSizes(n_agents=3, obs_dim=16, state_dim=48, discrete=False, action_dim=2,
                                   masked=False, low=-1.0, high=1.0)


def test_smac_maps_give_masked_discrete_actions():
    sizes = env_sizes(SMACEnv("3s_vs_3z", backend="fake", seed=0))
    assert (sizes.n_agents, sizes.discrete, sizes.masked, sizes.action_dim) == (3, True, True, 9)  # 6 + 3 enemies


def test_an_env_without_fops_keys_is_named_in_the_error():
    raw = VmasEnv("balance", num_envs=1, seed=0)  # VMAS's own layout: no global "state"
    with pytest.raises(KeyError, match="no 'state' spec; FOP's envs carry"):
        env_sizes(raw)
