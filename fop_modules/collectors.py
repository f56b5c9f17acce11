"""Which TorchRL collector feeds the learner: in-process, env worker processes, or remote nodes.

:func:`make_collector` builds one of TorchRL's collectors from ``collect.collector``:

- ``single``: :class:`~torchrl.collectors.Collector`, envs in the learner's process.
- ``multi_sync``: :class:`~torchrl.collectors.MultiSyncCollector`, ``num_workers`` local env
  processes; each batch stacks every worker's share.
- ``multi_async``: :class:`~torchrl.collectors.MultiAsyncCollector`, ``num_workers`` local env
  processes; each batch is the first ready worker's (possibly drawn with weights one update old).
- ``distributed``: :class:`~torchrl.collectors.distributed.DistributedCollector` (sync),
  ``num_workers`` collector processes joined by torch.distributed (gloo), on this machine
  (``launcher="mp"``) or as SLURM jobs (``launcher="submitit"``), behind :class:`FrameBudget`.

Every kind runs the policy on CPU, where the envs are. When the learner is elsewhere (a GPU, or
the policy lives in another process) the collector acts with its own copy of the policy:
the module refreshes it with
:meth:`~torchrl.collectors.BaseCollector.update_policy_weights_` after every batch where
:func:`needs_weight_sync` says so; the distributed collector sends weights itself before each
batch. ``single`` with a CPU learner acts with the learner's policy itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, get_args

import numpy as np
import torch
from torch import nn
from torchrl.collectors import BaseCollector, Collector, MultiAsyncCollector, MultiSyncCollector
from torchrl.envs import EnvBase

__all__ = ["CollectorKind", "FrameBudget", "check_collector", "make_collector", "needs_weight_sync", "SeededEnvFactory"]

CollectorKind = Literal["single", "multi_sync", "multi_async", "distributed"]
KINDS = get_args(CollectorKind)  # ("single", "multi_sync", "multi_async", "distributed")
LAUNCHERS = ("mp", "submitit")  # how the distributed collector starts its workers
ENDLESS = 2**62  # total_frames of a collector that FrameBudget stops (DistributedCollector reads -1 as 0)


def check_collector(kind: str, num_workers: int = 1, launcher: str = "mp", frames_per_batch: int = 1) -> None:
    """Raises ValueError for a collector :func:`make_collector` cannot build (its arguments, named
    as there); :class:`~fop_modules.loop_config.CollectConfig` checks its own with it at start-up.

    Examples:
        >>> check_collector("distributed", num_workers=3, frames_per_batch=10)
        Traceback (most recent call last):
        ...
        ValueError: frames_per_batch (10) must be a multiple of num_workers (3) for the distributed collector
    """
    if kind not in KINDS:
        raise ValueError(f"collector kind must be one of {KINDS}, got {kind!r}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    if kind == "distributed" and frames_per_batch % num_workers:
        raise ValueError(
            f"frames_per_batch ({frames_per_batch}) must be a multiple of num_workers ({num_workers}) "
            "for the distributed collector"
        )


def make_collector(
    kind: CollectorKind,
    make_env: Callable[[], EnvBase],
    policy: nn.Module,
    *,
    frames_per_batch: int,
    total_frames: int,
    init_random_frames: int = 0,
    num_workers: int = 1,
    launcher: Literal["mp", "submitit"] = "mp",
    seed: int = 0,
) -> BaseCollector | FrameBudget:
    """Builds, seeds and resets the collector named by ``kind``.

    Args:
        kind: ``single``, ``multi_sync``, ``multi_async`` or ``distributed`` (table above).
        make_env: picklable callable returning a fresh env (each worker calls it once).
        policy: the stochastic actor (stays where it is; workers hold copies).
        frames_per_batch: env frames per yielded batch, over all workers (``multi_async``:
            per worker, since each batch is one worker's).
        total_frames: env frames of the whole run.
        init_random_frames: frames collected with a uniform random policy first.
        num_workers: env processes of the ``multi_*`` and ``distributed`` kinds (ignored by
            ``single``).
        launcher: how ``distributed`` starts its workers: ``mp`` (local processes) or
            ``submitit`` (SLURM jobs; ``pip install submitit``).
        seed: seeds worker ``k``'s envs and torch/numpy generators with ``seed + k``.

    Raises:
        ValueError: an unknown kind or launcher, ``num_workers < 1``, or frame counts the workers
            cannot share (:func:`check_collector`).

    Examples:
        >>> from functools import partial
        >>> from fop_modules import networks
        >>> from fop_modules.envs import MatrixGameEnv
        >>> actor = networks.discrete_actor(2, 1, 3, masked=True, hidden=[8], agent_id=True)
        >>> collector = make_collector("single", partial(MatrixGameEnv, num_envs=4), actor,
        ...                            frames_per_batch=8, total_frames=16)
        >>> [batch.numel() for batch in collector], len(collector)
        ([8, 8], 2)
        >>> collector.shutdown()
    """
    check_collector(kind, num_workers, launcher, frames_per_batch)
    common = dict(frames_per_batch=frames_per_batch, total_frames=total_frames,
                  init_random_frames=init_random_frames, env_device="cpu", policy_device="cpu")
    if kind == "single":
        collector = Collector(make_env, policy, **common)
    elif kind in ("multi_sync", "multi_async"):
        cls = MultiSyncCollector if kind == "multi_sync" else MultiAsyncCollector
        collector = cls([make_env] * num_workers, policy, **common)
    else:
        from torchrl.collectors.distributed import DistributedCollector

        # TorchRL 0.14.1's DistributedCollector.set_seed fails (its worker parses the seed with
        # int(bytes.split(...)) and the sender waits for b"updated"): each worker's env factory
        # seeds instead
        remote = DistributedCollector(
            [SeededEnvFactory(make_env, seed + k) for k in range(num_workers)], policy, sync=True, launcher=launcher,
            update_interval=1,  # new weights to every worker after each batch
            frames_per_batch=frames_per_batch, total_frames=ENDLESS,  # FrameBudget counts the frames
            init_random_frames=init_random_frames, env_device="cpu", policy_device="cpu",
        )
        collector = FrameBudget(remote, total_frames=total_frames, frames_per_batch=frames_per_batch)
    if kind != "distributed":
        collector.set_seed(seed)
        collector.reset()  # start from a reset of the seeded envs (SMAC re-creates its game on seeding)
    return collector


@dataclass
class SeededEnvFactory:
    """Builds the env and seeds it and this process's torch and numpy generators with ``seed``
    (for a worker process that builds exactly one env)."""

    make_env: Callable[[], EnvBase]
    seed: int

    def __call__(self) -> EnvBase:
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        env = self.make_env()
        env.set_seed(self.seed)
        return env


class FrameBudget:
    """Iterates an endless TorchRL collector that keeps no counters of its own (the distributed
    ones raise on ``state_dict``) until ``total_frames``, counting frames in a state dict
    Lightning saves with the checkpoint, so a resumed run stops where the first would have.

    Examples:
        >>> from functools import partial
        >>> from fop_modules import networks
        >>> from fop_modules.envs import MatrixGameEnv
        >>> actor = networks.discrete_actor(2, 1, 3, masked=True, hidden=[8], agent_id=True)
        >>> endless = Collector(partial(MatrixGameEnv, num_envs=4), actor, frames_per_batch=8, total_frames=-1)
        >>> budget = FrameBudget(endless, total_frames=24, frames_per_batch=8)
        >>> budget.load_state_dict({"frames": 8})  # as after a resume
        >>> [batch.numel() for batch in budget], len(budget), budget.state_dict()
        ([8, 8], 3, {'frames': 24})
        >>> budget.shutdown()
    """

    def __init__(self, collector: BaseCollector, *, total_frames: int, frames_per_batch: int) -> None:
        self.collector, self.total_frames, self.frames_per_batch = collector, total_frames, frames_per_batch
        self.frames = 0

    def __iter__(self):
        if self.frames >= self.total_frames:
            return
        for batch in self.collector:
            self.frames += batch.numel()
            yield batch
            if self.frames >= self.total_frames:
                return

    def __len__(self) -> int:
        return -(self.total_frames // -self.frames_per_batch)

    def state_dict(self) -> dict[str, int]:
        return {"frames": self.frames}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.frames = state_dict["frames"]

    def update_policy_weights_(self) -> None:
        """Nothing to do: the distributed collector sends weights before each batch itself."""

    def shutdown(self) -> None:
        self.collector.shutdown()


def needs_weight_sync(collector: BaseCollector, policy: nn.Module) -> bool:
    """Whether ``collector`` acts with its own copy of ``policy`` (another process or device),
    which :meth:`~torchrl.collectors.BaseCollector.update_policy_weights_` must refresh.

    Examples:
        >>> from functools import partial
        >>> from fop_modules import networks
        >>> from fop_modules.envs import MatrixGameEnv
        >>> actor = networks.discrete_actor(2, 1, 3, masked=True, hidden=[8], agent_id=True)
        >>> collector = make_collector("single", partial(MatrixGameEnv, num_envs=4), actor,
        ...                            frames_per_batch=8, total_frames=16)
        >>> needs_weight_sync(collector, actor)
        False
    """
    if isinstance(collector, FrameBudget):
        return False  # the distributed collector sends weights itself before each batch
    if not isinstance(collector, Collector):
        return True
    return next(policy.parameters()).device != torch.device("cpu")
