"""TorchRL's QMIX/VDN and discrete SAC losses on replayed episodes, with GRU agents.

:class:`~fop_modules.lightning.MARLLightningModule` replays ``[B, T]`` slices of episodes when
``collect.sequence_length`` is set (the episode limit: whole episodes, as PyMARL replays them;
TorchRL's ``SliceSampler`` pads short slices at their end and marks the real steps in
``("collector", "mask")``). TorchRL's ``QMixerLoss`` and ``DiscreteSACLoss`` read transitions.
The losses here run :func:`~fop_modules.slices.transitions` first (the step
:meth:`FOPLoss.unroll <fop_modules.FOPLoss.unroll>` takes for FOP: a GRU unrolled once per
parameter set over the slices' real steps, which become flat rows carrying its embeddings). The
TorchRL loss then runs on those rows with the encoder in its precomputed mode (its step is a
no-op, the heads read the embeddings): a TorchRL loss calls the whole network, encoder included.

MLP agents go through the same path (nothing to unroll), so transitions and episodes both work.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import NestedKey, TensorDictBase
from torch import Tensor, nn
from torchrl.objectives import DiscreteSACLoss, QMixerLoss

from fop_modules.networks import ACTION_KEY, MASK_KEY
from fop_modules.recurrent import find_encoder
from fop_modules.slices import transitions

__all__ = ["EpisodeQMixerLoss", "EpisodeDiscreteSACLoss"]


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
