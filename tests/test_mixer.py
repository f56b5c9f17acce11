"""FOPMixer, LinearMixer and QattenWeights: hand-computed maths, gradients, shapes, keys."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from fop_modules import FOPMixer, LinearMixer, QattenWeights

N, S, A = 2, 3, 4  # agents, state size, actions per agent
BATCH_SHAPES = [(), (3,), (2, 5)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _inputs(batch=(3,), n=N, s=S, a=A, discrete=True, action_dim=None):
    q = torch.randn(*batch, n, 1)
    v = torch.randn(*batch, n, 1)
    state = torch.randn(*batch, s)
    if discrete:
        action = torch.randint(a, (*batch, n))
    else:
        action = torch.randn(*batch, n, action_dim or a)
    return q, v, state, action


def _td(q, v, state, action):
    return TensorDict(
        {
            ("agents", "chosen_action_value"): q,
            ("agents", "state_value"): v,
            "state": state,
            ("agents", "action"): action,
        },
        batch_size=q.shape[:-2],
    )


@torch.no_grad()
def _set_hand_params(mixer, key_bias, agent_bias, action_bias, v_bias):
    """Zero every weight; lambda_i = sum_h |kb_h| sig(ab_{h,i}) sig(cb_{h,i}) and V_jt = v_bias."""
    for p in mixer.parameters():
        p.zero_()
    mixer.head_keys.bias.copy_(torch.as_tensor(key_bias, dtype=torch.float))
    mixer.head_agents.bias.copy_(torch.as_tensor(agent_bias, dtype=torch.float).flatten())
    mixer.head_actions.bias.copy_(torch.as_tensor(action_bias, dtype=torch.float).flatten())
    mixer.v_jt[2].bias.fill_(v_bias)


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# Two heads, agent-specific sigmoid factors: ln 3 -> 0.75, 0 -> 0.5, -ln 3 -> 0.25.
LN3 = math.log(3.0)
KEY_BIAS = [2.0, -6.0]  # |k| = 2 and 6
AGENT_BIAS = [[0.0, LN3], [LN3, -LN3]]  # [H, N]
ACTION_BIAS = [[0.0, 0.0], [LN3, 0.0]]  # [H, N]
# lambda_0 = 2 * .5 * .5 + 6 * .75 * .75 = 0.5 + 3.375 = 3.875
# lambda_1 = 2 * .75 * .5 + 6 * .25 * .5  = 0.75 + 0.75 = 1.5
LAMBDA = torch.tensor([3.875, 1.5])
V_JT = 1.25


def _hand_mixer(form="paper", n_heads=2):
    mixer = FOPMixer(N, S, A, n_heads=n_heads, advantage_form=form)
    _set_hand_params(mixer, KEY_BIAS, AGENT_BIAS, ACTION_BIAS, V_JT)
    return mixer


# ---------------------------------------------------------------------------- maths


def test_hand_lambda_matches_sigmoid_formula():
    # sanity of the constants above, written from the formula in the spec
    lam0 = 2 * _sig(0) * _sig(0) + 6 * _sig(LN3) * _sig(LN3)
    lam1 = 2 * _sig(LN3) * _sig(0) + 6 * _sig(-LN3) * _sig(0)
    assert (lam0, lam1) == pytest.approx(LAMBDA.tolist())


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_paper_form_hand_computed(batch):
    mixer = _hand_mixer("paper")
    q, v, state, action = _inputs(batch)
    q_jt, lam, reg = mixer.mix(q, v, state, action)
    assert q_jt.shape == (*batch, 1) and lam.shape == (*batch, N, 1) and reg.shape == (*batch, 1)
    assert torch.allclose(lam.squeeze(-1), LAMBDA.expand(*batch, N), atol=1e-6)
    expected = (LAMBDA * (q - v).squeeze(-1)).sum(-1, keepdim=True) + V_JT
    assert torch.allclose(q_jt, expected, atol=1e-5)
    assert torch.equal(reg, torch.zeros(*batch, 1))


def test_paper_form_specific_numbers():
    mixer = _hand_mixer("paper")
    q = torch.tensor([[2.0], [-1.0]])
    v = torch.tensor([[0.5], [1.0]])
    q_jt, _, _ = mixer.mix(q, v, torch.zeros(S), torch.tensor([0, 3]))
    # 3.875 * 1.5 + 1.5 * (-2) + 1.25 = 5.8125 - 3 + 1.25
    assert q_jt.item() == pytest.approx(4.0625, abs=1e-5)


def test_lambda_depends_on_joint_action_and_state():
    mixer = _hand_mixer("paper")
    with torch.no_grad():
        # c_{0,1} gets +ln 3 when agent 0 takes action 2; k_1 gets 1 * s_0
        col = S + 0 * A + 2
        mixer.head_actions.weight[0 * N + 1, col] = LN3
        mixer.head_keys.weight[1, 0] = 1.0
        # V_jt = relu(s_1) * 2 + 1.25
        mixer.v_jt[0].weight[0, 1] = 1.0
        mixer.v_jt[2].weight[0, 0] = 2.0
    state = torch.tensor([1.0, 3.0, 0.0])  # |k_1| = |-6 + 1| = 5
    q, v = torch.zeros(N, 1), -torch.ones(N, 1)  # Q_i - V_i = 1
    _, lam_a, _ = mixer.mix(q, v, state, torch.tensor([2, 0]))
    _, lam_b, _ = mixer.mix(q, v, state, torch.tensor([1, 0]))
    lam1_a = 2 * _sig(LN3) * _sig(LN3) + 5 * _sig(-LN3) * _sig(0)
    lam1_b = 2 * _sig(LN3) * _sig(0) + 5 * _sig(-LN3) * _sig(0)
    lam0 = 2 * 0.25 + 5 * 0.75**2
    assert lam_a.squeeze(-1).tolist() == pytest.approx([lam0, lam1_a], abs=1e-6)
    assert lam_b.squeeze(-1).tolist() == pytest.approx([lam0, lam1_b], abs=1e-6)
    q_jt, _, _ = mixer.mix(q, v, state, torch.tensor([2, 0]))
    assert q_jt.item() == pytest.approx(lam0 + lam1_a + 2 * 3.0 + 1.25, abs=1e-5)


def test_action_index_with_trailing_one_is_accepted():
    mixer = FOPMixer(N, S, A)
    q, v, state, action = _inputs((4,))
    a = mixer.mix(q, v, state, action)[0]
    b = mixer.mix(q, v, state, action.unsqueeze(-1))[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_stopgrad_form_forward_value(batch):
    """Authors' form: sum_i (lambda_i - 1) sg(Q_i - V_i) + sum_i Q_i + V(s)
    = sum_i lambda_i (Q_i - V_i) + sum_i V_i + V(s): eq. (7)'s value plus sum_i V_i."""
    paper, stopgrad = _hand_mixer("paper"), _hand_mixer("stopgrad")
    q, v, state, action = _inputs(batch)
    p_jt, s_jt = paper.mix(q, v, state, action)[0], stopgrad.mix(q, v, state, action)[0]
    assert torch.allclose(s_jt, p_jt + v.sum(-2), atol=1e-5)
    # with V_i = 0 the two forms agree exactly, also for random (shared) parameters
    random_paper = FOPMixer(N, S, A, advantage_form="paper")
    random_stop = FOPMixer(N, S, A, advantage_form="stopgrad")
    random_stop.load_state_dict(random_paper.state_dict())
    zero_v = torch.zeros_like(v)
    assert torch.allclose(random_paper.mix(q, zero_v, state, action)[0],
                          random_stop.mix(q, zero_v, state, action)[0], atol=1e-5)
    assert torch.allclose(paper.mix(q, zero_v, state, action)[0],
                          stopgrad.mix(q, zero_v, state, action)[0], atol=1e-5)


