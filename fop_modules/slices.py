"""Replayed episode slices as the flat transitions a loss reads.

A sequence replay (TorchRL's ``SliceSampler``) gives ``[B, T]`` slices of episodes, padded after
each slice's real steps, which ``("collector", "mask")`` marks. Losses read transitions. The
step between the two, run before the objectives:

1. The agents' :class:`~fop_modules.recurrent.GRUEncoder` is unrolled once over the slices per
   parameter set (:meth:`~fop_modules.recurrent.GRUEncoder.unroll_steps`: one packed GRU run over
   every agent and slice, each slice only over its real steps, from the hidden state the agent had
   at the slice's first step). It gives h_t at every real step t and h_{t+1} at its successor.
2. The M real steps become M flat transitions carrying those embeddings at ``("agents",
   "embed")`` and ``("next", "agents", "embed")``: padding never reaches a network, and a mean
   over the M rows is the masked mean over ``[B, T]`` (PyMARL's).

:class:`Slices` is what :meth:`FOPLoss.unroll <fop_modules.FOPLoss.unroll>` returns;
:func:`transitions` is the same step for TorchRL's own losses (QMIX, VDN, discrete SAC:
:mod:`fop_modules.episode_losses`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn
from torchrl.objectives import LossModule

from fop_modules.recurrent import find_encoder

__all__ = ["Slices", "real_steps", "transitions"]


@dataclass(frozen=True)
class Slices:
    """A replayed batch as :class:`~fop_modules.FOPLoss`'s objectives read it
    (:meth:`FOPLoss.unroll <fop_modules.FOPLoss.unroll>` builds it; pass it to every objective).

    Attributes:
        rows: the flat ``[M]`` transitions the networks run on: a batch of transitions as it
            is, or the real steps of ``sequence`` in row-major order, with a GRU actor's
            embeddings h_t at its ``embed_key`` and h_{t+1} under ``"next"``.
        sequence: the ``[B, T]`` slices the rows come from (TD(lambda) runs over their time
            dimension; a GRU critic is unrolled over them), or None for transitions.
        valid: the ``[B, T]`` mask of the real steps of ``sequence`` (``rows`` are
            ``sequence[valid]``), or None for transitions.
    """

    rows: TensorDictBase
    sequence: TensorDictBase | None = None
    valid: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.sequence is None) != (self.valid is None):
            raise ValueError("Slices: sequence and valid go together (both given, or neither for transitions)")
        if self.valid is not None and tuple(self.valid.shape) != tuple(self.sequence.batch_size):
            raise ValueError(
                f"Slices: valid must have the sequence's batch shape {list(self.sequence.batch_size)}, "
                f"got {list(self.valid.shape)}"
            )


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
