"""FOPLoss: outputs, gradient isolation per objective, hand-computed targets, masks, temperatures,
TorchRL conventions (keys, value estimators, target updaters) and constructor errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from tensordict.utils import unravel_key
from torch import nn
from torchrl.modules import MaskedCategorical, ProbabilisticActor, TanhNormal
from torchrl.objectives import HardUpdate, SoftUpdate, ValueEstimators

from fop_modules import FOPLoss, FOPMixer, LinearMixer, QattenWeights, networks
from fop_modules.loss import ContinuousFOPLoss, DiscreteFOPLoss

N, OBS, A, S, B = 2, 3, 3, 4, 6  # agents, obs size, actions, state size, batch
D = 1  # continuous action size
HIDDEN = (8,)
OBS_KEY = ("agents", "observation")
MASK_KEY = ("agents", "action_mask")
ACTION_KEY = ("agents", "action")
METRICS = ("alpha", "alpha_i", "entropy", "q_jt", "td_error")
LN3 = math.log(3.0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ============================================================================ builders


def _sample_available(mask):
    return torch.distributions.Categorical(probs=mask.float()).sample()


def discrete_td(batch=(B,), mask=None, next_mask=None, reward=None, terminated=False,
                reward_key="reward"):
    """A batch of discrete transitions; actions are drawn among the available ones."""
    def step(m):
        return {OBS_KEY: torch.randn(*batch, N, OBS), "state": torch.randn(*batch, S),
                MASK_KEY: torch.ones(*batch, N, A, dtype=torch.bool) if m is None else m}
    current, nxt = step(mask), step(next_mask)
    flag = torch.full((*batch, 1), bool(terminated))
    nxt.update({reward_key: torch.randn(*batch, 1) if reward is None else reward,
                "done": flag.clone(), "terminated": flag.clone()})
    return TensorDict({**current, ACTION_KEY: _sample_available(current[MASK_KEY]), "next": nxt},
                      batch_size=batch)


def continuous_td(batch=(B,)):
    def step():
        return {OBS_KEY: torch.randn(*batch, N, OBS), "state": torch.randn(*batch, S)}
    flag = torch.zeros(*batch, 1, dtype=torch.bool)
    nxt = {**step(), "reward": torch.randn(*batch, 1), "done": flag, "terminated": flag.clone()}
    return TensorDict({**step(), ACTION_KEY: torch.rand(*batch, N, D) * 2 - 1, "next": nxt},
                      batch_size=batch)


def discrete_loss(value=False, nq=2, mixer="fop", **kwargs):
    if mixer == "fop":
        mix = FOPMixer(N, S, A, n_heads=2, v_hidden=8, advantage_form="paper")  # eq. (7) as written
    elif mixer == "qatten":
        mix = FOPMixer(N, S, A, n_heads=2, v_hidden=8, advantage_form="stopgrad",
                       qatten=QattenWeights(N, S, 2, n_heads=2, hypernet_embed=8, embed_dim=4))
    else:
        mix = LinearMixer(N, S, A, hidden=8)
    return FOPLoss(
        networks.discrete_actor(N, OBS, A, hidden=HIDDEN),
        networks.discrete_critic(N, OBS, A, hidden=HIDDEN),
        mix,
        action_space="discrete",
        value_network=networks.value_network(N, OBS, hidden=HIDDEN) if value else None,
        num_qvalue_nets=nq,
        num_actions=A,
        **kwargs,
    )


def continuous_loss(nq=2, **kwargs):
    return FOPLoss(
        networks.continuous_actor(N, OBS, D, low=-1.0, high=1.0, hidden=HIDDEN, init_scale=None),
        networks.continuous_critic(N, OBS, D, hidden=HIDDEN),
        FOPMixer(N, S, D, discrete_actions=False, n_heads=2, v_hidden=8, advantage_form="paper"),
        action_space="continuous",
        value_network=networks.value_network(N, OBS, hidden=HIDDEN),
        num_qvalue_nets=nq,
        **kwargs,
    )


VARIANTS = {
    "discrete-analytic": (lambda **kw: discrete_loss(**kw), discrete_td),
    "discrete-value": (lambda **kw: discrete_loss(value=True, **kw), discrete_td),
    "discrete-qatten": (lambda **kw: discrete_loss(mixer="qatten", **kw), discrete_td),
    "discrete-linear": (lambda **kw: discrete_loss(mixer="linear", **kw), discrete_td),
    "continuous": (lambda **kw: continuous_loss(**kw), continuous_td),
}


# ---------------------------------------------------------------------------- hand-set modules


class _Table(nn.Module):
    """Output = a learnable table [N, K] for every sample (inputs only set the batch shape)."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(torch.as_tensor(table, dtype=torch.float))

    def forward(self, obs):
        return self.table.expand(*obs.shape[:-1], self.table.shape[-1]) + 0 * obs[..., :1]


def table_critic(table):
    return TensorDictModule(_Table(table), in_keys=[OBS_KEY], out_keys=[("agents", "action_value")])


def table_value(values):
    table = torch.as_tensor(values, dtype=torch.float).reshape(N, 1)
    return TensorDictModule(_Table(table), in_keys=[OBS_KEY], out_keys=[("agents", "state_value")])


def table_actor(logits):
    module = TensorDictModule(_Table(logits), in_keys=[OBS_KEY], out_keys=[("agents", "logits")])
    return ProbabilisticActor(module, in_keys={"logits": ("agents", "logits"), "mask": MASK_KEY},
                              out_keys=[ACTION_KEY], distribution_class=MaskedCategorical)


def twin(params, k, leaf=None):
    """Twin k's slice of the critic / mixer parameters (or of ``leaf``, a tensor laid out like
    them). Twins are stacked on a leading dim, which a single critic (num_qvalue_nets=1) may or
    may not carry: the tensordict's batch dims say which."""
    if leaf is not None:
        return leaf[k] if params.batch_dims > 0 else leaf
    return params[k] if params.batch_dims > 0 else params


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


@torch.no_grad()
def set_mixer(params, k, key_bias, agent_bias=(0.0, 0.0), action_bias=(0.0, 0.0), v_jt=0.0):
    """One-head FOPMixer with zero weights: lambda_i = |kb| sig(ab_i) sig(cb_i), V_jt = v_jt."""
    for value in params.values(True, True):
        twin(params, k, value).zero_()
    twin(params, k, params["head_keys", "bias"]).fill_(key_bias)
    twin(params, k, params["head_agents", "bias"]).copy_(torch.tensor(agent_bias))
    twin(params, k, params["head_actions", "bias"]).copy_(torch.tensor(action_bias))
    twin(params, k, params["v_jt", "2", "bias"]).fill_(v_jt)


def hand_lambda(key_bias, agent_bias=(0.0, 0.0), action_bias=(0.0, 0.0)):
    factors = zip(agent_bias, action_bias)
    return torch.tensor([abs(key_bias) * _sig(a) * _sig(c) for a, c in factors])


@torch.no_grad()
def set_table(params, k, table):
    table = torch.as_tensor(table, dtype=torch.float).reshape(N, -1)
    twin(params, k, params["module", "table"]).copy_(table)


def hand_loss(q_table, nq=1, alpha=0.5, value=None, logits=None, **kwargs):
    """Discrete loss whose critic, actor, V and mixer are all known numbers."""
    return FOPLoss(
        table_actor(torch.zeros(N, A) if logits is None else logits),
        table_critic(q_table),
        FOPMixer(N, S, A, n_heads=1, advantage_form="paper"),  # the hand values use eq. (7) as written
        action_space="discrete",
        value_network=None if value is None else table_value(value),
        num_qvalue_nets=nq,
        alpha_init=alpha,
        num_actions=A,
        **kwargs,
    )


# ---------------------------------------------------------------------------- gradient bookkeeping

GROUPS = ("actor_network_params", "qvalue_network_params", "mixer_params", "value_network_params",
          "log_alpha")


def group_tensors(loss):
    """Every tensor the loss trains, by group. Gradients are taken w.r.t. these tensors with
    autograd.grad, so the check holds whether or not they are leaves (registration itself is
    tested in test_critic_and_mixer_are_registered_parameters)."""
    groups = {}
    if loss.learn_alpha:
        groups["log_alpha"] = [loss.log_alpha]
    for name in GROUPS[:-1]:
        if name == "value_network_params" and loss.value_network is None:
            continue
        groups[name] = [t for t in getattr(loss, name).values(True, True) if t.requires_grad]
    return groups


def grad_groups(objective, loss):
    """Names of the groups that ``objective`` sends a non-zero gradient to."""
    groups = group_tensors(loss)
    names = [name for name, tensors in groups.items() for _ in tensors]
    flat = [t for tensors in groups.values() for t in tensors]
    grads = torch.autograd.grad(objective, flat, allow_unused=True, retain_graph=True)
    for grad in grads:
        assert grad is None or torch.isfinite(grad).all()
    return {name for name, grad in zip(names, grads) if grad is not None and grad.abs().sum() > 0}