def test_gradient_wrt_q_and_v_paper_vs_stopgrad():
    q0, v0, state, action = _inputs((5,))
    grads = {}
    for form in ("paper", "stopgrad"):
        mixer = _hand_mixer(form)
        q, v = q0.clone().requires_grad_(), v0.clone().requires_grad_()
        mixer.mix(q, v, state, action)[0].sum().backward()
        grads[form] = (q.grad.squeeze(-1), v.grad)
    lam = LAMBDA.expand(5, N)
    # paper, eq. (7): dQ_jt/dQ_i = lambda_i, dQ_jt/dV_i = -lambda_i
    assert torch.allclose(grads["paper"][0], lam, atol=1e-6)
    assert torch.allclose(grads["paper"][1].squeeze(-1), -lam, atol=1e-6)
    # authors' form: Q_i is trained through the plain sum, the advantage is a constant
    assert torch.allclose(grads["stopgrad"][0], torch.ones(5, N))
    assert grads["stopgrad"][1] is None or torch.all(grads["stopgrad"][1] == 0)


def test_stopgrad_advantage_still_trains_lambda_and_v_jt():
    mixer = FOPMixer(N, S, A, advantage_form="stopgrad")
    mixer.mix(*_inputs((4,)))[0].sum().backward()
    for name in ("head_keys", "head_agents", "head_actions"):
        assert getattr(mixer, name).weight.grad.abs().sum() > 0, name
    assert mixer.v_jt[2].bias.grad.item() == pytest.approx(4.0)  # dQ_jt/dV_jt = 1 per sample


