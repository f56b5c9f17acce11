"""Several learners (Lightning DDP): a check that the ranks stayed one learner.

Under ``trainer.strategy=ddp_find_unused_parameters_true trainer.devices=N`` each rank runs its
own collector and replay buffer (seeded ``seed + rank * SEED_STRIDE``) and DDP averages every
objective's gradients across ranks at each ``manual_backward``, so all ranks take the same
optimiser steps and their parameters, target networks and temperature stay identical.
:class:`RankConsistency` checks that at the end of training: it gathers every floating-point
entry of the module's state dict from all ranks and raises if any rank differs from rank 0 by
a single bit. It also records whether the ranks' replay buffers differ (they should: otherwise
the extra ranks add compute but no data).

Plain ``strategy=ddp`` fails with separate ``manual_backward`` calls per objective (each backward
leaves the other objectives' parameters without gradients); ``ddp_find_unused_parameters_true``
lets DDP find, per backward, which parameters take part.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["RankConsistency"]


class RankConsistency(Callback):
    """At the end of training under several processes, checks the ranks' parameters are equal.

    Attributes (set on every rank after ``fit``; ``None`` with one process):
        parameter_difference: largest absolute difference between any rank's state-dict entry and
            rank 0's (0.0: identical).
        replays_differ: whether the ranks' replay buffers hold different rewards.

    Raises:
        RuntimeError: (at the end of ``fit``) when a rank's parameters differ from rank 0's.

    Examples:
        >>> check = RankConsistency()
        >>> check.parameter_difference is None
        True
    """

    def __init__(self) -> None:
        self.parameter_difference: float | None = None
        self.replays_differ: bool | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size == 1:
            return
        state = [v.detach().flatten().double() for v in pl_module.state_dict().values() if v.is_floating_point()]
        gathered = pl_module.all_gather(torch.cat(state))  # [world_size, P]
        self.parameter_difference = float((gathered - gathered[0]).abs().max())
        columns = pl_module.buffer.storage[:]  # the stored columns, not a decoded copy of the buffer
        rewards = pl_module.all_gather(columns.get(("next", "reward")).double().sum())  # [world_size]
        self.replays_differ = bool((rewards != rewards[0]).any())
        if self.parameter_difference != 0.0:
            raise RuntimeError(
                f"after training, rank parameters differ from rank 0's by up to "
                f"{self.parameter_difference}: the ranks did not stay one learner (use "
                "the strategy 'ddp_find_unused_parameters_true'; see fop_modules.distributed)"
            )
