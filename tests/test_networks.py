"""Per-agent networks: shapes over batch shapes, agent ids, masks, action bounds, bad input."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from fop_modules import networks
from fop_modules.networks import AgentMLP

N, OBS, A = 3, 4, 5
BATCH_SHAPES = [(), (2,), (2, 5)]
OBS_KEY = ("agents", "observation")
MASK_KEY = ("agents", "action_mask")
ACTION_KEY = ("agents", "action")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _td(batch, extra=None, obs_dim=OBS):
    return TensorDict({OBS_KEY: torch.randn(*batch, N, obs_dim), **(extra or {})}, batch_size=batch)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_agent_mlp_shapes(batch):
    net = AgentMLP(OBS, 2, N, hidden=(8,))
    assert net(torch.randn(*batch, N, OBS)).shape == (*batch, N, 2)
    # several inputs are concatenated on the feature dimension
    net = AgentMLP(OBS + 1, 2, N, hidden=(8,))
    assert net(torch.randn(*batch, N, OBS), torch.randn(*batch, N, 1)).shape == (*batch, N, 2)


def test_agent_id_distinguishes_agents():
    x = torch.randn(1, 4).expand(N, 4)  # every agent sees the same input
    with_id = AgentMLP(4, 3, N, hidden=(8,), agent_id=True)(x)
    without = AgentMLP(4, 3, N, hidden=(8,), agent_id=False)(x)
    assert not torch.allclose(with_id[0], with_id[1])
    assert torch.allclose(without[0], without[1]) and torch.allclose(without[1], without[2])


def test_agent_mlp_shares_parameters_across_agents():
    net = AgentMLP(4, 3, N, hidden=(8,), agent_id=False)
    x = torch.randn(7, N, 4)
    out = net(x)
    assert torch.allclose(out[:, 1], net(x[:, [1, 1, 1]])[:, 0])


def test_last_layer_scale_gives_near_constant_output():
    net = AgentMLP(4, 2, N, hidden=(8,), last_layer_scale=0.0)
    out = net(10 * torch.randn(6, N, 4))
    assert torch.equal(out, torch.zeros_like(out))  # zero weights and bias


@pytest.mark.parametrize("shape", [(2, N + 1, OBS), (2, N, OBS + 1), (OBS,)])
def test_agent_mlp_bad_shape_raises(shape):
    with pytest.raises(ValueError, match="AgentMLP expects"):
        AgentMLP(OBS, 2, N)(torch.randn(shape))


def test_agent_mlp_bad_sizes_raise():
    with pytest.raises(ValueError, match="in_features"):
        AgentMLP(0, 2, N)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_discrete_actor_respects_mask(batch):
    actor = networks.discrete_actor(N, OBS, A, hidden=(8,))
    mask = torch.rand(*batch, 50, N, A) > 0.5
    mask[..., 0] |= ~mask.any(-1)  # at least one available action
    td = _td((*batch, 50), {MASK_KEY: mask})
    action = actor(td)[ACTION_KEY]
    assert action.shape == (*batch, 50, N)
    assert mask.gather(-1, action.unsqueeze(-1)).all()
    assert td["agents", "logits"].shape == (*batch, 50, N, A)


def test_discrete_actor_one_available_action_is_deterministic():
    actor = networks.discrete_actor(N, OBS, A, hidden=(8,))
    mask = torch.zeros(20, N, A, dtype=torch.bool)
    mask[..., 3] = True
    assert (actor(_td((20,), {MASK_KEY: mask}))[ACTION_KEY] == 3).all()


def test_unmasked_discrete_actor_samples():
    actor = networks.discrete_actor(N, OBS, A, hidden=(8,), masked=False)
    action = actor(_td((7,)))[ACTION_KEY]
    assert action.shape == (7, N)
    assert ((action >= 0) & (action < A)).all()


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_continuous_actor_bounds_and_centre(batch):
    actor = networks.continuous_actor(N, OBS, 2, low=-10.0, high=10.0, hidden=(8,))
    td = actor(_td((*batch, 64)))
    action = td[ACTION_KEY]
    assert action.shape == (*batch, 64, N, 2)
    assert ((action >= -10) & (action <= 10)).all()
    # small init_scale: pre-tanh mean ~ 0 (centre of the box) and pre-tanh std ~ 1
    assert td["agents", "loc"].abs().max() < 0.1
    assert torch.allclose(td["agents", "scale"], torch.ones(()), atol=0.05)


def test_continuous_actor_bad_bounds():
    with pytest.raises(ValueError, match="high > low"):
        networks.continuous_actor(N, OBS, 1, low=1.0, high=1.0)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_critic_and_value_shapes(batch):
    td = _td(batch, {ACTION_KEY: torch.randn(*batch, N, 2)})
    assert networks.discrete_critic(N, OBS, A, hidden=(8,))(td.clone())[
        "agents", "action_value"].shape == (*batch, N, A)
    assert networks.continuous_critic(N, OBS, 2, hidden=(8,))(td.clone())[
        "agents", "state_action_value"].shape == (*batch, N, 1)
    assert networks.value_network(N, OBS, hidden=(8,))(td.clone())[
        "agents", "state_value"].shape == (*batch, N, 1)


def test_continuous_critic_depends_on_action():
    critic = networks.continuous_critic(N, OBS, 1, hidden=(8,))
    td = _td((4,), {ACTION_KEY: torch.zeros(4, N, 1)})
    a = critic(td.clone())["agents", "state_action_value"]
    td[ACTION_KEY] = torch.ones(4, N, 1)
    b = critic(td.clone())["agents", "state_action_value"]
    assert not torch.allclose(a, b)


def test_first_layer_with_agent_id_equals_the_layer_on_the_appended_id():
    from fop_modules.networks import append_agent_id, first_layer_with_agent_id

    torch.manual_seed(0)
    layer = torch.nn.Linear(5 + 3, 7)
    x = torch.randn(4, 2, 3, 5)  # [*B, N=3, F=5]
    torch.testing.assert_close(first_layer_with_agent_id(layer, x), layer(append_agent_id(x)))
