"""Optimisation settings of the training loop: the optimiser, gradient clipping, target-network
updates, and :class:`Objective`, one optimiser's loss output and parameter groups with their rates.

The learning rates are each algorithm's own (``FOPConfig.lr_*``, ``MASACConfig.lr_*``, ...: its
builder puts them into its objectives' parameter groups); :class:`OptimConfig` holds what every
algorithm's loop shares.

:class:`OptimConfig` builds the optimisers (:meth:`OptimConfig.make_optimizer`) and the target
update (:meth:`OptimConfig.make_target_updater`) that :class:`~fop_modules.lightning.MARLLightningModule`
steps, and that a loop of one's own can use the same way. Both are callables (any torch optimiser,
any TorchRL target updater), which the recipe builds from ``_target_`` nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch
from torchrl.objectives import LossModule
from torchrl.objectives.utils import TargetNetUpdater

from fop_modules.target_update import FusedSoftUpdate

__all__ = ["Objective", "OptimConfig", "check_rates"]


def check_rates(owner: str, *, optional: tuple[str, ...] = (), **rates: float | None) -> None:
    """Checks an algorithm's learning rates: each finite and > 0, or None for those named in
    ``optional`` (a rate that falls back on another, e.g. FOP's ``lr_mixer``).

    Examples:
        >>> check_rates("MASACConfig", lr_actor=3e-4, lr_qvalue=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: MASACConfig.lr_qvalue must be finite and > 0, got -1.0
    """
    for name, rate in rates.items():
        if rate is None and name in optional:
            continue
        if rate is None or not 0 < rate < math.inf:
            alternative = ", or None" if name in optional else ""
            raise ValueError(f"{owner}.{name} must be finite and > 0{alternative}, got {rate}")


@dataclass
class OptimConfig:
    """What every algorithm's loop shares: the optimiser of each objective, the target networks'
    update, gradient clipping and what a non-finite loss does.

    Attributes:
        optimizer: ``param_groups -> torch.optim.Optimizer``, one per objective over its groups
            (each with the algorithm's ``lr``), e.g. ``partial(torch.optim.RMSprop, alpha=0.99,
            eps=1e-5)``; the recipe's ``optim/optimizer`` group (configs/optim/optimizer/) holds
            it as a ``_target_`` node with ``_partial_: true``.
        target_update: ``loss -> updater`` whose ``step()`` runs once per update: polyak
            (:class:`~fop_modules.target_update.FusedSoftUpdate`, TorchRL's ``SoftUpdate`` values
            in one fused call) or TorchRL's ``HardUpdate`` (a copy every
            ``value_network_update_interval`` steps); the ``optim/target_update`` group.
        grad_clip: gradient-norm clip per objective (None: off).
        on_nonfinite: a nan/inf loss stops the run (``"raise"``) or skips that step (``"skip"``).

    Examples:
        >>> from torchrl.objectives import HardUpdate
        >>> authors = OptimConfig(optimizer=partial(torch.optim.RMSprop, alpha=0.99, eps=1e-5),
        ...                       target_update=partial(HardUpdate, value_network_update_interval=200),
        ...                       grad_clip=10.0)
        >>> type(authors.make_optimizer([{"params": [torch.zeros(1, requires_grad=True)], "lr": 5e-4}])).__name__
        'RMSprop'
    """

    optimizer: Callable[[list[dict]], torch.optim.Optimizer] = field(
        default_factory=lambda: partial(torch.optim.Adam, eps=1e-5))
    target_update: Callable[[LossModule], TargetNetUpdater] = field(
        default_factory=lambda: partial(FusedSoftUpdate, tau=0.005))
    grad_clip: float | None = None
    on_nonfinite: str = "raise"  # a nan/inf loss stops the run | skips that step

    def __post_init__(self) -> None:
        for name in ("optimizer", "target_update"):
            if not callable(getattr(self, name)):
                raise ValueError(f"OptimConfig.{name} must be callable (e.g. a functools.partial of its class), "
                                 f"got {getattr(self, name)!r}")
        if self.on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"OptimConfig.on_nonfinite must be 'raise' or 'skip', got {self.on_nonfinite!r}")
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise ValueError(f"OptimConfig.grad_clip must be finite and > 0, or null (no clipping), got {self.grad_clip}")

    def make_optimizer(self, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """:attr:`optimizer` over ``param_groups`` (each group with its own ``lr``)."""
        return self.optimizer(param_groups)

    def make_target_updater(self, loss_module: LossModule) -> TargetNetUpdater:
        """:attr:`target_update` on ``loss_module``'s target networks, one ``step()`` per update."""
        return self.target_update(loss_module)


@dataclass
class Objective:
    """One optimiser: the loss output it minimises and its parameter groups.

    Args:
        loss_key: the ``loss_*`` entry of the loss module's output (e.g. ``"loss_qvalue"``).
        param_groups: torch's optimiser format, ``[{"params": [...], "lr": 3e-4}, ...]``.

    Examples:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> Objective("loss_actor", [{"params": [w], "lr": 1e-3}]).loss_key
        'loss_actor'
    """

    loss_key: str
    param_groups: list[dict[str, Any]]

    def __post_init__(self) -> None:
        for group in self.param_groups:
            if not group["params"]:
                raise ValueError(f"objective {self.loss_key!r} has a parameter group with no parameters")
            if not 0 < group["lr"] < math.inf:
                raise ValueError(f"objective {self.loss_key!r} needs a finite lr > 0, got {group['lr']}")
