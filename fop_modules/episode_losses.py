"""TorchRL's QMIX/VDN and discrete SAC losses on replayed episodes, with GRU agents.

:class:`~fop_modules.lightning.MARLLightningModule` replays ``[B, T]`` slices of episodes when
``collect.sequence_length`` is set (the episode limit: whole episodes, as PyMARL replays them;
TorchRL's ``SliceSampler`` pads short slices at their end and marks the real steps in
``("collector", "mask")``). TorchRL's ``QMixerLoss`` and ``DiscreteSACLoss`` read transitions.
The losses here bridge the two as :class:`~fop_modules.FOPLoss` does:

1. The agents' :class:`~fop_modules.recurrent.GRUEncoder` is unrolled once over the batch per
   parameter set (:meth:`~fop_modules.recurrent.GRUEncoder.unroll_steps`: one packed GRU run over
   every agent and slice, each slice only over its real steps), from the hidden state the agent
   had at the slice's first step. It gives h_t at every real step t and h_{t+1} at its successor.
2. The M real steps become M flat transitions carrying those embeddings at ``("agents",
   "embed")`` and ``("next", "agents", "embed")``: padding never reaches a network, and the mean
   over the M rows is PyMARL's masked mean over ``[B, T]``.
3. The TorchRL loss runs on them with the encoder in its precomputed mode (its step is a no-op,
   the heads read the embeddings).

MLP agents go through the same path (step 1 is skipped), so transitions and episodes both work.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import NestedKey, TensorDictBase
from torch import Tensor, nn
from torchrl.objectives import DiscreteSACLoss, LossModule, QMixerLoss

from fop_modules.networks import ACTION_KEY, MASK_KEY
from fop_modules.recurrent import find_encoder

__all__ = ["EpisodeQMixerLoss", "EpisodeDiscreteSACLoss", "real_steps", "transitions"]


def real_steps(loss: LossModule, tensordict: TensorDictBase) -> Tensor:
    """The [B, T] mask of real (not padded) steps of a slice batch: the first of the loss's
    mask keys (TorchRL's ``("collector", "mask")``) that the batch holds, else all steps."""
    for key in loss._loss_mask_keys():
        mask = tensordict.get(key, None)
        if mask is not None:
            return mask.reshape(tensordict.batch_size)
    return torch.ones(tensordict.batch_size, dtype=torch.bool, device=tensordict.device)


def transitions(
    loss: LossModule,
    tensordict: TensorDictBase,
    network: nn.Module,
    params: TensorDictBase,
    next_params: TensorDictBase | None = None,
) -> tuple[TensorDictBase, Tensor | None]:
    """The real steps of a batch as flat transitions, with ``network``'s GRU embeddings.

    Args:
        loss: the loss (its mask keys say which steps are real).
        tensordict: ``[M]`` transitions (returned as they are; MLP agents only) or ``[B, T]``
            slices whose padding, if any, follows their real steps.
        network: the agents' network; its :class:`~fop_modules.recurrent.GRUEncoder`, if any, is
            unrolled.
        params: the parameters of the root embeddings (with gradients).
        next_params: the parameters of the ``"next"`` embeddings (no gradient; a target
            network), or None: ``params``'s, from the same unroll.

    Returns:
        ``(rows, next_embed)``: the ``[M]`` rows, and the embeddings h_{t+1} under ``params``
        [M, N, H] (detached) when ``next_params`` are given (else None; also None without a GRU).
    """
    encoder = find_encoder(network)
    if tensordict.batch_dims == 1 and encoder is None:
        return tensordict, None
    if tensordict.batch_dims != 2:
        raise ValueError(
            f"{type(loss).__name__} needs [M] transitions or [B, T] episode slices (time last); GRU "
            f"agents need slices (a sequence replay); got batch {list(tensordict.batch_size)}"
        )
    valid = real_steps(loss, tensordict)
    rows = tensordict[valid]
    if encoder is None:
        return rows, None
    with params.to_module(network):
        root, next_embed = encoder.unroll_steps(tensordict, valid)  # h_t, h_{t+1} at the real steps
    rows.set(encoder.embed_key, root)
    if next_params is None:
        rows.set(("next", *encoder.embed_key), next_embed)
        return rows, None
    with torch.no_grad(), next_params.to_module(network, preserve_module_state=False):
        _, target_next = encoder.unroll_steps(tensordict, valid)
    rows.set(("next", *encoder.embed_key), target_next)
    return rows, next_embed.detach()


def _key(key) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)


def _precomputed(network: nn.Module):
    """The encoder's precomputed mode (its step reads the embeddings), or nothing without one."""
    encoder = find_encoder(network)
    return encoder.precomputed() if encoder is not None else contextlib.nullcontext()