@pytest.mark.parametrize("batch", BATCH_SHAPES)
@pytest.mark.parametrize("form", ["paper", "stopgrad"])
def test_lambda_positive_random(batch, form):
    for seed in range(3):
        torch.manual_seed(seed)
        mixer = FOPMixer(N, S, A, advantage_form=form)
        q, v, state, action = _inputs(batch)
        q_jt, lam, _ = mixer.mix(10 * q, v, 10 * state, action)
        assert lam.shape == (*batch, N, 1)
        assert (lam > 0).all()
        assert torch.isfinite(q_jt).all()


def test_lambda_positive_even_with_zero_weights():
    mixer = FOPMixer(N, S, A, n_heads=1)
    _set_hand_params(mixer, [0.0], [[-50.0, -50.0]], [[0.0, 0.0]], 0.0)
    _, lam, _ = mixer.mix(*_inputs((2,)))
    assert (lam > 0).all()


# ---------------------------------------------------------------------------- continuous actions


def test_continuous_mixer_hand_computed():
    d = 2
    mixer = FOPMixer(N, S, d, discrete_actions=False, n_heads=1, advantage_form="paper")
    _set_hand_params(mixer, [4.0], [[0.0, 0.0]], [[0.0, 0.0]], 0.5)
    with torch.no_grad():
        mixer.head_actions.weight[0, S + 1] = 1.0  # c_0 = u_{0, 1}
        mixer.head_actions.weight[1, S + 2] = -1.0  # c_1 = -u_{1, 0}
    action = torch.tensor([[0.3, LN3], [LN3, 0.7]])  # [N, d]
    q, v = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [0.5]])
    q_jt, lam, _ = mixer.mix(q, v, torch.zeros(S), action)
    expected_lam = [4 * 0.5 * 0.75, 4 * 0.5 * 0.25]
    assert lam.squeeze(-1).tolist() == pytest.approx(expected_lam, abs=1e-6)
    assert q_jt.item() == pytest.approx(1.5 * 1.0 + 0.5 * 1.5 + 0.5, abs=1e-6)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_continuous_mixer_shapes(batch):
    mixer = FOPMixer(N, S, 1, discrete_actions=False)
    td = mixer(_td(*_inputs(batch, discrete=False, action_dim=1)))
    assert td["q_jt"].shape == (*batch, 1)
    assert (td["agents", "lambda"] > 0).all()


