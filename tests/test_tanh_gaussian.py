"""The tanh-Gaussian policy's log-probability against a float64 change of variables, in the normal
range and where the policy saturates (tanh(x) rounds to +-1 in float32), through
``networks.continuous_actor`` and through FOPLoss's eq. (9), (10) and (11)."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import NormalParamExtractor
from torch import nn

from fop_modules import FOPLoss, FOPMixer, baselines, networks
from fop_modules.envs import DifferentialGameEnv
from fop_modules.tanh_gaussian import TanhGaussian, log_one_minus_tanh_squared

N, OBS, S = 2, 3, 4  # agents, observation size, state size
OBS_KEY = ("agents", "observation")

# (pre-tanh mean, pre-tanh std, low, high): saturated, and the normal range
SATURATED = [(10.0, 0.5, -1.0, 1.0), (10.0, 0.05, -1.0, 1.0), (-10.0, 0.5, -10.0, 10.0),
             (10.0, 0.05, 0.0, 3.0)]
NORMAL = [(0.3, 1.0, -1.0, 1.0), (-1.5, 0.3, -10.0, 10.0)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pin_policy(actor: nn.Module, params: TensorDictBase, loc: float, std: float) -> None:
    """Sets ``params`` (the parameters of ``actor``, a ``networks.continuous_actor``) so that the
    pre-tanh mean and std are ``loc`` and ``std`` for every input: zero last-layer weight, its bias
    set through the actor's NormalParamExtractor scale mapping."""
    extractor = next(m for m in actor.modules() if isinstance(m, NormalParamExtractor))
    raw = torch.linspace(-20, 20, 400_001)
    scale_raw = raw[(extractor.scale_mapping(raw) - std).abs().argmin()]
    *_, weight, bias = params.values(True, True)  # the last Linear layer's
    action_dim = bias.shape[-1] // 2
    with torch.no_grad():
        weight.zero_()
        bias[:action_dim] = loc
        bias[action_dim:] = scale_raw


def fixed_actor(loc: float, std: float, low: float, high: float, action_dim: int = 2):
    """``networks.continuous_actor`` with pre-tanh mean ``loc`` and std ``std`` for every input."""
    actor = networks.continuous_actor(N, OBS, action_dim, low=low, high=high, hidden=(8,))
    pin_policy(actor, TensorDict.from_module(actor), loc, std)
    return actor