def all_grads_finite(loss):
    return all(torch.isfinite(p.grad).all() for p in loss.parameters() if p.grad is not None)


# ============================================================================ outputs


@pytest.mark.parametrize("learn_alpha", [False, True])
@pytest.mark.parametrize("nq", [1, 2])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_output_keys_and_metrics(variant, nq, learn_alpha):
    build, data = VARIANTS[variant]
    loss = build(nq=nq, learn_alpha=learn_alpha)
    out = loss(data())
    expected = {"loss_qvalue", "loss_actor", *METRICS}
    if loss.value_network is not None:
        expected.add("loss_value")
    if learn_alpha:
        expected.add("loss_alpha")
    assert set(out.keys()) == expected
    for key in expected:
        assert torch.isfinite(out[key]).all(), key
    for key in (k for k in expected if k.startswith("loss_")):
        assert out[key].shape == () and out[key].requires_grad, key
    for key in METRICS:
        assert not out[key].requires_grad and out[key].grad_fn is None, key
    assert out["alpha_i"].shape == (N,)
    assert out["alpha"].shape == ()
    assert out["td_error"] >= 0


def test_value_network_presence_decides_loss_value():
    assert "loss_value" not in discrete_loss()(discrete_td()).keys()
    assert "loss_value" in discrete_loss(value=True)(discrete_td()).keys()
    with pytest.raises(RuntimeError, match="value_network"):
        discrete_loss().value_loss(discrete_td())
    with pytest.raises(RuntimeError, match="learn_alpha"):
        discrete_loss().alpha_loss(torch.zeros(B, 1))


@pytest.mark.parametrize("variant", ["discrete-analytic", "continuous"])
def test_batch_with_time_dimension(variant):
    build, data = VARIANTS[variant]
    out = build(nq=2)(data(batch=(2, 3)))
    assert all(torch.isfinite(out[k]).all() for k in out.keys())


# ============================================================================ gradient isolation

OBJECTIVE_TARGETS = {
    "loss_qvalue": {"qvalue_network_params", "mixer_params"},
    "loss_value": {"value_network_params"},
    "loss_actor": {"actor_network_params"},
    "loss_alpha": {"log_alpha"},
}


ISOLATION_CASES = [
    (objective, variant)
    for variant in ("discrete-analytic", "discrete-value", "discrete-qatten", "continuous")
    for objective in OBJECTIVE_TARGETS
    # the analytic V_i (no value_network) has no parameters and no loss_value
    if objective != "loss_value" or variant in ("discrete-value", "continuous")
]


@pytest.mark.parametrize("nq", [1, 2])
@pytest.mark.parametrize("objective, variant", ISOLATION_CASES)
def test_gradient_isolation(objective, variant, nq):
    build, data = VARIANTS[variant]
    loss = build(nq=nq, learn_alpha=True)
    out = loss(data())
    assert grad_groups(out[objective], loss) == OBJECTIVE_TARGETS[objective]
    if objective == "loss_qvalue":
        # every twin critic and every twin mixer is trained by its own TD error
        for group in ("qvalue_network_params", "mixer_params"):
            tensors = group_tensors(loss)[group]
            grads = torch.autograd.grad(out[objective], tensors, retain_graph=True,
                                        allow_unused=True)
            for k in range(nq):
                assert any(g is not None and twin(getattr(loss, group), k, g).abs().sum() > 0
                           for g in grads), (group, k)


@pytest.mark.parametrize("variant", ["discrete-analytic", "discrete-value", "continuous"])
def test_gradient_isolation_of_the_objective_methods(variant):
    """Same check through the public per-objective methods (Algorithm 1 calls them in turn)."""
    build, data = VARIANTS[variant]
    loss, td = build(nq=2, learn_alpha=True), data()
    calls = {
        "loss_qvalue": lambda: loss.qvalue_loss(td)[0],
        "loss_actor": lambda: loss.actor_loss(td)[0],
        "loss_alpha": lambda: loss.alpha_loss(loss.actor_loss(td)[1]["log_prob_jt"]),
    }
    if loss.value_network is not None:
        calls["loss_value"] = lambda: loss.value_loss(td)[0]
    for objective, call in calls.items():
        assert grad_groups(call(), loss) == OBJECTIVE_TARGETS[objective], objective


@pytest.mark.parametrize("nq", [1, 2])
@pytest.mark.parametrize("variant", ["discrete-analytic", "discrete-value", "continuous"])
def test_backward_fills_only_the_right_parameter_grads(variant, nq):
    """As an optimiser sees it: .grad of the registered parameters after backward."""
    build, data = VARIANTS[variant]
    loss, td = build(nq=nq, learn_alpha=True), data()
    for objective, targets in OBJECTIVE_TARGETS.items():
        if objective == "loss_value" and loss.value_network is None:
            continue
        loss.zero_grad(set_to_none=True)
        loss(td)[objective].backward()
        hit = set()
        for name, param in loss.named_parameters():
            group = name.split(".")[0]
            assert group in GROUPS, f"unexpected parameter {name}"
            if param.grad is not None and param.grad.abs().sum() > 0:
                hit.add(group)
        assert hit == targets, objective
        assert all_grads_finite(loss)


def graph_leaves(tensor):
    """The leaf tensors whose gradients a backward from ``tensor`` would compute."""
    leaves, seen, stack = [], set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "AccumulateGrad":
            leaves.append(node.variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


@pytest.mark.parametrize("variant", ["discrete-analytic", "discrete-value", "continuous"])
def test_backward_computes_no_gradient_that_reaches_no_parameter(variant):
    """Regression: eq. (11) read the critics with detached parameters, which ``to_module`` wrapped
    in fresh leaf Parameters, so the actor's backward computed every critic's weight gradients
    (14% of an MMM update's arithmetic) into tensors nothing read."""
    build, data = VARIANTS[variant]
    loss = build(nq=2, learn_alpha=True)
    out = loss(data())
    registered = {id(p) for p in loss.parameters()}
    for objective in (k for k in out.keys() if k.startswith("loss_")):
        leaves = graph_leaves(out[objective])
        assert leaves and all(id(leaf) in registered for leaf in leaves), objective


@pytest.mark.parametrize("nq", [1, 2])
@pytest.mark.parametrize("value", [False, True])
def test_critic_and_mixer_are_registered_parameters(nq, value):
    """Regression: with num_qvalue_nets=1 the critic and mixer tensors used to be non-leaf
    buffers (a 1-element list given to convert_to_functional), invisible to optimisers."""
    loss = discrete_loss(value=value, nq=nq)
    registered = {id(p) for p in loss.parameters()}
    for group in ("qvalue_network_params", "mixer_params"):
        tensors = list(getattr(loss, group).values(True, True))
        assert tensors and all(isinstance(t, nn.Parameter) and id(t) in registered
                               for t in tensors), group
        torch.optim.SGD(tensors, lr=0.1)  # an optimiser accepts them
    # one optimiser step on loss_qvalue changes the loss's critic and mixer
    before = loss.qvalue_network_params.detach().clone()
    opt = torch.optim.SGD([*loss.qvalue_network_params.values(True, True),
                           *loss.mixer_params.values(True, True)], lr=0.1)
    loss(discrete_td())["loss_qvalue"].backward()
    opt.step()
    assert not all(torch.equal(a, b) for a, b in zip(before.values(True, True),
                                                     loss.qvalue_network_params.values(True, True)))


def test_td_gradient_on_analytic_critic_skips_v_i():
    """With V_i = alpha logsumexp(Q_i / alpha) computed from Q_i itself, eq. (9) must still only
    reach Q_i through Q_i(tau_i, u_i): dL/dQ_i(a) = mean_b 2 (Q_jt - y) lambda_i 1[u_i = a]."""
    q_table = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    loss = hand_loss(q_table, alpha=0.5)
    set_mixer(loss.mixer_params, 0, 2.0, (0.0, LN3), (0.0, 0.0), v_jt=1.25)
    lam = hand_lambda(2.0, (0.0, LN3))
    td = discrete_td(terminated=True)
    loss_q, meta = loss.qvalue_loss(td)
    error = (meta["q_jt"] - td["next", "reward"]).squeeze(-1)  # [B]
    onehot = torch.nn.functional.one_hot(td[ACTION_KEY], A).float()  # [B, N, A]
    expected = (2 * error[:, None, None] * lam[None, :, None] * onehot).mean(0)
    (grad,) = torch.autograd.grad(loss_q, [loss.qvalue_network_params["module", "table"]])
    grad = twin(loss.qvalue_network_params, 0, grad)
    assert torch.allclose(grad, expected, atol=1e-5)


def test_qatten_regulariser_is_added_to_the_td_loss():
    """loss_qvalue = mean((Q_jt - y)^2 + reg(s)) with reg = coef * sum_h mean_i(logit_h^2)."""
    loss = discrete_loss(mixer="qatten", nq=1)
    loss.mixer.qatten.reg_coef = 1.0  # large enough to compare in float32
    td = discrete_td()
    torch.manual_seed(3)
    with_reg = loss.qvalue_loss(td)[0]
    with loss.mixer_params.to_module(loss.mixer):
        _, reg = loss.mixer.qatten(td["state"])
    assert (reg > 0).all()
    loss.mixer.qatten.reg_coef = 0.0
    torch.manual_seed(3)  # same next actions u'
    without = loss.qvalue_loss(td)[0]
    assert (with_reg - without).item() == pytest.approx(reg.mean().item(), rel=1e-4)


# ============================================================================ hand-computed targets

Q_TABLE = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])