def test_continuous_mixer_rejects_action_indices():
    mixer = FOPMixer(N, S, 2, discrete_actions=False)
    q, v, state, _ = _inputs((3,))
    with pytest.raises(ValueError, match="action"):
        mixer.mix(q, v, state, torch.randint(2, (3, N)))


# ---------------------------------------------------------------------------- LinearMixer


@torch.no_grad()
def _hand_linear(k_bias, b_bias):
    mixer = LinearMixer(N, S, A)
    for p in mixer.parameters():
        p.zero_()
    mixer.weights[2].bias.copy_(torch.tensor(k_bias))
    mixer.bias[2].bias.fill_(b_bias)
    return mixer


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_linear_mixer_hand_computed(batch):
    mixer = _hand_linear([-2.0, 3.0], 0.75)  # k = |.| = (2, 3)
    q, v, state, action = _inputs(batch)
    q_jt, k, reg = mixer.mix(q, v, state, action)
    assert torch.allclose(k.squeeze(-1), torch.tensor([2.0, 3.0]).expand(*batch, N))
    expected = 2 * q[..., 0, :] + 3 * q[..., 1, :] + 0.75
    assert torch.allclose(q_jt, expected, atol=1e-5)
    assert torch.equal(reg, torch.zeros(*batch, 1))
    # V_i and the action do not enter DOP's decomposition
    q_jt2, _, _ = mixer.mix(q, v + 10, state, (action + 1) % A)
    assert torch.allclose(q_jt, q_jt2)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_linear_mixer_weights_nonnegative_and_linear(batch):
    mixer = LinearMixer(N, S, A)
    q, v, state, action = _inputs(batch)
    q_jt, k, _ = mixer.mix(q, v, 10 * state, action)
    assert (k >= 0).all()
    b = mixer.mix(torch.zeros_like(q), v, 10 * state, action)[0]
    assert torch.allclose(q_jt, (k * q).sum(-2) + b, atol=1e-5)
    qr = q.clone().requires_grad_()
    mixer.mix(qr, v, 10 * state, action)[0].sum().backward()
    assert torch.allclose(qr.grad, k, atol=1e-6)  # dQ_jt/dQ_i = k_i


def test_linear_mixer_writes_keys():
    td = LinearMixer(N, S, A)(_td(*_inputs((3,))))
    assert td["q_jt"].shape == (3, 1)
    assert td["agents", "lambda"].shape == (3, N, 1)
    assert td["mixer_regularizer"].shape == (3, 1)


# ---------------------------------------------------------------------------- Qatten


def _qatten(state_dim=6, unit_dim=2, n_heads=3, reg_coef=1e-3):
    return QattenWeights(N, state_dim, unit_dim, n_heads=n_heads, hypernet_embed=8, embed_dim=4,
                         reg_coef=reg_coef)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_qatten_weights_positive_and_sum_to_heads(batch):
    qatten = _qatten(n_heads=3)
    weights, reg = qatten(5 * torch.randn(*batch, 6))
    assert weights.shape == (*batch, N, 1) and reg.shape == (*batch, 1)
    assert (weights > 0).all()
    total = weights.sum(-2).squeeze(-1)
    assert torch.allclose(total, torch.full(batch, 3 + N * 1e-10, dtype=torch.float), atol=1e-5)


def test_qatten_regulariser_matches_manual():
    qatten = _qatten(n_heads=3, reg_coef=0.01)
    state = torch.randn(4, 6)
    weights, reg = qatten(state)
    units = state[:, : N * 2].reshape(4, N, 2)
    manual_reg, manual_w = torch.zeros(4, 1), torch.zeros(4, N)
    for selector, key in zip(qatten.selectors, qatten.keys):
        query = selector(state)  # [B, embed]
        logits = torch.einsum("bne,be->bn", key(units), query)  # [B, N]
        manual_reg += (logits**2).mean(-1, keepdim=True)
        manual_w += torch.softmax(logits / math.sqrt(4), -1)
    assert torch.allclose(reg, 0.01 * manual_reg, atol=1e-6)
    assert torch.allclose(weights.squeeze(-1), manual_w, atol=1e-6)
    assert (reg > 0).all()


