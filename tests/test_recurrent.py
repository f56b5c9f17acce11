"""GRU agents: the sequence unroll equals step-by-step collection; the loss trains them."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import Compose, TransformedEnv
from torchrl.objectives import ValueEstimators

from fop_modules import FOPLoss, FOPMixer, networks
from fop_modules.envs import MatrixGameEnv
from fop_modules.recurrent import GRUEncoder, LastAction, recurrent_discrete_actor, recurrent_transforms

N, OBS, A, H = 3, 5, 4, 8


def _sequence(B=2, T=6, is_init_at_start=True):
    """A [B, T] batch of consecutive steps: next inputs of step t are the inputs of step t+1."""
    obs = torch.randn(B, T + 1, N, OBS)
    actions = torch.randint(A, (B, T + 1, N))
    last = torch.cat([torch.zeros(B, 1, N, A), torch.nn.functional.one_hot(actions[:, :-1], A).float()], 1)
    is_init = torch.zeros(B, T + 1, 1, dtype=torch.bool)
    is_init[:, 0] = is_init_at_start
    hidden0 = torch.randn(B, N, H)

    def step(t):
        return {("agents", "observation"): obs[:, t], ("agents", "last_action"): last[:, t],
                "is_init": is_init[:, t], ("agents", "action_mask"): torch.ones(B, N, A, dtype=torch.bool),
                "state": obs[:, t].flatten(-2)}

    steps = [step(t) for t in range(T + 1)]
    root = TensorDict({k: torch.stack([s[k] for s in steps[:-1]], 1) for k in steps[0]}, [B, T])
    nxt = TensorDict({k: torch.stack([s[k] for s in steps[1:]], 1) for k in steps[0]}, [B, T])
    root["next"] = nxt
    root["rnn_hidden"] = hidden0.unsqueeze(1).expand(B, T, N, H).clone()  # only t = 0 is read
    root["agents", "action"] = actions[:, :-1]
    return root, steps, hidden0


@pytest.mark.parametrize("is_init_at_start", [True, False])
def test_unroll_equals_step_by_step(is_init_at_start):
    torch.manual_seed(0)
    enc = GRUEncoder(N, OBS, A, hidden=H)
    seq, steps, hidden0 = _sequence(is_init_at_start=is_init_at_start)
    out = enc.unroll(seq)
    h = hidden0
    stepped = []
    for s in steps:  # what a collector does: carry ("next", "rnn_hidden") to the next step
        td = TensorDict({**s, "rnn_hidden": h}, [seq.batch_size[0]])
        enc(td)
        h = td["next", "rnn_hidden"]
        stepped.append(td["agents", "embed"])
    stepped = torch.stack(stepped, 1)  # [B, T + 1, N, H]
    torch.testing.assert_close(out["agents", "embed"], stepped[:, :-1])
    torch.testing.assert_close(out["next", "agents", "embed"], stepped[:, 1:])
    if is_init_at_start:  # the stored hidden state is ignored at an episode start
        seq["rnn_hidden"] = torch.randn_like(seq["rnn_hidden"])
        torch.testing.assert_close(enc.unroll(seq)["agents", "embed"], out["agents", "embed"])


def test_unroll_rejects_flat_batches():
    enc = GRUEncoder(N, OBS, A, hidden=H)
    seq, _, _ = _sequence()
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        enc.unroll(seq[:, 0])
    with pytest.raises(ValueError, match="observation"):
        GRUEncoder(N, OBS + 1, A, hidden=H).unroll(seq)


def _loss():
    actor = recurrent_discrete_actor(N, OBS, A, hidden=H)
    critic = networks.discrete_critic(N, OBS, A, hidden=[16])
    mixer = FOPMixer(N, state_dim=N * OBS, action_dim=A)
    return FOPLoss(actor, critic, mixer, action_space="discrete", num_qvalue_nets=2), actor


def _batch():
    seq, _, _ = _sequence()
    seq["next", "reward"] = torch.randn(*seq.batch_size, 1)
    seq["next", "done"] = torch.zeros(*seq.batch_size, 1, dtype=torch.bool)
    seq["next", "terminated"] = torch.zeros(*seq.batch_size, 1, dtype=torch.bool)
    return seq


def test_gradients_reach_the_gru_only_through_the_actor_loss():
    torch.manual_seed(0)
    loss, actor = _loss()
    gru = [p for n, p in loss.actor_network_params.items(True, True) if "gru" in "".join(n)]
    assert gru, "the actor's GRU parameters are part of the loss's actor parameters"
    batch = _batch()
    loss_q, _ = loss.qvalue_loss(batch)
    loss_q.backward()
    assert all(p.grad is None or not p.grad.any() for p in loss.actor_network_params.values(True, True))
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in loss.qvalue_network_params.values(True, True))
    loss_a, _ = loss.actor_loss(batch)
    loss_a.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gru)


def test_actor_loss_matches_a_step_by_step_policy():
    """The loss's policy on an unrolled [B, T] batch equals the collector's policy at each step."""
    torch.manual_seed(0)
    loss, actor = _loss()
    batch = _batch()
    B, T = batch.batch_size
    rows = loss.unroll(batch).rows  # every step is real: [B * T] rows in row-major order
    probs = loss._policy(rows)[0].reshape(B, T, N, A)
    next_probs = loss._policy(rows["next"])[0].reshape(B, T, N, A)
    h = batch["rnn_hidden"][:, 0]
    for t in range(batch.batch_size[1]):
        td = batch[:, t].exclude("next").clone()
        td["rnn_hidden"] = h
        dist = actor.get_dist(td)
        h = td["next", "rnn_hidden"]
        torch.testing.assert_close(dist.probs, probs[:, t])
    torch.testing.assert_close(next_probs[:, :-1], probs[:, 1:])


def test_transforms_give_hidden_state_episode_starts_and_last_action():
    env = MatrixGameEnv(num_envs=4)
    env = TransformedEnv(env, Compose(*recurrent_transforms(2, 3, H, env.batch_size)))
    td = env.reset()
    assert td["rnn_hidden"].shape == (4, 2, H) and not td["rnn_hidden"].any()
    assert td["is_init"].all()
    assert td["agents", "last_action"].shape == (4, 2, 3) and not td["agents", "last_action"].any()
    td["agents", "action"] = torch.tensor([[0, 2]] * 4)
    out = env.step(td)
    assert out["next", "agents", "last_action"][0].tolist() == [[1, 0, 0], [0, 0, 1]]
    assert isinstance(env.transform[-1], LastAction)


def _recurrent_critic_loss():
    from fop_modules.recurrent import recurrent_discrete_critic

    actor = recurrent_discrete_actor(N, OBS, A, hidden=H)
    critic = recurrent_discrete_critic(N, OBS, A, hidden=H)
    mixer = FOPMixer(N, state_dim=N * OBS, action_dim=A)
    return FOPLoss(actor, critic, mixer, action_space="discrete", num_qvalue_nets=2), critic


def test_recurrent_critic_equals_its_step_by_step_values():
    torch.manual_seed(0)
    loss, critic = _recurrent_critic_loss()
    batch = _batch()  # whole episodes: is_init at t = 0
    B, T = batch.batch_size
    slices = loss.unroll(batch)
    rows = loss._critic_input(slices, "root", loss.qvalue_network_params)
    next_rows = loss._critic_input(slices, "next", loss.target_qvalue_network_params)
    q = loss._critic(rows, loss.qvalue_network_params, 1).reshape(B, T, N, A)
    q_next = loss._critic(next_rows, loss.target_qvalue_network_params, 0).reshape(B, T, N, A)
    q0 = loss._critic(rows, loss.qvalue_network_params, 0).reshape(B, T, N, A)
    h = torch.zeros(batch.batch_size[0], N, H)
    for t in range(batch.batch_size[1]):  # twin 1, stepped like a collector would
        td = batch[:, t].exclude("next").clone()
        td["critic_rnn_hidden"] = h
        with loss.qvalue_network_params[1].to_module(loss.qvalue_network):
            out = loss.qvalue_network(td)
        h = td["next", "critic_rnn_hidden"]
        torch.testing.assert_close(out["agents", "action_value"], q[:, t])
    torch.testing.assert_close(q_next[:, :-1], q0[:, 1:])  # targets start as copies
    assert not torch.allclose(q0, q)  # the twins differ


def test_recurrent_critic_gradients_stay_in_their_objective():
    torch.manual_seed(0)
    loss, _ = _recurrent_critic_loss()
    batch = _batch()
    loss_q, _ = loss.qvalue_loss(batch)
    loss_q.backward()
    critic_grads = [p.grad for p in loss.qvalue_network_params.values(True, True)]
    assert all(g is not None and g.abs().sum() > 0 for g in critic_grads)  # the GRU included
    assert all(p.grad is None or not p.grad.any() for p in loss.actor_network_params.values(True, True))
    for p in loss.qvalue_network_params.values(True, True):
        p.grad = None
    loss.actor_loss(batch)[0].backward()
    assert all(p.grad is None or not p.grad.any() for p in loss.qvalue_network_params.values(True, True))


def test_recurrent_critic_outside_a_sequence_is_refused():
    loss, _ = _recurrent_critic_loss()
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        loss.qvalue_loss(_batch()[:, 0])


def test_collector_carries_the_hidden_state_and_resets_it_per_episode():
    from torchrl.collectors import Collector

    from fop_modules.envs import SMACEnv

    def make():
        env = SMACEnv("3m", backend="fake", seed=0)
        return TransformedEnv(env, Compose(*recurrent_transforms(env.n_agents, env.n_actions, H, env.batch_size)))

    env = make()
    actor = recurrent_discrete_actor(3, env.observation_spec["agents", "observation"].shape[-1],
                                     env.n_actions, hidden=H)
    batch = next(iter(Collector(make, actor, frames_per_batch=120, total_frames=120)))
    h, h_next, start = batch["rnn_hidden"], batch["next", "rnn_hidden"], batch["is_init"].squeeze(-1)
    assert start.sum() >= 2  # several episodes in the batch
    torch.testing.assert_close(h[1:][~start[1:]], h_next[:-1][~start[1:]])  # carried step to step
    assert not h[start].any() and h[~start].abs().sum() > 0  # zero at every episode start only
    assert torch.equal(batch["next", "agents", "last_action"].argmax(-1), batch["agents", "action"])
    available = batch["agents", "action_mask"].gather(-1, batch["agents", "action"].unsqueeze(-1))
    assert available.all()  # the collector only samples available actions


def test_unroll_over_real_steps_equals_the_full_unroll_and_is_zero_past_them():
    torch.manual_seed(0)
    enc = GRUEncoder(N, OBS, A, hidden=H)
    seq, _, _ = _sequence(B=7, T=9)
    lengths = torch.tensor([9, 1, 4, 7, 2, 9, 0])
    full, packed = enc.unroll(seq), enc.unroll(seq, lengths)
    for b, length in enumerate(lengths.tolist()):
        root, nxt = ("agents", "embed"), ("next", "agents", "embed")
        torch.testing.assert_close(packed[root][b, :max(length, 1)], full[root][b, :max(length, 1)])
        torch.testing.assert_close(packed[nxt][b, :length], full[nxt][b, :length])
        assert not packed[nxt][b, length:].any() and not packed[root][b, length + 1:].any()


def test_unroll_steps_gives_the_unrolled_embeddings_of_the_real_steps_as_rows():
    torch.manual_seed(0)
    enc = GRUEncoder(N, OBS, A, hidden=H)
    seq, _, _ = _sequence(B=4, T=6)
    valid = torch.arange(6) < torch.tensor([6, 2, 0, 5]).unsqueeze(-1)
    embed, next_embed = enc.unroll_steps(seq, valid)
    full = enc.unroll(seq)
    torch.testing.assert_close(embed, full["agents", "embed"][valid])
    torch.testing.assert_close(next_embed, full["next", "agents", "embed"][valid])
    with pytest.raises(ValueError, match="first ones"):  # a gap: not padding at the end
        enc.unroll_steps(seq, valid & (torch.arange(6) != 1))


def _padded_batch(lengths):
    """_batch() with slices padded after `lengths` steps, as SliceSampler(pad_output=True) gives
    them: ("collector", "mask") marks real steps, each slice's last step is done (truncated, so
    TD(lambda) stops there), padding holds zeros and is marked done and terminated."""
    batch = _batch()
    B, T = batch.batch_size
    mask = torch.arange(T).expand(B, T) < torch.tensor(lengths).unsqueeze(-1)
    batch = batch.apply(lambda x: torch.where(mask.reshape(B, T, *[1] * (x.dim() - 2)), x, torch.zeros_like(x)))
    batch["collector", "mask"] = mask
    batch["next", "done"][torch.arange(B), torch.tensor(lengths) - 1] = True  # slice ends: truncated
    for key in ("done", "terminated"):  # as SliceSampler pads
        batch["next", key][~mask] = True
    batch["agents", "action_mask"][~mask] = True
    batch["next", "agents", "action_mask"][~mask] = True
    batch["next", "agents", "action_mask"][..., 1:] = False  # one available next action: u' is fixed
    return batch


@pytest.mark.parametrize("recurrent_critic", [False, True])
def test_losses_on_padded_slices_are_the_real_steps_losses(recurrent_critic):
    """The networks run on the real steps of a padded slice batch only: the losses and their
    gradients equal those of each slice on its own without padding (weighted by its real steps,
    TD(lambda) within the slice), whatever the padding holds."""
    from fop_modules.recurrent import recurrent_discrete_critic

    torch.manual_seed(0)
    loss, _ = _loss()
    if recurrent_critic:
        loss = FOPLoss(recurrent_discrete_actor(N, OBS, A, hidden=H), recurrent_discrete_critic(N, OBS, A, hidden=H),
                       FOPMixer(N, state_dim=N * OBS, action_dim=A), action_space="discrete", num_qvalue_nets=2)
    loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9, lmbda=0.8)
    lengths = [6, 2]
    batch = _padded_batch(lengths)
    assert loss.unroll(batch).rows.batch_size == torch.Size([8])  # the networks see the 6 + 2 real steps

    def losses_and_grads(td):
        out = {}
        for name in ("qvalue", "actor"):
            loss.zero_grad()
            value, _ = getattr(loss, f"{name}_loss")(td)
            value.backward()
            out[name] = value.detach()
            out[name + "_grads"] = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                                    for p in loss.parameters()]
        return out

    padded = losses_and_grads(batch)
    noisy = batch.clone()  # other padding: nothing changes
    pad = ~noisy["collector", "mask"]
    noisy["agents", "observation"][pad] = 100 * torch.randn_like(noisy["agents", "observation"][pad])
    noisy["next", "reward"][pad] = 1e3
    assert batch["next", "done"][~batch["collector", "mask"]].all()  # the input is left as it was
    alone = [losses_and_grads(batch[b:b + 1, :length].exclude("collector")) for b, length in enumerate(lengths)]
    weights = [length / sum(lengths) for length in lengths]
    for name in ("qvalue", "actor"):
        torch.testing.assert_close(losses_and_grads(noisy)[name], padded[name])
        torch.testing.assert_close(padded[name], sum(w * one[name] for w, one in zip(weights, alone)))
        for k, grad in enumerate(padded[name + "_grads"]):
            torch.testing.assert_close(grad, sum(w * one[name + "_grads"][k] for w, one in zip(weights, alone)))


def test_one_unroll_gives_the_losses_of_separate_unrolls():
    torch.manual_seed(0)
    loss, _ = _loss()
    batch = _padded_batch([6, 3])
    separate = loss.actor_loss(batch)[0], loss.qvalue_loss(batch)[0]
    slices = loss.unroll(batch)
    shared = loss.actor_loss(slices)[0], loss.qvalue_loss(slices)[0]
    torch.testing.assert_close(shared, separate)


def test_alpha_loss_and_metrics_leave_out_padded_steps_with_a_recurrent_critic():
    """With a GRU critic too, the dual objective and the logged entropy, Q_jt and TD error
    average over the real steps only (padding holds whatever the sampler put there)."""
    from fop_modules.recurrent import recurrent_discrete_critic

    torch.manual_seed(0)
    loss = FOPLoss(recurrent_discrete_actor(N, OBS, A, hidden=H), recurrent_discrete_critic(N, OBS, A, hidden=H),
                   FOPMixer(N, state_dim=N * OBS, action_dim=A), action_space="discrete", learn_alpha=True,
                   alpha_init=0.5)
    batch = _padded_batch([6, 2])
    _, meta = loss.actor_loss(batch)
    assert meta["log_prob_jt"].shape == meta["target_entropy"].shape == (8, 1)  # 6 + 2 real steps
    torch.manual_seed(1)
    out = loss(batch)
    other = batch.clone()
    padding = ~other["collector", "mask"]
    other["agents", "observation"][padding] = 100 * torch.randn_like(other["agents", "observation"][padding])
    other["agents", "action_mask"][padding] = torch.tensor([True, False, False, False])  # target entropy 0
    torch.manual_seed(1)
    moved = loss(other)
    for key in ("entropy", "loss_alpha", "loss_actor", "q_jt", "td_error"):
        torch.testing.assert_close(moved[key], out[key])
    _, q_meta = loss.qvalue_loss(batch)
    assert q_meta["q_jt"].shape == q_meta["td_error"].shape == (8, 1)