def reference_log_prob(x: torch.Tensor, loc: float, std: float, low: float, high: float):
    """log pi(u), u = c + h tanh(x), in float64 from the pre-tanh sample x:
    log N(x; loc, std^2) - sum_d [log(1 - tanh(x_d)^2) + log h], 1 - tanh^2 = 1 / cosh^2."""
    x = x.double()
    log_normal = -0.5 * ((x - loc) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    log_det = -2 * torch.log(torch.cosh(x)) + math.log((high - low) / 2)
    return (log_normal - log_det).sum(-1)


def draw_and_score(dist, method: str):
    """(action, dist.log_prob(action), the pre-tanh sample x of that action) for ``dist.sample``
    or ``dist.rsample``; x is drawn again from the same random state (both classes draw x from
    their base Normal, then squash it)."""
    state = torch.get_rng_state()
    action = getattr(dist, method)()
    log_prob = dist.log_prob(action)
    torch.set_rng_state(state)
    x = getattr(dist.base_dist, method)()
    assert torch.equal(dist.transforms[0](x), action)  # the same draw
    return action, log_prob, x


@pytest.mark.parametrize("method", ["sample", "rsample"])
@pytest.mark.parametrize("loc, std, low, high", SATURATED + NORMAL)
def test_log_prob_matches_float64_change_of_variables(loc, std, low, high, method):
    actor = fixed_actor(loc, std, low, high)
    td = TensorDict({OBS_KEY: torch.randn(4096, N, OBS)}, [4096])
    dist = actor.get_dist(td)
    assert torch.allclose(dist.loc, torch.tensor(loc))
    assert torch.allclose(dist.scale, torch.tensor(std), rtol=1e-3)
    action, log_prob, x = draw_and_score(dist, method)
    reference = reference_log_prob(x, loc, std, low, high)
    if (loc, std) == (10.0, 0.5) and (low, high) == (-1.0, 1.0):  # the numbers, per dimension
        assert reference.mean().item() / 2 == pytest.approx(17.9, abs=0.05)
    assert ((action >= low) & (action <= high)).all()
    assert (log_prob.double() - reference).abs().max() < 1e-3


@pytest.mark.parametrize("loc, std, low, high", SATURATED[:2])
def test_sample_and_log_prob_score_their_own_draw(loc, std, low, high):
    dist = TanhGaussian(torch.full((512, 1), loc), torch.full((512, 1), std), low=low, high=high)
    for reparameterise in (False, True):
        state = torch.get_rng_state()
        action, log_prob = dist.rsample_and_log_prob() if reparameterise else dist.sample_and_log_prob()
        torch.set_rng_state(state)
        x = dist.base_dist.rsample() if reparameterise else dist.base_dist.sample()
        assert (log_prob.double() - reference_log_prob(x, loc, std, low, high)).abs().max() < 1e-3


def test_an_action_it_did_not_draw_is_inverted():
    dist = TanhGaussian(torch.zeros(3, 1), torch.ones(3, 1), low=-2.0, high=2.0)
    action = torch.tensor([[-1.0], [0.0], [1.5]])
    x = torch.atanh(action / 2)
    assert torch.allclose(dist.log_prob(action).double(), reference_log_prob(x, 0.0, 1.0, -2.0, 2.0))


def test_log_one_minus_tanh_squared_is_finite_where_the_naive_form_is_not():
    x = torch.tensor([-30.0, -3.0, 0.0, 0.5, 3.0, 30.0])
    exact = -2 * torch.log(torch.cosh(x.double()))
    assert torch.allclose(log_one_minus_tanh_squared(x).double(), exact, atol=1e-5)
    assert torch.isinf(torch.log(1 - torch.tanh(x[-1]) ** 2))  # what the stable form avoids


def _zero(params) -> None:
    with torch.no_grad():
        for p in params:
            p.zero_()


def saturated_moments(mu: float, sigma: float, half_width: float) -> tuple[float, float]:
    """Mean and variance of log pi(u) for u = h tanh(x), x ~ N(mu, sigma^2), mu >> sigma > 0:
    log pi = log N(x) + 2x - 2 log 2 - log h + 2 softplus(-2x), the last term ~ e^(-2 mu), so
    E = -1/2 log(2 pi e sigma^2) + 2 mu - 2 log 2 - log h, Var = Var(-z^2 / 2 + 2 sigma z) = 1/2 + 4 sigma^2."""
    mean = -0.5 * math.log(2 * math.pi * math.e * sigma**2) + 2 * mu - 2 * math.log(2) - math.log(half_width)
    return mean, 0.5 + 4 * sigma**2


def transitions(batch: int, n_agents: int, obs: int, state: int, bound: float) -> TensorDict:
    """Random transitions with a team reward of 0, nothing done."""
    def step():
        return {"agents": TensorDict({"observation": torch.randn(batch, n_agents, obs)}, [batch, n_agents]),
                "state": torch.randn(batch, state)}

    flag = torch.zeros(batch, 1, dtype=torch.bool)
    td = TensorDict({**step(), "next": {**step(), "reward": torch.zeros(batch, 1), "done": flag,
                                        "terminated": flag.clone()}}, [batch])
    td["agents", "action"] = (torch.rand(batch, n_agents, 1) * 2 - 1) * bound
    return td


def test_fop_loss_scores_a_saturated_policy_exactly():
    """Eq. (9), (10) and (11) with Q_i = V_i = Q_jt = 0, reward 0 and alpha 1 read log pi alone:
    the entropy metric is -E[sum_i log pi_i], the TD error gamma |sum_i log pi_i(u')|, the V loss
    E[(log pi_i)^2]; the pre-tanh policy is N(10, 0.5^2) on [-1, 1]."""
    mu, sigma, batch, gamma = 10.0, 0.5, 8192, 0.99
    critic = networks.continuous_critic(N, OBS, 1, hidden=(8,))
    mixer = FOPMixer(N, S, 1, discrete_actions=False, n_heads=2, v_hidden=8)
    value = networks.value_network(N, OBS, hidden=(8,))
    for module in (critic, mixer, value):
        _zero(module.parameters())
    loss = FOPLoss(fixed_actor(mu, sigma, -1.0, 1.0, action_dim=1), critic, mixer,
                   action_space="continuous", value_network=value, num_qvalue_nets=1, alpha_init=1.0)
    loss.make_value_estimator(gamma=gamma)
    out = loss(transitions(batch, N, OBS, S, bound=1.0))
    assert out["q_jt"] == 0  # the zeroed mixer: the metrics below are log pi alone
    mean, variance = saturated_moments(mu, sigma, half_width=1.0)  # 17.888, 1.5
    assert -out["entropy"].item() == pytest.approx(N * mean, abs=0.1)  # eq. (11)'s rsample
    assert out["td_error"].item() == pytest.approx(gamma * N * mean, abs=0.1)  # eq. (9)'s sample
    assert out["loss_value"].item() == pytest.approx(mean**2 + variance, rel=0.01)  # eq. (10)

    # eq. (11)'s gradient on the pre-tanh mean: d/dmu E[-log(1 - tanh(x)^2)] = E[2 tanh x] = 2, so
    # the entropy term pulls a saturated mean back toward the centre of the box.
    *_, last_bias = loss.actor_network_params.values(True, True)
    (grad,) = torch.autograd.grad(out["loss_actor"], [last_bias])
    assert grad[0].item() == pytest.approx(2.0, abs=0.01)  # [loc, scale] of the last layer: loc


def test_masac_scores_a_saturated_policy_exactly():
    """Our MASAC baseline (TorchRL's SACLoss) draws and scores in one call (``rsample_and_log_prob``)
    for its actor loss and its TD target, so its log pi is exact at saturation too: with zero
    critics, reward 0 and alpha 1, -entropy = E[log pi_i], loss_qvalue = gamma^2 E[(log pi_i)^2]."""
    mu, sigma, batch, bound = 10.0, 0.5, 8192, 10.0
    env = DifferentialGameEnv(num_envs=2, action_bound=bound)
    config = baselines.MASACConfig(hidden=[16], num_qvalue_nets=1)
    baseline = baselines.masac(env, config)
    loss = baseline.loss
    pin_policy(loss.actor_network, loss.actor_network_params, mu, sigma)
    for params in (loss.qvalue_network_params, loss.target_qvalue_network_params):
        _zero(params.values(True, True))
    out = loss(baseline.process_batch(transitions(batch, 2, 1, 1, bound)))
    mean, variance = saturated_moments(mu, sigma, half_width=bound)  # 15.585, 1.5
    assert -out["entropy"].item() == pytest.approx(mean, abs=0.05)
    assert out["loss_qvalue"].item() == pytest.approx(config.gamma**2 * (mean**2 + variance), rel=0.01)