def test_qatten_hand_logits():
    """One head, identity-like key, constant query: logits_i = units_{i, 0}."""
    qatten = QattenWeights(N, 4, 2, n_heads=1, hypernet_embed=2, embed_dim=1, reg_coef=0.5)
    with torch.no_grad():
        for p in qatten.parameters():
            p.zero_()
        qatten.selectors[0][0].bias.fill_(1.0)  # hidden = relu(1) = 1 (both units)
        qatten.selectors[0][2].weight.fill_(0.5)  # query = 0.5 + 0.5 = 1
        qatten.keys[0].weight[0, 0] = 1.0  # key_i = unit_{i, 0}
    state = torch.tensor([1.0, 9.0, 3.0, 9.0])  # units (1, 9), (3, 9): logits 1, 3
    weights, reg = qatten(state)
    expected = torch.softmax(torch.tensor([1.0, 3.0]), -1)  # sqrt(embed_dim=1) = 1
    assert torch.allclose(weights.squeeze(-1), expected, atol=1e-6)
    assert reg.item() == pytest.approx(0.5 * (1.0 + 9.0) / 2)


def test_qatten_zero_keys_gives_uniform_weights_and_zero_reg():
    qatten = _qatten(n_heads=4)
    with torch.no_grad():
        for key in qatten.keys:
            key.weight.zero_()
    weights, reg = qatten(torch.randn(3, 6))
    assert torch.allclose(weights, torch.full((3, N, 1), 4 / N), atol=1e-6)
    assert torch.equal(reg, torch.zeros(3, 1))


def test_qatten_needs_room_for_unit_features():
    with pytest.raises(ValueError, match="unit_dim"):
        QattenWeights(n_agents=3, state_dim=5, unit_dim=2)
    QattenWeights(n_agents=3, state_dim=6, unit_dim=2)  # exactly fits


def test_qatten_mixer_forward_and_gradient():
    """Q_jt = sum_i lambda_i w_i (Q_i - V_i) + sum_i w_i V_i + V_jt; dQ_jt/dQ_i = w_i."""
    qatten = _qatten(state_dim=S + 1, unit_dim=2)
    mixer = FOPMixer(N, S + 1, A, advantage_form="stopgrad", qatten=qatten)
    q0, v, state, action = _inputs((5,), s=S + 1)
    q = q0.clone().requires_grad_()
    td = mixer(_td(q, v, state, action))
    w, reg = qatten(state)
    lam, v_jt = td["agents", "lambda"], mixer.v_jt(state)
    expected = (lam * w * (q0 - v)).sum(-2) + (w * v).sum(-2) + v_jt
    assert torch.allclose(td["q_jt"], expected, atol=1e-5)
    assert torch.allclose(td["mixer_regularizer"], reg)
    td["q_jt"].sum().backward()
    assert torch.allclose(q.grad, w.detach(), atol=1e-6)


def test_qatten_requires_stopgrad_form():
    with pytest.raises(ValueError, match="stopgrad"):
        FOPMixer(N, S + 1, A, advantage_form="paper", qatten=_qatten(state_dim=S + 1))


# ---------------------------------------------------------------------------- keys and shapes


@pytest.mark.parametrize("mixer_cls", [FOPMixer, LinearMixer])
@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_forward_writes_default_keys(mixer_cls, batch):
    mixer = mixer_cls(N, S, A)
    q, v, state, action = _inputs(batch)
    td = mixer(_td(q, v, state, action))
    q_jt, lam, reg = mixer.mix(q, v, state, action)
    assert torch.equal(td["q_jt"], q_jt)
    assert torch.equal(td["agents", "lambda"], lam)
    assert torch.equal(td["mixer_regularizer"], reg)