def _soft_v(q, alpha, mask=None):
    if mask is not None:
        q = q.masked_fill(~mask, -torch.inf)
    return alpha * torch.logsumexp(q / alpha, -1)


@pytest.mark.parametrize("masked", [False, True])
def test_terminal_target_is_reward_and_loss_by_hand(masked):
    alpha = 0.5
    loss = hand_loss(Q_TABLE, alpha=alpha)
    set_mixer(loss.mixer_params, 0, 2.0, (0.0, LN3), (LN3, 0.0), v_jt=1.25)
    lam = hand_lambda(2.0, (0.0, LN3), (LN3, 0.0))
    mask = torch.ones(B, N, A, dtype=torch.bool)
    if masked:
        mask[:, 0, 2] = False  # agent 0 loses its best action: V_0 must ignore it
        mask[::2, 1, 0] = False
    td = discrete_td(mask=mask, terminated=True)
    reward = td["next", "reward"]
    assert torch.equal(loss._td_target(td), reward)
    v = _soft_v(Q_TABLE.expand(B, N, A), alpha, mask)  # [B, N]
    chosen = Q_TABLE.expand(B, N, A).gather(-1, td[ACTION_KEY].unsqueeze(-1)).squeeze(-1)
    q_jt = (lam * (chosen - v)).sum(-1, keepdim=True) + 1.25  # eq. (7)
    out = loss(td)
    expected_loss = ((q_jt - reward) ** 2).mean()
    assert out["loss_qvalue"].item() == pytest.approx(expected_loss.item(), rel=1e-5)
    assert out["q_jt"].item() == pytest.approx(q_jt.mean().item(), rel=1e-5, abs=1e-6)
    assert out["td_error"].item() == pytest.approx((q_jt - reward).abs().mean().item(), rel=1e-5)
    assert torch.allclose(loss.joint_q(td)["v_i"].squeeze(-1), v, atol=1e-5)


def _one_action_mask(batch=(B,), actions=(2, 0)):
    mask = torch.zeros(*batch, N, A, dtype=torch.bool)
    for i, a in enumerate(actions):
        mask[..., i, a] = True
    return mask


def test_one_step_target_with_gamma_analytic_v():
    """Next state: one available action per agent, so u' is known, log pi = 0 and the soft
    advantage Q_i - V_i is 0: y = r + gamma * V_jt^target(s')."""
    loss = hand_loss(Q_TABLE, alpha=0.5).make_value_estimator(gamma=0.5)
    set_mixer(loss.mixer_params, 0, 2.0, v_jt=1.0)
    set_mixer(loss.target_mixer_params, 0, 2.0, v_jt=3.0)  # the target net, not the online one
    td = discrete_td(next_mask=_one_action_mask())
    y = loss._td_target(td)
    assert torch.allclose(y, td["next", "reward"] + 0.5 * 3.0, atol=1e-6)


@pytest.mark.parametrize("nq", [1, 2])
def test_one_step_target_with_gamma_value_network(nq):
    """Paper form (V network): y = r + gamma * (min_k Q_jt^target_k(s', u') - alpha * 0)."""
    alpha, gamma = 0.7, 0.5
    loss = hand_loss(Q_TABLE, nq=nq, alpha=alpha, value=[0.5, -1.0])
    loss.make_value_estimator(gamma=gamma)
    target_q = torch.tensor([[9.0, 9.0, 2.0], [-3.0, 9.0, 9.0]])  # u' = (2, 0)
    target_v = torch.tensor([1.5, 1.0])
    with torch.no_grad():
        loss.target_value_network_params["module", "table"].copy_(target_v.reshape(N, 1))
    q_jt_targets = []
    for k, (kb, v_jt) in enumerate([(2.0, 3.0), (4.0, 2.5)][:nq]):
        set_table(loss.target_qvalue_network_params, k, target_q)
        set_mixer(loss.target_mixer_params, k, kb, (0.0, LN3), v_jt=v_jt)
        lam = hand_lambda(kb, (0.0, LN3))
        adv = torch.tensor([2.0 - 1.5, -3.0 - 1.0])
        q_jt_targets.append((lam * adv).sum() + v_jt)
    for k in range(nq):  # online nets differ from the targets
        set_mixer(loss.mixer_params, k, 1.0, v_jt=-7.0)
    expected_next = min(q_jt_targets)
    td = discrete_td(next_mask=_one_action_mask(actions=(2, 0)))
    y = loss._td_target(td)
    assert torch.allclose(y, td["next", "reward"] + gamma * expected_next, atol=1e-5)
    # loss_qvalue by hand: online Q_jt = sum_i 0.25 (Q_i(u_i) - V_i) - 7, V_i from the V network
    chosen = Q_TABLE.expand(B, N, A).gather(-1, td[ACTION_KEY].unsqueeze(-1)).squeeze(-1)
    q_jt = (0.25 * (chosen - torch.tensor([0.5, -1.0]))).sum(-1, keepdim=True) - 7.0
    expected_loss = nq * ((q_jt - y) ** 2).mean()  # each twin's TD error is added
    assert loss(td)["loss_qvalue"].item() == pytest.approx(expected_loss.item(), rel=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_target_entropy_term_uniform_policy(reduction):
    """Uniform policy over 3 equal-valued actions: log pi_i(u') = -log 3 for any u'.
    V_i = c_i + alpha log 3, so Q_i - V_i = -alpha log 3 and
    y = r + gamma (sum_i lambda_i (-alpha log 3) + V_jt - alpha * red_i(-log 3))."""
    alpha, gamma = 0.4, 0.9
    q = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    loss = hand_loss(q, alpha=alpha, entropy_reduction=reduction).make_value_estimator(gamma=gamma)
    set_mixer(loss.target_mixer_params, 0, 2.0, (0.0, LN3), v_jt=0.5)
    lam = hand_lambda(2.0, (0.0, LN3))
    td = discrete_td()
    log_pi_jt = -N * LN3 if reduction == "sum" else -LN3
    expected = td["next", "reward"] + gamma * ((lam * -alpha * LN3).sum() + 0.5 - alpha * log_pi_jt)
    assert torch.allclose(loss._td_target(td), expected, atol=1e-5)


def test_entropy_reduction_difference():
    """sum vs mean only changes -alpha log pi_jt: with a uniform 3-action policy the targets differ
    by gamma * alpha * log(3) * (N - 1); with one available action they are equal."""
    alpha, gamma = 0.4, 0.9
    q = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    targets = {}
    for reduction in ("sum", "mean"):
        for name, next_mask in (("uniform", None), ("one", _one_action_mask())):
            torch.manual_seed(1)
            td = discrete_td(next_mask=next_mask)
            loss = hand_loss(q, alpha=alpha, entropy_reduction=reduction)
            loss.make_value_estimator(gamma=gamma)
            set_mixer(loss.target_mixer_params, 0, 2.0, v_jt=0.5)
            targets[reduction, name] = loss._td_target(td)
    diff = targets["sum", "uniform"] - targets["mean", "uniform"]
    assert torch.allclose(diff, torch.full_like(diff, gamma * alpha * LN3 * (N - 1)), atol=1e-5)
    assert torch.allclose(targets["sum", "one"], targets["mean", "one"])


def test_soft_value_helper():
    loss = hand_loss(Q_TABLE, alpha=0.5)
    q_all = torch.tensor([[[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]]] * 2)  # [2, N, A]
    mask = torch.tensor([[[True, True, False], [True, True, True]],
                         [[False, True, False], [True, True, False]]])
    for alpha in ([0.5, 0.5], [0.3, 2.0]):
        alpha_i = torch.tensor(alpha).reshape(N, 1)
        v = loss._soft_value(q_all, alpha_i, mask).squeeze(-1)
        expected = torch.stack([a * torch.logsumexp(q_all[:, i].masked_fill(~mask[:, i], -torch.inf)
                                                     / a, -1) for i, a in enumerate(alpha)], -1)
        assert torch.allclose(v, expected, atol=1e-6)
        # by hand for the first sample, agent 0: only actions 0 and 1 count
        assert v[0, 0].item() == pytest.approx(alpha[0] * math.log(math.exp(1 / alpha[0])
                                                                    + math.exp(2 / alpha[0])))
        assert v[1, 0].item() == pytest.approx(2.0)  # one available action: V = Q
        # no mask: logsumexp over all actions
        v_all = loss._soft_value(q_all, alpha_i, None).squeeze(-1)
        assert torch.allclose(v_all, torch.stack(
            [a * torch.logsumexp(q_all[:, i] / a, -1) for i, a in enumerate(alpha)], -1))
    # alpha = 0: the hard max over available actions (greedy FOP)
    v0 = loss._soft_value(q_all, torch.zeros(N, 1), mask).squeeze(-1)
    assert torch.equal(v0, torch.tensor([[2.0, 4.0], [2.0, 0.0]]))
    v0 = loss._soft_value(-1e3 * q_all, torch.zeros(N, 1), mask).squeeze(-1)
    assert torch.equal(v0, torch.tensor([[-1e3, 1e3], [-2e3, 1e3]]))


# ============================================================================ value loss (eq. 10)


@pytest.mark.parametrize("nq", [1, 2])
def test_value_loss_hand_computed(nq):
    """V_i regresses E_{u_i~pi_i}[min_k Q_k,i(u_i) - alpha_i log pi_i(u_i)] (exact expectation)."""
    alpha = 0.6
    logits = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]])
    v_table = torch.tensor([0.5, -1.0])
    loss = hand_loss(Q_TABLE, nq=nq, alpha=alpha, value=v_table, logits=logits)
    q_min = Q_TABLE
    if nq == 2:
        other = torch.tensor([[0.0, 5.0, 5.0], [5.0, -3.0, 5.0]])
        set_table(loss.qvalue_network_params, 1, other)
        q_min = torch.minimum(Q_TABLE, other)
    mask = torch.ones(B, N, A, dtype=torch.bool)
    mask[::2, 0, 1] = False  # half the batch: agent 0 cannot take action 1
    td = discrete_td(mask=mask)
    log_p = torch.log_softmax(logits.expand(B, N, A).masked_fill(~mask, -torch.inf), -1)
    p = log_p.exp()
    target = torch.where(mask, p * (q_min - alpha * log_p), torch.zeros(())).sum(-1)  # [B, N]
    expected = ((v_table - target) ** 2).mean()
    out = loss(td)
    assert out["loss_value"].item() == pytest.approx(expected.item(), rel=1e-5)
    loss_v, meta = loss.value_loss(td)
    assert torch.allclose(meta["state_value"].squeeze(-1), v_table.expand(B, N))
    (grad,) = torch.autograd.grad(loss_v, [loss.value_network_params["module", "table"]])
    assert torch.allclose(grad.squeeze(-1), (2 * (v_table - target)).mean(0) / N, atol=1e-5)


