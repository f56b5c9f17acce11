"""What the training loop does, counted in env frames: collection, replay and updates
(:class:`CollectConfig`, read by :class:`~fop_modules.lightning.MARLLightningModule`; greedy
evaluation is a callback beside it, :class:`~fop_modules.evaluation.GreedyEvaluation`)."""

from __future__ import annotations

from dataclasses import dataclass

from fop_modules.collectors import check_collector

__all__ = ["CollectConfig"]


@dataclass
class CollectConfig:
    """How data is collected, stored and replayed. All counts are env frames unless named."""

    total_frames: int = 10_000  # env frames of the whole run (frames = env steps x parallel envs)
    frames_per_batch: int = 16  # frames per collector batch (one training_step)
    init_random_frames: int = 0  # frames collected with a uniform random policy first
    buffer_size: int = 100_000  # replay capacity in frames
    batch_size: int = 64  # transitions per update
    updates_per_batch: int = 1  # updates after each collected batch ...
    updates_per_episode: int = 0  # ... plus this many per episode that ends in the batch (1:
    #   PyMARL's and the FOP authors' rate, one update per episode, whatever the episodes' length)
    warmup_frames: int = 64  # no update before the buffer holds this many frames
    policy_warmup_frames: int = 0  # no policy (eq. 11) or temperature update before this many
    #   env frames: the critics first learn from the warm-up data while the policies stay put
    sequence_length: int | None = None  # None: replay transitions; L: replay slices of up to L
    #   steps within one episode, batch_size of them per update (L >= the episode limit: whole
    #   episodes, as the authors do); needed by recurrent actors
    collector: str = "single"  # fop_modules.collectors: single | multi_sync | multi_async | distributed
    num_workers: int = 1  # env processes of the multi_* and distributed collectors
    launcher: str = "mp"  # distributed: local processes | SLURM jobs

    def __post_init__(self) -> None:
        if self.policy_warmup_frames < 0:
            raise ValueError(f"CollectConfig.policy_warmup_frames must be >= 0, got {self.policy_warmup_frames}")
        for name in ("total_frames", "frames_per_batch", "buffer_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"CollectConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("updates_per_batch", "updates_per_episode"):
            if getattr(self, name) < 0:
                raise ValueError(f"CollectConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.updates_per_batch == self.updates_per_episode == 0:
            raise ValueError("CollectConfig.updates_per_batch and CollectConfig.updates_per_episode are both 0: "
                             "the run would never update; set one of them to 1 or more")
        if self.init_random_frames < 0:
            raise ValueError(f"CollectConfig.init_random_frames must be >= 0, got {self.init_random_frames}")
        check_collector(self.collector, self.num_workers, self.launcher, self.frames_per_batch)
        if self.sequence_length is not None and self.sequence_length < 1:
            raise ValueError(f"CollectConfig.sequence_length must be >= 1 or None, got {self.sequence_length}")
        if self.batch_size * (self.sequence_length or 1) > self.buffer_size:
            raise ValueError(
                f"CollectConfig.batch_size ({self.batch_size}) x sequence_length "
                f"({self.sequence_length or 1}) frames is larger than CollectConfig.buffer_size "
                f"({self.buffer_size})"
            )
        if self.warmup_frames < self.batch_size:
            raise ValueError(
                f"CollectConfig.warmup_frames ({self.warmup_frames}) must be >= CollectConfig.batch_size "
                f"({self.batch_size}) so the first update has a full batch"
            )
        if self.total_frames % self.frames_per_batch:  # TorchRL's collector would round it up
            whole = -(-self.total_frames // self.frames_per_batch) * self.frames_per_batch
            raise ValueError(
                f"CollectConfig.total_frames ({self.total_frames}) must be a multiple of "
                f"CollectConfig.frames_per_batch ({self.frames_per_batch}): the collector only stops after "
                f"whole batches and would run {whole} frames; set CollectConfig.total_frames={whole}"
            )
        if self.total_frames < self.warmup_frames:
            raise ValueError(
                f"CollectConfig.total_frames ({self.total_frames}) is below CollectConfig.warmup_frames "
                f"({self.warmup_frames}): the run would end before its first update"
            )
        if self.policy_warmup_frames > self.total_frames:
            raise ValueError(
                f"CollectConfig.policy_warmup_frames ({self.policy_warmup_frames}) is above "
                f"CollectConfig.total_frames ({self.total_frames}): the policies would never be trained"
            )
