"""Recurrent (GRU) agents for partially observable tasks such as SMAC, shared across agents.

The authors' agent (PyMARL's ``RNNAgent``) is ``fc -> ReLU -> GRUCell -> fc`` on the agent's
observation, its last action (one-hot) and its one-hot id, with hidden size 64. Here the same
network is split so that training never loops over time steps in Python:

- :class:`GRUEncoder` turns inputs into the hidden state h_t [*, N, H]. It runs in two modes:

  * **step** (collectors): a tensordict without a time dimension. It reads the carried hidden state
    ``"rnn_hidden"`` [*, N, H] (zeroed where ``"is_init"``), takes one GRU step and writes
    h_t at ``("agents", "embed")`` and ``("next", "rnn_hidden")``, which TorchRL's
    collectors carry to the next step.
  * **sequence** (the loss, :meth:`GRUEncoder.unroll`): a [B, T] tensordict of
    trajectory slices. Within a slice the ``"next"`` inputs of step t are the inputs of step
    t + 1, so one GRU run of T + 1 steps over all B * N sequences, on the inputs of step 0
    followed by every step's ``"next"`` inputs, from the stored hidden state at t = 0, gives both
    ``("agents", "embed")`` (h_0..h_{T-1}) and ``("next", "agents", "embed")`` (h_1..h_T) exactly.
    The run is :func:`~fop_modules.packed_gru.packed_gru` with the ``nn.GRU``'s parameters: each
    sequence only over its real steps, with a hand-written backward.

- The policy head (a Linear on ``("agents", "embed")``) is feed-forward, so :class:`FOPLoss`
  uses a recurrent actor like any other once the embeddings are in the tensordict.

:func:`recurrent_discrete_actor` builds the whole actor; :func:`recurrent_transforms` gives the
env transforms it needs (``InitTracker``, the hidden-state primer and :class:`LastAction`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from torch import Tensor, nn
from torchrl.data import Composite, Unbounded
from torchrl.envs import InitTracker, Transform, TensorDictPrimer
from torchrl.modules import MaskedCategorical, ProbabilisticActor

from fop_modules.networks import ACTION_KEY, MASK_KEY, OBS_KEY, first_layer_with_agent_id
from fop_modules.packed_gru import packed_gru

__all__ = [
    "GRUEncoder",
    "LastAction",
    "recurrent_discrete_actor",
    "recurrent_discrete_critic",
    "recurrent_transforms",
    "find_encoder",
]

LAST_ACTION_KEY = ("agents", "last_action")
HIDDEN_KEY = "rnn_hidden"  # [*B, N, H], at the root: TorchRL collectors carry ("next", key)
EMBED_KEY = ("agents", "embed")
CRITIC_EMBED_KEY = ("agents", "critic_embed")
IS_INIT_KEY = "is_init"


class GRUEncoder(TensorDictModuleBase):
    """h_t = GRU(h_{t-1}, ReLU(fc([o_t, onehot(u_{t-1}), onehot(i)]))) for every agent i.

    Args:
        n_agents: number of agents N.
        obs_dim: size of one agent's observation.
        n_actions: number of discrete actions (the size of the one-hot last action); 0: no last
            action in the input.
        hidden: GRU hidden size (authors: 64).
        agent_id: append the one-hot agent id to the input (authors: yes).
        embed_key: where h_t is written (the head reads it).
        hidden_key: the carried hidden state [*B, N, H] in collectors (a critic, never run by a
            collector, starts every slice from zeros).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> enc = GRUEncoder(n_agents=2, obs_dim=3, n_actions=4, hidden=8)
        >>> step = TensorDict({("agents", "observation"): torch.randn(5, 2, 3),
        ...                    ("agents", "last_action"): torch.zeros(5, 2, 4),
        ...                    "rnn_hidden": torch.zeros(5, 2, 8),
        ...                    "is_init": torch.ones(5, 1, dtype=torch.bool)}, [5])
        >>> enc(step)["next", "rnn_hidden"].shape
        torch.Size([5, 2, 8])
        >>> seq = step.unsqueeze(1).expand(5, 7).clone()  # [B=5, T=7]
        >>> seq["next"] = seq.exclude("next").clone()
        >>> out = enc.unroll(seq)
        >>> out["agents", "embed"].shape, out["next", "agents", "embed"].shape
        (torch.Size([5, 7, 2, 8]), torch.Size([5, 7, 2, 8]))
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        n_actions: int = 0,
        *,
        hidden: int = 64,
        agent_id: bool = True,
        embed_key: tuple[str, str] = EMBED_KEY,
        hidden_key: str = HIDDEN_KEY,
    ) -> None:
        super().__init__()
        if n_agents < 1 or obs_dim < 1 or hidden < 1 or n_actions < 0:
            raise ValueError(
                f"GRUEncoder needs n_agents, obs_dim, hidden >= 1 and n_actions >= 0, got "
                f"{n_agents}, {obs_dim}, {hidden}, {n_actions}"
            )
        self.n_agents, self.obs_dim, self.n_actions = n_agents, obs_dim, n_actions
        self.hidden, self.agent_id = hidden, agent_id
        in_features = obs_dim + n_actions + (n_agents if agent_id else 0)
        self.fc = nn.Linear(in_features, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.embed_key, self.hidden_key = embed_key, hidden_key
        self.in_keys = [OBS_KEY, hidden_key, IS_INIT_KEY] + ([LAST_ACTION_KEY] if n_actions else [])
        self.out_keys = [embed_key, ("next", hidden_key)]
        self._precomputed = False

    def _features(self, td: TensorDictBase) -> Tensor:
        """ReLU(fc(input)) [*B, N, H] from observation, last action and agent id."""
        obs = td.get(OBS_KEY)
        if obs.shape[-2:] != (self.n_agents, self.obs_dim):
            raise ValueError(
                f"GRUEncoder: {OBS_KEY!r} must have shape [*B, {self.n_agents}, {self.obs_dim}], "
                f"got {list(obs.shape)}"
            )
        x = obs.to(self.fc.weight.dtype)
        if self.n_actions:
            x = torch.cat([x, td.get(LAST_ACTION_KEY).to(x.dtype)], -1)
        return F.relu(first_layer_with_agent_id(self.fc, x) if self.agent_id else self.fc(x))

    def _initial_hidden(self, td: TensorDictBase) -> Tensor:
        """The carried hidden state [*B, N, H], zero where an episode starts."""
        batch = td.batch_size
        hidden = td.get(self.hidden_key, None)
        if hidden is None:
            hidden = torch.zeros(*batch, self.n_agents, self.hidden, device=self.fc.weight.device)
        is_init = td.get(IS_INIT_KEY, None)
        if is_init is not None:
            hidden = torch.where(is_init.reshape(*batch, 1, 1), torch.zeros_like(hidden), hidden)
        return hidden

    def _gru_step(self, x: Tensor, h: Tensor) -> Tensor:
        """One GRU step for every row: x, h [*B, N, H] -> h' [*B, N, H]."""
        shape = h.shape
        out, _ = self.gru(x.reshape(-1, 1, self.hidden), h.reshape(1, -1, self.hidden))
        return out.reshape(shape)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Step mode (collectors, evaluation); a no-op inside :meth:`precomputed`."""
        if self._precomputed:
            return tensordict
        h = self._gru_step(self._features(tensordict), self._initial_hidden(tensordict))
        tensordict.set(self.embed_key, h)
        tensordict.set(("next", self.hidden_key), h)
        return tensordict

    def unroll(self, tensordict: TensorDictBase, lengths: Tensor | None = None) -> TensorDictBase:
        """Sequence mode on a [B, T] tensordict (time last): writes root and next embeddings.

        Slices must be consecutive steps of one trajectory (TorchRL's ``SliceSampler`` with a
        ``traj_key``): the only reset is at t = 0, where the stored hidden state is zeroed by
        ``"is_init"``, and the root inputs of step t + 1 are the ``"next"`` inputs of step t (only
        those of step 0 and the ``"next"`` ones are read).

        Args:
            tensordict: the [B, T] batch.
            lengths: real steps of each slice [B] when slices are padded at their end: the
                GRU (:func:`~fop_modules.packed_gru.packed_gru`) runs each slice only over its
                real steps and the embeddings past them are zero (the loss never reads them).
                ``None``: every step is computed.
        """
        B, T = _slices(tensordict)
        h, (b, t) = self._packed_unroll(tensordict, lengths)
        out = h.new_zeros(B, T + 1, *h.shape[1:]).index_put((b, t), h)  # h_0..h_T, zero past the end
        out_td = tensordict.clone(False)
        out_td.set(self.embed_key, out[:, :T])
        out_td.set(("next", *self.embed_key), out[:, 1:])
        return out_td

    def unroll_steps(self, tensordict: TensorDictBase, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Sequence mode on the real steps only: the root and next embeddings [M, N, H] at the M
        true entries of ``valid`` [B, T], in row-major order (as ``tensordict[valid]``).

        Each slice's real steps must be its first ones (``SliceSampler`` pads at the end). Same
        values as :meth:`unroll` at those steps, without the padded [B, T] layout in between.
        """
        B, T = _slices(tensordict)
        lengths = valid.sum(-1)
        if valid.shape != (B, T) or not torch.equal(valid, torch.arange(T, device=valid.device) < lengths.unsqueeze(-1)):
            raise ValueError(
                f"GRUEncoder.unroll_steps needs a [B, T] = {[B, T]} mask whose real steps are the first "
                f"ones of each slice (padding at the end, as SliceSampler pads); got shape "
                f"{list(valid.shape)}" + (" with padding before a real step" if valid.shape == (B, T) else "")
            )
        h, (b, t) = self._packed_unroll(tensordict, lengths)
        packed_row = torch.empty(B, T + 1, dtype=torch.long, device=h.device)
        packed_row[b, t] = torch.arange(len(b), device=h.device)
        return h[packed_row[:, :T][valid]], h[packed_row[:, 1:][valid]]

    def _packed_unroll(self, tensordict: TensorDictBase, lengths: Tensor | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """h_0..h_{length_b} of every slice b, packed: ([P, N, H], (slice index [P], step [P]))."""
        B, T = tensordict.batch_size
        N, H = self.n_agents, self.hidden
        inputs = tensordict.select(OBS_KEY, LAST_ACTION_KEY, ("next", OBS_KEY), ("next", LAST_ACTION_KEY),
                                   strict=False)
        # Slice b runs h_0..h_{length_b}: its root input x_0, then x_{t+1} = the "next" input of
        # step t. Sorted longest first and packed time-major, the slices still running at step t
        # are the first rows of that step, so the GRU skips the padding at no cost per step.
        steps = torch.full((B,), T) if lengths is None else lengths.detach().cpu().clamp(0, T)
        steps = steps + 1
        order = steps.argsort(descending=True, stable=True)
        running = torch.arange(T + 1).unsqueeze(1) < steps[order]  # [T + 1, B]
        sizes = running.sum(1)
        t, j = (index.to(tensordict.device) for index in running.nonzero(as_tuple=True))
        b = order.to(tensordict.device)[j]  # packed row -> slice, step t; all B slices run at t = 0
        x = torch.cat([self._features(inputs[b[:B], 0]), self._features(inputs.get("next")[b[B:], t[B:] - 1])])
        h0 = self._initial_hidden(tensordict[:, 0])[b[:B]]  # [B, N, H]
        h = packed_gru(x.reshape(-1, H), h0.reshape(-1, H), self.gru, (sizes[sizes > 0] * N).tolist())
        return h.reshape(-1, N, H), (b, t)

    @contextlib.contextmanager
    def precomputed(self) -> Iterator[None]:
        """Inside the block the step mode is a no-op: the embeddings already written by
        :meth:`unroll` or :meth:`unroll_steps` are used. For losses that call the whole network
        (TorchRL's, :mod:`fop_modules.episode_losses`); :class:`~fop_modules.FOPLoss` runs the
        head after the encoder itself."""
        self._precomputed = True
        try:
            yield
        finally:
            self._precomputed = False


def _slices(tensordict: TensorDictBase) -> tuple[int, int]:
    """(B, T) of a batch of B slices of T steps; raises for any other batch shape."""
    if tensordict.batch_dims != 2:
        raise ValueError(
            f"GRUEncoder's sequence mode (unroll, unroll_steps) needs a [B, T] tensordict (time last), "
            f"got batch {list(tensordict.batch_size)}"
        )
    return tuple(tensordict.batch_size)


def recurrent_discrete_actor(
    n_agents: int, obs_dim: int, n_actions: int, *, hidden: int = 64, agent_id: bool = True,
    last_action: bool = True, neg_inf: float = float("-inf"),
) -> ProbabilisticActor:
    """The authors' GRU actor: GRUEncoder -> Linear -> masked softmax over available actions.

    ``neg_inf`` is the logit of unavailable actions (-inf: probability 0 exactly; TorchRL's
    ``DiscreteSACLoss`` needs a finite one, as it multiplies probabilities by logits).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> actor = recurrent_discrete_actor(n_agents=2, obs_dim=3, n_actions=4, hidden=8)
        >>> td = TensorDict({("agents", "observation"): torch.randn(5, 2, 3),
        ...                  ("agents", "last_action"): torch.zeros(5, 2, 4),
        ...                  ("agents", "action_mask"): torch.ones(5, 2, 4, dtype=torch.bool),
        ...                  "is_init": torch.ones(5, 1, dtype=torch.bool)}, [5])
        >>> actor(td)["agents", "action"].shape
        torch.Size([5, 2])
    """
    encoder = GRUEncoder(n_agents, obs_dim, n_actions if last_action else 0, hidden=hidden,
                         agent_id=agent_id)
    head = TensorDictModule(nn.Linear(hidden, n_actions), in_keys=[EMBED_KEY],
                            out_keys=[("agents", "logits")])
    return ProbabilisticActor(
        TensorDictSequential(encoder, head),
        in_keys={"logits": ("agents", "logits"), "mask": MASK_KEY},
        out_keys=[ACTION_KEY],
        distribution_class=MaskedCategorical,
        distribution_kwargs={"neg_inf": neg_inf},
    )


def recurrent_discrete_critic(
    n_agents: int, obs_dim: int, n_actions: int, *, hidden: int = 64, agent_id: bool = True,
    embed_key: tuple[str, str] = CRITIC_EMBED_KEY, hidden_key: str = "critic_rnn_hidden",
) -> TensorDictSequential:
    """The re-release's GRU critic: Q_i(tau_i, .) [*B, N, A] at ``("agents", "action_value")``
    from a GRU over (observation, last action, agent id). FOPLoss only runs it on [B, T] slices
    (whole episodes: a slice that starts mid-episode starts from a zero hidden state). With
    ``embed_key=EMBED_KEY, hidden_key=HIDDEN_KEY`` (the actor's keys, which the collectors carry
    between steps) it is the PyMARL agent of QMIX and VDN, acting in collectors.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> critic = recurrent_discrete_critic(n_agents=2, obs_dim=3, n_actions=4, hidden=8)
        >>> td = TensorDict({("agents", "observation"): torch.randn(5, 2, 3),
        ...                  ("agents", "last_action"): torch.zeros(5, 2, 4),
        ...                  "is_init": torch.ones(5, 1, dtype=torch.bool)}, [5])
        >>> critic(td)["agents", "action_value"].shape
        torch.Size([5, 2, 4])
    """
    encoder = GRUEncoder(n_agents, obs_dim, n_actions, hidden=hidden, agent_id=agent_id,
                         embed_key=embed_key, hidden_key=hidden_key)
    head = TensorDictModule(nn.Linear(hidden, n_actions), in_keys=[embed_key],
                            out_keys=[("agents", "action_value")])
    return TensorDictSequential(encoder, head)


def find_encoder(module: nn.Module) -> GRUEncoder | None:
    """The :class:`GRUEncoder` inside an actor, if any."""
    return next((m for m in module.modules() if isinstance(m, GRUEncoder)), None)


class LastAction(Transform):
    """Writes each agent's previous action, one-hot, at ``("agents", "last_action")`` [*, N, A].

    Zeros at reset; after a step, the one-hot of the action just taken (PyMARL's
    ``obs_last_action`` input of the agent network).
    """

    def __init__(self, n_actions: int) -> None:
        super().__init__(in_keys=[ACTION_KEY], out_keys=[LAST_ACTION_KEY])
        self.n_actions = n_actions

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        shape = (*tensordict_reset.get(OBS_KEY).shape[:-1], self.n_actions)  # [*B, N, A]
        tensordict_reset.set(LAST_ACTION_KEY, torch.zeros(shape, device=tensordict_reset.device))
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(ACTION_KEY).long()
        next_tensordict.set(LAST_ACTION_KEY, F.one_hot(action, self.n_actions).float())
        return next_tensordict

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        agents = observation_spec["agents"]
        agents[LAST_ACTION_KEY[1]] = Unbounded(
            shape=(*agents.shape, self.n_actions), device=observation_spec.device
        )
        return observation_spec


def recurrent_transforms(n_agents: int, n_actions: int, hidden: int, batch_size: torch.Size) -> list[Transform]:
    """Env transforms a recurrent actor needs: episode starts, a zero hidden state at reset and
    the last action. Append them to the env with ``TransformedEnv(env, Compose(*transforms))``."""
    primer = TensorDictPrimer(
        Composite(
            {HIDDEN_KEY: Unbounded(shape=(*batch_size, n_agents, hidden))}, shape=batch_size
        ),
        reset_key="_reset",
        expand_specs=False,
    )
    return [InitTracker(), primer, LastAction(n_actions)]