# ============================================================================ actor loss


@pytest.mark.parametrize("nq", [1, 2])
def test_discrete_actor_loss_matches_manual(nq):
    loss = discrete_loss(nq=nq, alpha_init=0.3)
    mask = torch.ones(B, N, A, dtype=torch.bool)
    mask[:2, 0, 1] = False
    mask[3, 1, :2] = False
    td = discrete_td(mask=mask)
    with loss.actor_network_params.to_module(loss.actor_network):
        logits = loss.actor_network(td.clone())["agents", "logits"]
    log_p = torch.log_softmax(logits.masked_fill(~mask, -torch.inf), -1)
    p = log_p.exp()
    qs = []
    for k in range(nq):
        with twin(loss.qvalue_network_params, k).to_module(loss.qvalue_network):
            qs.append(loss.qvalue_network(td.clone())["agents", "action_value"])
    q_min = torch.stack(qs).amin(0)
    terms = torch.where(mask, p * (0.3 * log_p - q_min), torch.zeros(()))
    expected = terms.sum(-1).mean()  # average over batch and agents
    out = loss(td)
    assert out["loss_actor"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    entropy = -torch.where(mask, p * log_p, torch.zeros(())).sum((-1, -2)).mean()
    assert out["entropy"].item() == pytest.approx(entropy.item(), rel=1e-5)


def test_discrete_actor_loss_hand_table():
    """Uniform policy over 3 actions, known Q: loss = mean_i(alpha * -log 3 - mean_a Q_i(a))."""
    alpha = 0.5
    loss = hand_loss(Q_TABLE, alpha=alpha)
    out = loss(discrete_td())
    expected = (alpha * -LN3 - Q_TABLE.mean(-1)).mean()
    assert out["loss_actor"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["entropy"].item() == pytest.approx(N * LN3, rel=1e-6)


# ============================================================================ masks


def _mixed_masks(batch=(B,)):
    mask = torch.ones(*batch, N, A, dtype=torch.bool)
    mask[..., 0, 2] = False
    mask[:2] = _one_action_mask((2,), actions=(1, 2))
    return mask


@pytest.mark.parametrize("variant", ["discrete-analytic", "discrete-value", "discrete-qatten"])
@pytest.mark.parametrize("learn_alpha", [False, True])
def test_masked_actions_finite_everywhere(variant, learn_alpha):
    build, _ = VARIANTS[variant]
    for mask, next_mask in [(_mixed_masks(), _mixed_masks()),
                            (_one_action_mask(), _one_action_mask(actions=(0, 1)))]:
        loss = build(nq=2, learn_alpha=learn_alpha)
        td = discrete_td(mask=mask, next_mask=next_mask)
        out = loss(td)
        for key in out.keys():
            assert torch.isfinite(out[key]).all(), key
        loss.zero_grad(set_to_none=True)
        sum(out[k] for k in out.keys() if k.startswith("loss_")).backward()
        assert all_grads_finite(loss)
        probs, log_probs = loss._policy(td)
        assert torch.equal(probs[~mask], torch.zeros_like(probs[~mask]))
        assert torch.isfinite(log_probs).all()
        assert torch.allclose(probs.sum(-1), torch.ones(B, N))


def test_loss_applies_the_mask_even_if_the_actor_does_not():
    """The loss reads action_mask itself: an unmasked actor still gets probability 0 on masked
    actions inside every objective."""
    net = TensorDictModule(networks.AgentMLP(OBS, A, N, hidden=HIDDEN), in_keys=[OBS_KEY],
                           out_keys=[("agents", "logits")])
    unmasked_actor = ProbabilisticActor(net, in_keys={"logits": ("agents", "logits")},
                                        out_keys=[ACTION_KEY],
                                        distribution_class=torch.distributions.Categorical)
    loss = FOPLoss(unmasked_actor, networks.discrete_critic(N, OBS, A, hidden=HIDDEN),
                   FOPMixer(N, S, A),
                   action_space="discrete", num_qvalue_nets=2)
    mask = _mixed_masks()
    td = discrete_td(mask=mask, next_mask=_one_action_mask())
    probs, log_probs = loss._policy(td)
    assert torch.equal(probs[~mask], torch.zeros_like(probs[~mask]))
    assert torch.allclose(probs.sum(-1), torch.ones(B, N))
    out = loss(td)
    assert all(torch.isfinite(out[k]).all() for k in out.keys())


def test_one_available_action_probability_one_and_zero_entropy():
    loss = discrete_loss(nq=2)
    td = discrete_td(mask=_one_action_mask(), next_mask=_one_action_mask())
    probs, log_probs = loss._policy(td)
    assert torch.equal(probs, _one_action_mask().float())
    assert torch.equal(log_probs, torch.zeros_like(log_probs))
    out = loss(td)
    assert out["entropy"].item() == pytest.approx(0.0, abs=1e-6)


def test_masked_actions_are_never_sampled_for_the_target():
    """Masked next actions have probability 0: with one available action per agent the target is
    the same for every draw, and with the analytic V it equals r + gamma V_jt^target."""
    loss = hand_loss(Q_TABLE, alpha=1.0).make_value_estimator(gamma=1.0)
    set_mixer(loss.target_mixer_params, 0, 2.0, v_jt=0.0)
    td = discrete_td(batch=(64,), next_mask=_one_action_mask((64,), actions=(1, 2)))
    y = loss._td_target(td)
    assert torch.allclose(y, td["next", "reward"], atol=1e-6)


@pytest.mark.parametrize("where", ["current", "next"])
def test_agent_without_available_action_raises(where):
    td = discrete_td()
    key = MASK_KEY if where == "current" else ("next", *MASK_KEY)
    td[key][3, 1] = False
    with pytest.raises(ValueError, match="at least one available action"):
        discrete_loss(nq=1)(td)


def test_mask_with_wrong_shape_raises():
    td = discrete_td()
    td.del_(MASK_KEY)
    td.set(MASK_KEY, torch.ones(B, N, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="action_mask"):
        discrete_loss(nq=1)._policy(td)


# ============================================================================ temperatures


def test_scheduled_alpha_assignment():
    loss = discrete_loss(nq=1, alpha_init=1.0)
    td = discrete_td()
    loss.alpha = 0.3
    assert isinstance(loss.alpha, torch.Tensor)  # still the buffer, updated in place
    assert loss.alpha_value.item() == pytest.approx(0.3)
    out = loss(td)
    assert out["alpha"].item() == pytest.approx(0.3)
    assert torch.allclose(out["alpha_i"], torch.full((N,), 0.3))
    # the analytic V_i uses the new alpha
    q_all = loss.joint_q(td)["q_i"]
    v = loss.joint_q(td)["v_i"].squeeze(-1)
    assert torch.allclose(v, 0.3 * torch.logsumexp(q_all / 0.3, -1), atol=1e-5)
    assert "alpha" in dict(loss.named_buffers())


def test_scheduled_alpha_changes_the_actor_loss():
    loss = hand_loss(Q_TABLE, alpha=1.0)
    td = discrete_td()
    a = loss(td)["loss_actor"].item()
    loss.alpha = 0.25
    b = loss(td)["loss_actor"].item()
    # uniform policy: loss = -alpha log 3 - mean Q
    assert a - b == pytest.approx(-(1.0 - 0.25) * LN3, rel=1e-5)


@pytest.mark.parametrize("variant", ["discrete-analytic", "discrete-value", "discrete-qatten",
                                     "continuous"])
def test_greedy_alpha_zero_is_finite(variant):
    build, data = VARIANTS[variant]
    loss = build(nq=2, alpha_init=0.0)
    td = data()
    out = loss(td)
    for key in out.keys():
        assert torch.isfinite(out[key]).all(), key
    assert out["alpha"].item() == 0.0
    assert torch.equal(out["alpha_i"], torch.zeros(N))
    loss.zero_grad(set_to_none=True)
    sum(out[k] for k in out.keys() if k.startswith("loss_")).backward()
    assert all_grads_finite(loss)


def test_greedy_alpha_zero_hand_values():
    """alpha = 0: V_i = max Q_i, actor loss = -E_pi Q, target without entropy."""
    loss = hand_loss(Q_TABLE, alpha=0.0).make_value_estimator(gamma=0.5)
    set_mixer(loss.mixer_params, 0, 2.0, v_jt=0.0)  # lambda = 0.5
    set_mixer(loss.target_mixer_params, 0, 2.0, v_jt=0.0)
    td = discrete_td()
    assert torch.equal(loss.joint_q(td)["v_i"].squeeze(-1), torch.tensor([3.0, 4.0]).expand(B, N))
    out = loss(td)
    assert out["loss_actor"].item() == pytest.approx(-Q_TABLE.mean().item(), rel=1e-6)
    # target: uniform policy; mean over u' of 0.5 * sum_i (Q_i(u'_i) - max Q_i), checked in range
    y = loss._td_target(td) - td["next", "reward"]
    assert (y <= 1e-6).all() and (y >= 0.5 * 0.5 * ((-2.0) + (-5.0)) - 1e-6).all()


def test_learned_alpha_value_is_exp_log_alpha():
    loss = discrete_loss(nq=1, learn_alpha=True, alpha_init=0.2)
    assert loss.alpha_value.item() == pytest.approx(0.2)
    assert isinstance(loss.log_alpha, nn.Parameter)
    with torch.no_grad():
        loss.log_alpha.fill_(math.log(0.7))
    assert loss.alpha_value.item() == pytest.approx(0.7)
    assert not loss.alpha_value.requires_grad
    assert loss(discrete_td())["alpha"].item() == pytest.approx(0.7)


@pytest.mark.parametrize("target, sign", [(0.0, 1.0), (100.0, -1.0)])
def test_dual_gradient_sign(target, sign):
    """Entropy above the target -> d loss_alpha / d log_alpha > 0 (gradient descent lowers alpha);
    below -> < 0. Also loss_alpha = log_alpha * (H(pi_jt) - target) by hand."""
    loss = discrete_loss(nq=1, learn_alpha=True, alpha_init=2.0, target_entropy=target)
    assert loss.target_entropy.item() == target
    out = loss(discrete_td())
    entropy = out["entropy"].item()
    assert 0 < entropy < 100
    assert out["loss_alpha"].item() == pytest.approx(math.log(2.0) * (entropy - target), rel=1e-5)
    loss.zero_grad(set_to_none=True)
    out["loss_alpha"].backward()
    assert torch.sign(loss.log_alpha.grad).item() == sign
    assert loss.log_alpha.grad.item() == pytest.approx(entropy - target, rel=1e-5)


def test_auto_target_entropy():
    loss = discrete_loss(nq=1, learn_alpha=True, target_entropy_weight=0.5)
    assert loss.target_entropy.item() == pytest.approx(0.5 * N * LN3)
    assert continuous_loss(nq=1, learn_alpha=True).target_entropy.item() == -N * D


@pytest.mark.parametrize("value", [False, True])
def test_param_groups_partition_the_trainable_parameters_by_objective(value):
    loss = discrete_loss(value=value, nq=2, learn_alpha=True)
    groups = loss.param_groups(lr_qvalue=1e-4, lr_mixer=1e-2)
    assert list(groups) == ["loss_qvalue"] + ["loss_value"] * value + ["loss_actor", "loss_alpha"]
    owned = {key: {id(p) for g in gs for p in g["params"]} for key, gs in groups.items()}
    trainable = {id(p) for name, p in loss.named_parameters() if not name.startswith("target_")}
    assert set().union(*owned.values()) == trainable  # every trainable parameter, targets excluded
    assert sum(map(len, owned.values())) == len(trainable)  # each in one objective only
    assert [g["lr"] for g in groups["loss_qvalue"]] == [1e-4, 1e-2]
    out = loss(discrete_td())
    for key in groups:  # an objective's gradient reaches its own group only
        loss.zero_grad(set_to_none=True)
        out = loss(discrete_td())
        out[key].backward()
        reached = {id(p) for p in loss.parameters() if p.grad is not None and p.grad.any()}
        assert reached and reached <= owned[key], key
    optimizers = loss.make_optimizers(torch.optim.RMSprop, lr_actor=1e-3)
    assert list(optimizers) == list(groups) and optimizers["loss_actor"].param_groups[0]["lr"] == 1e-3


def test_learned_alpha_reads_the_action_count_from_the_mixer():
    loss = FOPLoss(networks.discrete_actor(N, OBS, A, hidden=HIDDEN), networks.discrete_critic(N, OBS, A, hidden=HIDDEN),
                   FOPMixer(N, S, A), action_space="discrete", learn_alpha=True)  # no num_actions
    assert loss.target_entropy.item() == pytest.approx(0.98 * N * LN3)


def test_auto_target_entropy_follows_the_available_actions():
    """Discrete "auto": weight * sum_i log |available_i| per sample (here 2 and 1 of 3 actions)."""
    loss = discrete_loss(nq=1, learn_alpha=True, target_entropy_weight=0.5)
    mask = torch.tensor([[True, True, False], [True, False, False]]).expand(B, N, A)
    _, meta = loss.actor_loss(discrete_td(mask=mask))
    torch.testing.assert_close(meta["target_entropy"], torch.full((B, 1), 0.5 * (math.log(2) + 0.0)))
    _, meta = loss.actor_loss(discrete_td())  # every action available: 0.5 * N * log 3
    torch.testing.assert_close(meta["target_entropy"], torch.full((B, 1), 0.5 * N * LN3))
    fixed = discrete_loss(nq=1, learn_alpha=True, target_entropy=-1.0)  # a number: fixed
    torch.testing.assert_close(fixed.actor_loss(discrete_td(mask=mask))[1]["target_entropy"], torch.full((B, 1), -1.0))


def test_learned_alpha_stays_bounded_when_masks_leave_few_actions():
    """Masks leave 2 of 10 actions: H(pi_i) <= log 2, so a target of 0.98 N log 10 is out of
    reach and log alpha would rise at every step. The masked target keeps alpha bounded."""
    n_actions, updates = 10, 2000
    loss = FOPLoss(networks.discrete_actor(N, OBS, n_actions, hidden=HIDDEN),
                   networks.discrete_critic(N, OBS, n_actions, hidden=HIDDEN),
                   FOPMixer(N, S, n_actions, n_heads=2, v_hidden=8), action_space="discrete",
                   num_qvalue_nets=1, learn_alpha=True, alpha_init=0.5)
    mask = torch.zeros(64, N, n_actions, dtype=torch.bool)
    first = torch.randint(n_actions - 1, (64, N, 1))
    mask.scatter_(-1, first, True).scatter_(-1, first + 1, True)  # two available actions each
    batch = discrete_td(batch=(64,), mask=mask, next_mask=mask)
    actor = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=1e-2)
    alpha = torch.optim.Adam([loss.log_alpha], lr=1e-2)
    highest = 0.0
    for _ in range(updates):  # eq. (11), then the dual step, as FOPLightningModule.update
        actor_loss, meta = loss.actor_loss(batch)
        actor.zero_grad()
        actor_loss.backward()
        actor.step()
        alpha.zero_grad()
        loss.alpha_loss(meta["log_prob_jt"], meta["target_entropy"]).backward()
        alpha.step()
        highest = max(highest, loss.alpha_value.item())
    assert highest < 2.0, f"alpha rose to {highest} (from 0.5)"
    assert -meta["log_prob_jt"].mean() == pytest.approx(0.98 * N * math.log(2), abs=0.05)  # target met


def test_individual_temperature_shared():
    loss = discrete_loss(nq=2, alpha_init=0.35)
    td = discrete_td()
    assert torch.allclose(loss.individual_alphas(td), torch.full((N, 1), 0.35))
    assert torch.allclose(loss(td)["alpha_i"], torch.full((N,), 0.35))


def test_individual_temperature_paper_needs_value_network():
    with pytest.raises(ValueError, match="value_network"):
        discrete_loss(individual_temperature="paper")


@pytest.mark.parametrize("nq", [1, 2])
def test_individual_temperature_paper_random_networks(nq):
    loss = discrete_loss(value=True, nq=nq, alpha_init=0.5, individual_temperature="paper")
    for seed in range(3):
        torch.manual_seed(seed)
        alpha_i = loss(discrete_td())["alpha_i"]
        assert alpha_i.shape == (N,)
        assert (alpha_i > 0).all()
        assert ((alpha_i >= 0.1 * 0.5 - 1e-7) & (alpha_i <= 10 * 0.5 + 1e-6)).all()


@pytest.mark.parametrize("key_bias, ratio", [(2.0, [2.0, 4.0]), (0.01, [10.0, 10.0]),
                                             (80.0, [0.1, 0.1])])
def test_individual_temperature_paper_hand_computed(key_bias, ratio):
    """Q_i equal for all actions and V_i constant: E_pi[Q_i - V_i] = c_i and
    E_pi_jt[lambda_i (Q_i - V_i)] = lambda_i c_i, so alpha_i = alpha / lambda_i (clamped)."""
    q = torch.tensor([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
    loss = hand_loss(q, alpha=0.5, value=[0.0, 1.0], individual_temperature="paper")
    set_mixer(loss.mixer_params, 0, key_bias, (0.0, -LN3))  # lambda = kb * (0.25, 0.125)
    lam = hand_lambda(key_bias, (0.0, -LN3))
    assert torch.allclose(1 / lam, torch.tensor([2.0, 4.0]) * 2.0 / key_bias)
    alpha_i = loss.individual_alphas(discrete_td()).squeeze(-1)
    assert torch.allclose(alpha_i, 0.5 * torch.tensor(ratio), rtol=1e-5)


def test_individual_temperature_paper_continuous():
    loss = continuous_loss(nq=1, alpha_init=0.5, individual_temperature="paper")
    alpha_i = loss(continuous_td())["alpha_i"]
    assert ((alpha_i >= 0.05 - 1e-7) & (alpha_i <= 5.0 + 1e-6)).all()


# ============================================================================ TorchRL conventions


def _unmasked_actor():
    net = TensorDictModule(networks.AgentMLP(OBS, A, N, hidden=HIDDEN), in_keys=[OBS_KEY],
                           out_keys=[("agents", "logits")])
    return ProbabilisticActor(net, in_keys={"logits": ("agents", "logits")}, out_keys=[ACTION_KEY],
                              distribution_class=torch.distributions.Categorical)


@pytest.mark.parametrize("variant", [*VARIANTS, "discrete-unmasked-actor"])
def test_in_keys_are_exactly_what_the_loss_reads(variant):
    """A batch cut down to ``loss.in_keys`` gives the same losses as the whole batch (so the mask,
    which the loss reads even when the actor does not, is listed), and the next action, which
    the loss samples instead of reading, is not listed."""
    if variant == "discrete-unmasked-actor":
        loss = FOPLoss(_unmasked_actor(), networks.discrete_critic(N, OBS, A, hidden=HIDDEN),
                       FOPMixer(N, S, A), action_space="discrete")
        td = discrete_td(mask=_mixed_masks(), next_mask=_one_action_mask())
    else:
        make_loss, make_td = VARIANTS[variant]
        loss, td = make_loss(), make_td()
    keys = {unravel_key(key) for key in loss.in_keys}
    assert ("next", *ACTION_KEY) not in keys and ACTION_KEY in keys
    assert (MASK_KEY in keys and ("next", *MASK_KEY) in keys) == variant.startswith("discrete")
    td["next", ACTION_KEY] = td[ACTION_KEY]  # present in collected data, never read
    outs = []
    for batch in (td, td.select(*keys)):
        torch.manual_seed(1)
        outs.append(loss(batch))
    for key in loss.out_keys:
        assert torch.equal(outs[0][key], outs[1][key]), key


def test_set_keys_unknown_name_raises():
    with pytest.raises(ValueError, match="not an accepted"):
        discrete_loss(nq=1).set_keys(team_reward="reward")


@pytest.mark.parametrize("estimator_first", [False, True])
def test_set_keys_reward_is_read(estimator_first):
    loss = hand_loss(Q_TABLE, alpha=0.5)
    if estimator_first:
        loss.make_value_estimator(gamma=0.9)
    loss.set_keys(reward="team_reward")
    assert loss.tensor_keys.reward == "team_reward"
    td = discrete_td(terminated=True, reward_key="team_reward")
    assert ("next", "reward") not in td.keys(True)
    assert torch.equal(loss._td_target(td), td["next", "team_reward"])
    assert torch.isfinite(loss(td)["loss_qvalue"])


def test_missing_reward_key_raises():
    loss = discrete_loss(nq=1)
    with pytest.raises((KeyError, AttributeError)):  # TorchRL's estimator reads None -> .device
        loss(discrete_td(reward_key="team_reward"))


def test_set_keys_state_and_action_are_read():
    loss = hand_loss(Q_TABLE, alpha=0.5)
    set_mixer(loss.mixer_params, 0, 2.0, v_jt=1.0)
    td = discrete_td(terminated=True)
    reference = loss(td)["loss_qvalue"]
    loss.set_keys(action=("agents", "act"), state="global_state")
    renamed = td.clone()
    renamed.rename_key_(ACTION_KEY, ("agents", "act"))
    renamed.rename_key_("state", "global_state")
    renamed.rename_key_(("next", "state"), ("next", "global_state"))
    assert loss(renamed)["loss_qvalue"].item() == pytest.approx(reference.item())


def test_missing_state_key_raises_keyerror_naming_it():
    td = discrete_td().exclude("state")
    with pytest.raises(KeyError, match="state"):
        discrete_loss(nq=1)(td)


@pytest.mark.parametrize("reduction, scale", [("sum", B), ("none", None)])
def test_reduction(reduction, scale):
    td = discrete_td(terminated=True)
    losses = [hand_loss(Q_TABLE, alpha=0.5), hand_loss(Q_TABLE, alpha=0.5, reduction=reduction)]
    for loss in losses:
        set_mixer(loss.mixer_params, 0, 2.0, (0.0, LN3), v_jt=1.0)
    mean_loss, other = (loss(td) for loss in losses)
    if scale is None:
        assert other["loss_qvalue"].shape == (B, 1)
        assert other["loss_actor"].shape == (B, N, 1)
        assert other["loss_qvalue"].mean().item() == pytest.approx(mean_loss["loss_qvalue"].item())
    else:
        assert other["loss_qvalue"].item() == pytest.approx(scale * mean_loss["loss_qvalue"].item())
        assert other["loss_actor"].item() == pytest.approx(B * N * mean_loss["loss_actor"].item())


def test_td_lambda_hand_computed():
    """[B=2, T=3] batch, next states with one available action per agent: the soft next value is
    V_jt^target = c for every step. TD(lambda): G_t = r_t + gamma ((1 - lmbda) c + lmbda G_{t+1}),
    G_{T-1} = r_{T-1} + gamma c (truncation) or r_{T-1} (terminated)."""
    gamma, lmbda, c = 0.9, 0.8, 2.0
    loss = hand_loss(Q_TABLE, alpha=0.5)
    loss.make_value_estimator(ValueEstimators.TDLambda, gamma=gamma, lmbda=lmbda)
    set_mixer(loss.target_mixer_params, 0, 2.0, v_jt=c)
    set_mixer(loss.mixer_params, 0, 2.0, v_jt=0.0)
    td = discrete_td(batch=(2, 3), next_mask=_one_action_mask((2, 3)))
    td["next", "terminated"][1, 2] = True
    td["next", "done"][1, 2] = True
    r = td["next", "reward"].squeeze(-1)
    expected = torch.zeros(2, 3)
    for b in range(2):
        g = r[b, 2] + (0.0 if b == 1 else gamma * c)
        expected[b, 2] = g
        for t in (1, 0):
            g = r[b, t] + gamma * ((1 - lmbda) * c + lmbda * g)
            expected[b, t] = g
    y = loss._td_target(td)
    assert y.shape == (6, 1)  # the 2 x 3 steps as rows, row-major
    assert torch.allclose(y.reshape(2, 3), expected, atol=1e-5)
    # and loss_qvalue with it: Q_jt = sum_i 0.5 (Q_i(u_i) - V_i) with V_i = 0.5 lse(Q_i / 0.5)
    v = _soft_v(Q_TABLE, 0.5)
    chosen = Q_TABLE.expand(2, 3, N, A).gather(-1, td[ACTION_KEY].unsqueeze(-1)).squeeze(-1)
    q_jt = (0.5 * (chosen - v)).sum(-1)
    assert loss(td)["loss_qvalue"].item() == pytest.approx(((q_jt - expected) ** 2).mean().item(),
                                                           rel=1e-5)


def test_td0_default_gamma_and_td1():
    loss = hand_loss(Q_TABLE, alpha=0.5)
    set_mixer(loss.target_mixer_params, 0, 2.0, v_jt=2.0)
    td = discrete_td(batch=(2, 3), next_mask=_one_action_mask((2, 3)))
    assert torch.allclose(loss._td_target(td).reshape(2, 3, 1), td["next", "reward"] + 0.99 * 2.0)  # TorchRL default
    loss.make_value_estimator(ValueEstimators.TD1, gamma=0.5)
    r = td["next", "reward"].squeeze(-1)
    g2 = r[:, 2] + 0.5 * 2.0
    g1 = r[:, 1] + 0.5 * g2
    g0 = r[:, 0] + 0.5 * g1
    assert torch.allclose(loss._td_target(td).reshape(2, 3), torch.stack([g0, g1, g2], -1), atol=1e-5)


def _perturb(params):
    with torch.no_grad():
        for value in params.values(True, True):
            value.add_(torch.randn_like(value))


def _snapshot(params):
    return params.detach().clone()


@pytest.mark.parametrize("value", [False, True])
def test_soft_update(value):
    loss = discrete_loss(value=value, nq=2)
    names = ["qvalue_network", "mixer"] + (["value_network"] if value else [])
    updater = SoftUpdate(loss, tau=0.5)
    for name in names:
        _perturb(getattr(loss, f"{name}_params"))
    old = {name: _snapshot(getattr(loss, f"target_{name}_params")) for name in names}
    online = {name: _snapshot(getattr(loss, f"{name}_params")) for name in names}
    for name in names:  # perturbed online params differ from the targets
        assert not all(torch.equal(a, b) for a, b in zip(old[name].values(True, True),
                                                         online[name].values(True, True)))
    updater.step()
    for name in names:
        new = getattr(loss, f"target_{name}_params")
        for key, value_new in new.items(True, True):
            expected = 0.5 * old[name][key] + 0.5 * online[name][key]
            assert torch.allclose(value_new, expected, atol=1e-6), (name, key)


@pytest.mark.parametrize("value", [False, True])
def test_fused_soft_update_gives_torchrl_soft_updates_values_bit_for_bit(value):
    """The training loop's FusedSoftUpdate (one foreach lerp) and TorchRL's SoftUpdate agree exactly."""
    from fop_modules.target_update import FusedSoftUpdate

    names = ["qvalue_network", "mixer"] + (["value_network"] if value else [])
    losses = [discrete_loss(value=value, nq=2) for _ in range(2)]
    losses[1].load_state_dict(losses[0].state_dict())
    updaters = [SoftUpdate(losses[0], tau=0.3), FusedSoftUpdate(losses[1], tau=0.3)]
    for step in range(3):  # several steps: the fused one collects its pairs once
        for loss in losses:  # the same perturbation of both
            torch.manual_seed(step)
            for name in names:
                _perturb(getattr(loss, f"{name}_params"))
        for updater in updaters:
            updater.step()
        for name in names:
            ours, theirs = (getattr(loss, f"target_{name}_params") for loss in losses[::-1])
            assert all(torch.equal(ours[key], value) for key, value in theirs.items(True, True)), name


@pytest.mark.parametrize("variant", ["discrete", "continuous"])
def test_objectives_call_the_networks_without_tensordict_to_module(variant, monkeypatch):
    """Hot path (benchmarks/update_cost.py): the loss swaps its functional parameters in by direct
    assignment (`_swapped`), not by TensorDict's `to_module` (about 0.1 ms per call on CPU),
    and its outputs are those of a `to_module` call of the same networks."""
    from tensordict.base import TensorDictBase

    loss = discrete_loss(value=True, nq=2) if variant == "discrete" else continuous_loss(nq=2)
    td = discrete_td() if variant == "discrete" else continuous_td()
    calls = []
    original = TensorDictBase.to_module
    monkeypatch.setattr(TensorDictBase, "to_module", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    torch.manual_seed(3)
    out = loss(td)
    assert calls == []
    for twin in range(2):  # twin k's critic through TensorDict's own call, for reference
        params = loss.qvalue_network_params[twin]
        inputs = td.select(*loss.qvalue_network.in_keys)
        with params.to_module(loss.qvalue_network):
            expected = loss.qvalue_network(inputs).get(loss.qvalue_network.out_keys[0])
        assert torch.equal(loss._critic(td, loss.qvalue_network_params, twin,
                                        td.get(ACTION_KEY) if variant == "continuous" else None), expected)
    assert all(torch.isfinite(out[key]).all() for key in out.keys() if key.startswith("loss_"))


@pytest.mark.parametrize("variant", ["discrete", "continuous"])
def test_paper_alpha_i_shares_the_objectives_policy_forward(variant, monkeypatch):
    """eq. (10) and eq. (11) with the paper's alpha_i run the actor once each (alpha_i samples the
    objective's own policy), and the values are those of separate forwards."""
    make = (lambda: discrete_loss(value=True, individual_temperature="paper")) if variant == "discrete" else (
        lambda: continuous_loss(individual_temperature="paper"))
    loss, td = make(), discrete_td() if variant == "discrete" else continuous_td()
    actor_mlp = next(m for m in loss.actor_network.modules() if isinstance(m, networks.AgentMLP))
    calls = []
    monkeypatch.setattr(type(actor_mlp), "__call__", lambda self, *a: calls.append(self) or nn.Module.__call__(self, *a))
    for objective in (loss.value_loss, loss.actor_loss):
        calls.clear()
        torch.manual_seed(4)
        shared = objective(td)[0]
        assert sum(c is actor_mlp for c in calls) == 1, objective.__name__
    torch.manual_seed(4)  # alpha_i from a policy forward of its own, as before, and from a given one
    separate = loss.individual_alphas(td)
    torch.manual_seed(4)
    assert torch.equal(loss.individual_alphas(td, loss._policy(td)), separate)
    assert torch.isfinite(shared)


@pytest.mark.parametrize("variant", ["discrete", "continuous"])
def test_eq9_computes_alpha_i_only_for_an_analytic_v(variant, monkeypatch):
    """alpha_i enters eq. (9) only through the analytic soft V_i; with V_i networks the mixer reads
    V_i(o_i) and nothing reads alpha_i, so eq. (9) must not spend forward passes and random draws
    on it (the paper's formula runs the critic, the V network, the mixer and a policy sample)."""
    make = (lambda: discrete_loss(value=True, individual_temperature="paper")) if variant == "discrete" else (
        lambda: continuous_loss(individual_temperature="paper"))
    loss, td = make(), discrete_td() if variant == "discrete" else continuous_td()
    calls = []
    original = FOPLoss.individual_alphas
    monkeypatch.setattr(FOPLoss, "individual_alphas", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    loss.qvalue_loss(td)
    assert calls == []
    analytic = discrete_loss(individual_temperature="shared")  # analytic V_i: alpha_i is read
    analytic.qvalue_loss(discrete_td())
    assert len(calls) == 2  # the target's next step and the batch's own


def test_the_loss_checks_the_batch_once_and_not_again_in_every_mixer_call(monkeypatch):
    """The mixer's own value check (one synchronisation per call) repeats the loss's scan of the
    batch: inside the loss only the loss checks; the mixer used alone still checks."""
    loss, td = continuous_loss(individual_temperature="paper"), continuous_td()
    mixer_checks, loss_checks = [], []
    monkeypatch.setattr(FOPMixer, "_check_values", lambda self, *a: mixer_checks.append(1))
    original = FOPLoss._check_values
    monkeypatch.setattr(FOPLoss, "_check_values", lambda self, t: loss_checks.append(1) or original(self, t))
    loss(td)
    assert mixer_checks == [] and loss_checks == [1]
    FOPMixer(N, S, D, discrete_actions=False).mix(torch.zeros(B, N, 1), torch.zeros(B, N, 1),
                                                   td["state"], td[ACTION_KEY])
    assert mixer_checks == [1]


def test_hard_update():
    loss = discrete_loss(value=True, nq=2)
    updater = HardUpdate(loss, value_network_update_interval=1)
    names = ["qvalue_network", "mixer", "value_network"]
    for name in names:
        _perturb(getattr(loss, f"{name}_params"))
    old = {name: _snapshot(getattr(loss, f"target_{name}_params")) for name in names}
    updater.step()  # TorchRL's HardUpdate copies when its counter reaches the interval:
    for name in names:  # the first step only counts
        assert (getattr(loss, f"target_{name}_params") == old[name]).all()
    updater.step()
    for name in names:
        online, target = getattr(loss, f"{name}_params"), getattr(loss, f"target_{name}_params")
        for key, value in target.items(True, True):
            assert torch.equal(value, online[key].detach()), (name, key)
            assert not value.requires_grad


def test_targets_start_equal_and_twins_differ():
    loss = discrete_loss(nq=2)
    for name in ("qvalue_network", "mixer"):
        online, target = getattr(loss, f"{name}_params"), getattr(loss, f"target_{name}_params")
        for key, value in target.items(True, True):
            assert torch.equal(value, online[key].detach())
        # the second twin is a fresh initialisation, not a copy
        w = next(iter(online.values(True, True)))
        assert not torch.equal(w[0], w[1])


def test_target_networks_are_used_in_the_target_only():
    loss = hand_loss(Q_TABLE, alpha=0.5).make_value_estimator(gamma=1.0)
    set_mixer(loss.mixer_params, 0, 2.0, v_jt=0.0)
    set_mixer(loss.target_mixer_params, 0, 2.0, v_jt=0.0)
    td = discrete_td(next_mask=_one_action_mask())
    y0 = loss._td_target(td)
    set_mixer(loss.mixer_params, 0, 2.0, v_jt=5.0)  # online change: the target must not move
    assert torch.allclose(loss._td_target(td), y0)
    set_mixer(loss.target_mixer_params, 0, 2.0, v_jt=5.0)
    assert torch.allclose(loss._td_target(td), y0 + 5.0)


def test_repr_does_not_crash():
    assert "FOPLoss" in repr(discrete_loss(nq=1))


# ============================================================================ constructor errors


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: FOPLoss(networks.continuous_actor(N, OBS, D, low=-1, high=1),
                         networks.continuous_critic(N, OBS, D),
                         FOPMixer(N, S, D, discrete_actions=False), action_space="continuous"),
         "value_network"),
        (lambda: FOPLoss(networks.discrete_actor(N, OBS, A), networks.discrete_critic(N, OBS, A),
                         FOPMixer(N, S, A), action_space="multi_discrete"), "action_space"),
        (lambda: discrete_loss(nq=3), "num_qvalue_nets"),
        (lambda: discrete_loss(nq=0), "num_qvalue_nets"),
        (lambda: discrete_loss(entropy_reduction="max"), "entropy_reduction"),
        (lambda: discrete_loss(individual_temperature="agent"), "individual_temperature"),
        (lambda: discrete_loss(alpha_init=-0.1), "alpha_init"),
        (lambda: discrete_loss(learn_alpha=True, alpha_init=0.0), "alpha_init"),
        (lambda: discrete_loss(loss_function="huber"), r"loss_function must be one of \['l2', 'l1', 'smooth_l1'\]"),
        (lambda: FOPLoss(networks.discrete_actor(N, OBS, A), networks.discrete_critic(N, OBS, A),
                         FOPMixer(N, S, A)), "action_space must be 'discrete' or 'continuous', got None"),
        (lambda: DiscreteFOPLoss(networks.discrete_actor(N, OBS, A), networks.discrete_critic(N, OBS, A),
                                 FOPMixer(N, S, A), action_space="continuous"),
         "DiscreteFOPLoss is FOP for discrete actions"),
    ],
)
def test_constructor_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_the_action_space_picks_the_loss_class():
    """FOPLoss(action_space=...) builds the class of that action space (TorchRL's
    SACLoss / DiscreteSACLoss split), which can also be built directly, and deep-copies as itself."""
    discrete = FOPLoss(networks.discrete_actor(N, OBS, A), networks.discrete_critic(N, OBS, A),
                       FOPMixer(N, S, A), action_space="discrete")
    continuous = continuous_loss()
    direct = DiscreteFOPLoss(networks.discrete_actor(N, OBS, A), networks.discrete_critic(N, OBS, A), FOPMixer(N, S, A))
    assert (type(discrete), type(continuous), type(direct)) == (DiscreteFOPLoss, ContinuousFOPLoss, DiscreteFOPLoss)
    assert all(isinstance(loss, FOPLoss) for loss in (discrete, continuous, direct))
    assert type(copy.deepcopy(continuous)) is ContinuousFOPLoss
    direct.load_state_dict(discrete.state_dict())  # the same parameters: the same losses
    td = discrete_td()
    torch.manual_seed(1)
    built_directly = direct(td)
    torch.manual_seed(1)
    built_by_flag = discrete(td)
    for key in ("loss_qvalue", "loss_actor", "entropy"):
        assert torch.equal(built_directly[key], built_by_flag[key])


def test_twin_list_of_wrong_length_raises():
    with pytest.raises(ValueError, match="twin"):
        FOPLoss(networks.discrete_actor(N, OBS, A),
                [networks.discrete_critic(N, OBS, A) for _ in range(3)],
                FOPMixer(N, S, A), action_space="discrete", num_qvalue_nets=2)


# ============================================================================ saturated tanh-Gaussian policies


class _SaturatedGaussian(nn.Module):
    """Pre-tanh mean ``loc`` and std ``scale`` for every agent and sample."""

    def __init__(self, loc: float, scale: float):
        super().__init__()
        self.loc, self.scale = nn.Parameter(torch.tensor(loc)), scale

    def forward(self, obs):
        shape = (*obs.shape[:-1], D)
        return self.loc.expand(shape), torch.full(shape, self.scale)


def _log_pi_moments(loc: float, scale: float, n: int = 2_000_000) -> tuple[float, float]:
    """E[log pi] and E[(log pi)^2] of tanh(x), x ~ N(loc, scale) (one action dim on [-1, 1]), in
    float64 from the density's definition: log N(x) - log(1 - tanh(x)^2)."""
    gen = torch.Generator().manual_seed(1)
    x = loc + scale * torch.randn(n, dtype=torch.float64, generator=gen)
    log_pi = torch.distributions.Normal(loc, scale).log_prob(x) - torch.log(1 - torch.tanh(x) ** 2)
    return float(log_pi.mean()), float((log_pi**2).mean())


def _saturated_actor(scale: float) -> ProbabilisticActor:
    return ProbabilisticActor(
        TensorDictModule(_SaturatedGaussian(10.0, scale), in_keys=[OBS_KEY],
                         out_keys=[("agents", "loc"), ("agents", "scale")]),
        in_keys=[("agents", "loc"), ("agents", "scale")], out_keys=[ACTION_KEY],
        distribution_class=TanhNormal, distribution_kwargs={"low": -1.0, "high": 1.0})


@pytest.mark.parametrize("scale", [0.5, 0.05])
def test_saturated_tanh_gaussian_log_prob_is_exact_in_every_objective(scale):
    """At pre-tanh mean 10, tanh(x) rounds to 1 in float32, and log_prob(action) (inverting the
    tanh) gave E[log pi] = -2.3 (std 0.5) and -1500 (std 0.05) against +17.9 and +20.2. Every
    objective must score log pi at its own pre-tanh draw: the actor's entropy (eq. 11 and the
    dual temperature), the TD target (eq. 9) and the V target (eq. 10). With zero critics, V and
    mixer, Q_jt = 0, so the TD target is -gamma alpha log pi_jt and V's target -alpha log pi_i."""
    loss = FOPLoss(_saturated_actor(scale), networks.continuous_critic(N, OBS, D, hidden=HIDDEN),
                   FOPMixer(N, S, D, discrete_actions=False, n_heads=2, v_hidden=8),
                   action_space="continuous", value_network=networks.value_network(N, OBS, hidden=HIDDEN),
                   num_qvalue_nets=1, alpha_init=0.1)
    loss.make_value_estimator(gamma=0.5)
    for params in (loss.qvalue_network_params, loss.target_qvalue_network_params, loss.mixer_params,
                   loss.target_mixer_params, loss.value_network_params, loss.target_value_network_params):
        params.data.zero_()
    td = continuous_td(batch=(50_000,))
    td["next", "reward"].zero_()
    mean, square = _log_pi_moments(10.0, scale)

    _, meta = loss.actor_loss(td)
    assert meta["log_prob_jt"].mean().item() == pytest.approx(N * mean, abs=0.05)
    _, meta = loss.qvalue_loss(td)  # td_error = |Q_jt - y| = gamma alpha log pi_jt (log pi > 0 here)
    assert meta["td_error"].mean().item() == pytest.approx(0.5 * 0.1 * N * mean, abs=0.005)
    value_loss, _ = loss.value_loss(td)  # l2: E[(0 - (-alpha log pi_i))^2]
    assert value_loss.item() == pytest.approx(0.1**2 * square, rel=0.01)


@pytest.mark.parametrize("scale", [0.5, 0.05])
def test_masacs_sac_loss_scores_saturated_log_prob_exactly_too(scale):
    """Our MASAC baseline is TorchRL's SACLoss, which draws and scores each action at once
    (``rsample_and_log_prob``, TorchRL 0.14): it needs no fix, and this keeps it so."""
    from torchrl.objectives import SACLoss

    loss = SACLoss(_saturated_actor(scale), networks.continuous_critic(N, OBS, D, hidden=HIDDEN))
    loss.set_keys(state_action_value=("agents", "state_action_value"), action=ACTION_KEY)
    _, meta = loss.actor_loss(continuous_td(batch=(50_000,)))
    assert meta["log_prob"].mean().item() == pytest.approx(_log_pi_moments(10.0, scale)[0], abs=0.05)