@pytest.mark.parametrize("mixer_cls", [FOPMixer, LinearMixer])
def test_custom_keys_are_read_and_written(mixer_cls):
    in_keys = [("team", "q"), ("team", "v"), "global_state", ("team", "u")]
    out_keys = ["joint_q", ("team", "weights"), "penalty"]
    mixer = mixer_cls(N, S, A, in_keys=in_keys, out_keys=out_keys)
    q, v, state, action = _inputs((3,))
    td = TensorDict({in_keys[0]: q, in_keys[1]: v, in_keys[2]: state, in_keys[3]: action}, [3])
    mixer(td)
    expected = mixer.mix(q, v, state, action)
    for key, value in zip(out_keys, expected):
        assert torch.equal(td[key], value)
    assert "q_jt" not in td.keys() and ("agents", "lambda") not in td.keys(True)
    # the default keys are not read any more
    with pytest.raises(KeyError, match="team"):
        mixer(_td(q, v, state, action))
    with pytest.raises(KeyError, match="global_state"):
        mixer(td.exclude("global_state"))


def test_wrong_number_of_keys_raises():
    with pytest.raises(ValueError, match="in_keys"):
        FOPMixer(N, S, A, in_keys=["a", "b", "c"])
    with pytest.raises(ValueError, match="out_keys"):
        LinearMixer(N, S, A, out_keys=["a"])


@pytest.mark.parametrize("missing", [("agents", "chosen_action_value"), ("agents", "state_value"),
                                     "state", ("agents", "action")])
@pytest.mark.parametrize("mixer_cls", [FOPMixer, LinearMixer])
def test_missing_key_raises_keyerror_naming_it(mixer_cls, missing):
    td = _td(*_inputs((3,)))
    td = td.exclude(missing)
    name = missing if isinstance(missing, str) else missing[-1]
    with pytest.raises(KeyError, match=name):
        mixer_cls(N, S, A)(td)


BAD_SHAPES = [
    # (which input, its bad shape, expected name in the message)
    (0, (3, N), "chosen_action_value"),  # missing trailing 1
    (0, (3, N + 1, 1), "chosen_action_value"),  # wrong number of agents
    (0, (N,), "chosen_action_value"),  # too few dims
    (1, (3, N), "state_value"),
    (1, (4, N, 1), "state_value"),  # batch mismatch
    (2, (3, S + 1), "state"),
    (2, (4, S), "state"),
    (2, (3, 1, S), "state"),
    (3, (3, N + 1), "action"),
    (3, (3, N, 2), "action"),
    (3, (4, N), "action"),
]


@pytest.mark.parametrize("mixer_cls", [FOPMixer, LinearMixer])
@pytest.mark.parametrize("which, shape, name", BAD_SHAPES)
def test_bad_shapes_raise_valueerror_naming_the_key(mixer_cls, which, shape, name):
    inputs = list(_inputs((3,)))
    inputs[which] = torch.randint(A, shape) if which == 3 else torch.randn(shape)
    mixer = mixer_cls(N, S, A)
    with pytest.raises(ValueError, match=name):
        mixer.mix(*inputs)
    td = TensorDict(
        {("agents", "chosen_action_value"): inputs[0], ("agents", "state_value"): inputs[1],
         "state": inputs[2], ("agents", "action"): inputs[3]}, batch_size=[])
    with pytest.raises(ValueError, match=name):
        mixer(td)


def test_continuous_bad_action_vector_size():
    mixer = FOPMixer(N, S, 2, discrete_actions=False)
    q, v, state, _ = _inputs((3,))
    with pytest.raises(ValueError, match="action"):
        mixer.mix(q, v, state, torch.randn(3, N, 3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_agents=0, state_dim=S, action_dim=A), "n_agents"),
        (dict(n_agents=N, state_dim=0, action_dim=A), "state_dim"),
        (dict(n_agents=N, state_dim=S, action_dim=0), "action_dim"),
        (dict(n_agents=N, state_dim=S, action_dim=A, advantage_form="qplex"), "advantage_form"),
        (dict(n_agents=N, state_dim=S, action_dim=A, n_heads=0), "n_heads"),
    ],
)
def test_mixer_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FOPMixer(**kwargs)