class EpisodeQMixerLoss(QMixerLoss):
    """TorchRL's ``QMixerLoss`` on transitions or episode slices, with GRU agents and double Q.

    The TD target of a real step t is ``r_t + gamma (1 - terminated) Q_tot^-(s_{t+1},
    Q_i^-(tau_{t+1}, u'_i))`` (one step, the target networks ^-), where u'_i maximises over agent
    i's available actions at t + 1 either Q_i^- (``double_q=False``: TorchRL's and BenchMARL's
    target) or the online Q_i (``double_q=True``: PyMARL's ``double_q``, van Hasselt et al. 2016).
    The loss is the mean squared error over the real steps.

    The local value network is the agents' Q network followed by a ``QValueModule`` that reads
    ``action_mask_key``; the loss fills an all-true mask where the batch has none (an env without
    masks) and, for double Q, replaces the ``"next"`` mask by the one-hot of the online greedy
    action, so that TorchRL's masked max picks u'_i.

    Args:
        local_value_network: as ``QMixerLoss``'s; a :class:`~fop_modules.recurrent.GRUEncoder`
            inside it is unrolled over the episode slices.
        mixer_network: as ``QMixerLoss``'s.
        num_actions: the number of discrete actions A (for the all-true mask).
        double_q: select the next action with the online network (PyMARL) or the target one.
        action_mask_key: the mask the ``QValueModule`` reads.
        **kwargs: ``QMixerLoss``'s keyword arguments.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule, TensorDictSequential
        >>> from torchrl.modules import QValueModule, VDNMixer
        >>> from fop_modules.recurrent import EMBED_KEY, HIDDEN_KEY, recurrent_discrete_critic
        >>> q = recurrent_discrete_critic(2, 3, 4, hidden=8, embed_key=EMBED_KEY, hidden_key=HIDDEN_KEY)
        >>> local = TensorDictSequential(q, QValueModule(action_space="categorical",
        ...     action_value_key=("agents", "action_value"), action_mask_key=("agents", "action_mask"),
        ...     out_keys=[("agents", "action"), ("agents", "action_value"), ("agents", "chosen_action_value")]))
        >>> mixer = TensorDictModule(VDNMixer(n_agents=2, device="cpu"),
        ...     in_keys=[("agents", "chosen_action_value")], out_keys=["chosen_action_value"])
        >>> loss = EpisodeQMixerLoss(local, mixer, num_actions=4, double_q=True, action_space="categorical")
        >>> step = {("agents", "observation"): torch.randn(4, 5, 2, 3),
        ...     ("agents", "last_action"): torch.zeros(4, 5, 2, 4),
        ...     ("agents", "action_mask"): torch.ones(4, 5, 2, 4, dtype=torch.bool)}
        >>> batch = TensorDict({**step, "is_init": torch.zeros(4, 5, 1, dtype=torch.bool),
        ...     ("agents", "action"): torch.zeros(4, 5, 2, dtype=torch.long),
        ...     "next": TensorDict({**step, "reward": torch.ones(4, 5, 1),
        ...         "done": torch.zeros(4, 5, 1, dtype=torch.bool),
        ...         "terminated": torch.zeros(4, 5, 1, dtype=torch.bool)}, [4, 5])}, [4, 5])
        >>> loss(batch)["loss"].shape  # 4 episodes of 5 steps
        torch.Size([])
    """

    def __init__(
        self,
        local_value_network: nn.Module,
        mixer_network: nn.Module,
        *,
        num_actions: int,
        double_q: bool = False,
        action_mask_key: NestedKey = MASK_KEY,
        **kwargs: Any,
    ) -> None:
        super().__init__(local_value_network, mixer_network, **kwargs)
        self.num_actions, self.double_q, self.action_mask_key = num_actions, double_q, action_mask_key

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        network = self.local_value_network
        rows, next_embed = transitions(self, tensordict, network, self.local_value_network_params,
                                       self.target_local_value_network_params)
        rows = rows.clone(False)
        if self.action_mask_key not in rows.keys(True):  # an env without masks: all available
            every = torch.ones(*rows.get(self.tensor_keys.action).shape, self.num_actions,
                               dtype=torch.bool, device=rows.device)
            rows.set(self.action_mask_key, every)
            rows.set(("next", *_key(self.action_mask_key)), every)
        with _precomputed(network):
            if self.double_q:
                next_mask = self._online_greedy_mask(rows.get("next"), next_embed)
                rows.set(("next", *_key(self.action_mask_key)), next_mask)
            return super().forward(rows)

    @torch.no_grad()
    def _online_greedy_mask(self, nxt: TensorDictBase, next_embed: Tensor | None) -> Tensor:
        """One-hot [M, N, A] of argmax over the available actions of the online Q_i at t + 1."""
        online = nxt.clone(False)
        encoder = find_encoder(self.local_value_network)
        if encoder is not None:
            online.set(encoder.embed_key, next_embed)
        with self.local_value_network_params.to_module(self.local_value_network):
            self.local_value_network(online)
        q = online.get(self.tensor_keys.action_value)
        return F.one_hot(online.get(ACTION_KEY), q.shape[-1]).bool()


class EpisodeDiscreteSACLoss(DiscreteSACLoss):
    """TorchRL's ``DiscreteSACLoss`` on transitions or episode slices, with a GRU actor.

    The actor's GRU is unrolled once (with gradients) over the slices; the root embeddings feed
    the actor loss and the ``"next"`` ones the soft target's policy (SAC draws the next action
    from the current policy: no target actor). Critics read the observations, as before. Each
    loss is a mean over the real steps.
    """

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        rows, _ = transitions(self, tensordict, self.actor_network, self.actor_network_params)
        with _precomputed(self.actor_network):
            return super().forward(rows)
