"""Optimisation settings of the training loop: the optimiser, gradient clipping, target-network
updates, and :class:`Objective`, one optimiser's loss output and parameter groups with their rates.

The learning rates are each algorithm's own (``FOPConfig.lr_*``, ``MASACConfig.lr_*``, ...: its
builder puts them into its objectives' parameter groups); :class:`OptimConfig` holds what every
algorithm's loop shares.

:class:`OptimConfig` builds the optimisers (:meth:`OptimConfig.make_optimizer`) and the target
update (:meth:`OptimConfig.make_target_updater`) that :class:`~fop_modules.lightning.MARLLightningModule`
steps, and that a loop of one's own can use the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torchrl.objectives import HardUpdate, LossModule, SoftUpdate

from fop_modules.choices import choices_enum
from fop_modules.target_update import FusedSoftUpdate

__all__ = ["Objective", "OptimConfig", "check_rates", "OptimizerName", "TargetUpdate", "OPTIMIZERS", "TargetUpdateName"]


OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}
TargetUpdateName = Literal["soft", "hard"]  # polyak averaging | periodic copies of the target networks
OptimizerName = choices_enum("OptimizerName", OPTIMIZERS, "OptimConfig.name: the optimiser (OPTIMIZERS).")
TargetUpdate = choices_enum("TargetUpdate", TargetUpdateName, "OptimConfig.target_update: how the targets follow.")


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
    """Optimisers, one per objective, each over its :class:`Objective`'s parameter groups (whose
    ``lr`` the algorithm sets); ``grad_clip`` is a norm (None: off)."""

    name: OptimizerName = OptimizerName.adam
    grad_clip: float | None = None
    rmsprop_alpha: float = 0.99  # the authors' RMSprop smoothing
    eps: float = 1e-5
    target_update: TargetUpdate = TargetUpdate.soft
    tau: float = 0.005  # soft (polyak) target update rate
    hard_update_interval: int = 200  # updates between hard target copies
    on_nonfinite: str = "raise"  # a nan/inf loss stops the run | skips that step

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"OptimConfig.name must be one of {list(OPTIMIZERS)}, got {self.name!r}")
        if self.target_update not in get_args(TargetUpdateName):
            raise ValueError(f"OptimConfig.target_update must be 'soft' or 'hard', got {self.target_update!r}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"OptimConfig.tau must be in (0, 1], got {self.tau}")
        if self.on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"OptimConfig.on_nonfinite must be 'raise' or 'skip', got {self.on_nonfinite!r}")
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise ValueError(f"OptimConfig.grad_clip must be finite and > 0, or null (no clipping), got {self.grad_clip}")
        if not 0 < self.eps < math.inf:
            raise ValueError(f"OptimConfig.eps must be finite and > 0, got {self.eps}")
        if not 0 <= self.rmsprop_alpha < 1:
            raise ValueError(f"OptimConfig.rmsprop_alpha must be in [0, 1), got {self.rmsprop_alpha}")
        if self.hard_update_interval < 1:
            raise ValueError(f"OptimConfig.hard_update_interval must be >= 1, got {self.hard_update_interval}")

    def make_optimizer(self, param_groups: list[dict]) -> torch.optim.Optimizer:
        """The optimiser ``name`` names over ``param_groups`` (each group with its own ``lr``),
        with ``eps`` (and ``rmsprop_alpha`` for RMSprop)."""
        extra = {"alpha": self.rmsprop_alpha} if OPTIMIZERS[self.name] is torch.optim.RMSprop else {}
        return OPTIMIZERS[self.name](param_groups, eps=self.eps, **extra)

    def make_target_updater(self, loss_module: LossModule) -> SoftUpdate | HardUpdate:
        """The target networks' update, one ``step()`` per update: polyak with ``tau``
        (:class:`~fop_modules.target_update.FusedSoftUpdate`, TorchRL's ``SoftUpdate`` values in
        one fused call) or a copy every ``hard_update_interval`` steps (``HardUpdate``)."""
        if self.target_update == "soft":
            return FusedSoftUpdate(loss_module, tau=self.tau)
        return HardUpdate(loss_module, value_network_update_interval=self.hard_update_interval)


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
