"""Polyak target update with one fused call per step (TorchRL's ``SoftUpdate``, same values).

TorchRL's :class:`~torchrl.objectives.SoftUpdate` rebuilds a TensorDict of ``.data`` views and
walks it per step: on the small networks of the didactic games that costs more than the update
of the parameters itself (about 0.4 ms against 0.01 ms, benchmarks/update_cost.py). This one
collects the (target, online) parameter pairs once and updates them with one
``torch._foreach_lerp_``: the same ``lerp_(online, 1 - eps)`` of every target parameter, so
training gives bit-identical parameters.
"""

from __future__ import annotations

import torch
from torchrl.objectives import SoftUpdate

__all__ = ["FusedSoftUpdate"]


class FusedSoftUpdate(SoftUpdate):
    """``SoftUpdate`` whose :meth:`step` is one ``torch._foreach_lerp_`` over all target parameters.

    Same arguments and state (``init_``, ``state_dict``) as TorchRL's ``SoftUpdate``: target =
    target + (1 - eps) (online - target) with eps = 1 - tau. The pairs are collected at the first
    step from the updater's own source and target parameters, which moving the loss with
    ``.to(device)`` changes in place.

    Examples:
        >>> import torch
        >>> from fop_modules import FOPLoss, FOPMixer, networks
        >>> loss = FOPLoss(networks.discrete_actor(2, 3, 4), networks.discrete_critic(2, 3, 4),
        ...                FOPMixer(2, state_dim=5, action_dim=4), action_space="discrete")
        >>> updater = FusedSoftUpdate(loss, tau=0.5)
        >>> with torch.no_grad():
        ...     _ = loss.qvalue_network_params.apply_(lambda p: p.add_(1.0))
        >>> updater.step()
        >>> online, target = loss.qvalue_network_params, loss.target_qvalue_network_params
        >>> torch.allclose(target.flatten_keys()["module.mlp.0.bias"],
        ...                online.flatten_keys()["module.mlp.0.bias"] - 0.5)
        True
    """

    _pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def __init__(self, loss_module, *, eps: float | None = None, tau: float | None = None) -> None:
        if tau is not None and not 0 < tau <= 1:  # SoftUpdate takes tau = 0 (targets that never move)
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        super().__init__(loss_module, eps=eps, tau=tau)

    def init_(self) -> None:
        super().init_()
        self._pairs = None

    @torch.no_grad()
    def step(self) -> None:
        if not self.initialized:
            super().step()  # raises TorchRL's error
        if self._pairs is None:
            targets, sources = [], []
            for key, source in self._sources.items(True, True):
                key = key if isinstance(key, tuple) else (key,)
                target = self._targets.get((f"target_{key[0]}", *key[1:]))
                if target.requires_grad:
                    raise RuntimeError("the target parameter is part of a graph.")
                targets.append(target)
                sources.append(source)
            self._pairs = targets, sources
        torch._foreach_lerp_(*self._pairs, 1 - self.eps)
