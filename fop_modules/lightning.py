"""FOPLightningModule: TorchRL collector -> replay buffer -> FOPLoss -> optimisers -> targets.

Each ``training_step`` receives one batch of env frames from a TorchRL :class:`Collector` (the
train dataloader), stores it in a replay buffer and runs ``updates_per_batch`` FOP updates in
Algorithm 1 order: joint TD (eq. 9) -> V_i (eq. 10, paper form) -> policies (eq. 11) -> the dual
temperature -> target networks. A temperature schedule, when given, is evaluated at the current
env-step count before every batch of updates. Metrics go to the Lightning loggers as
``train/*`` and ``eval/*`` with ``env_frames`` (the x axis of every curve).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.collectors import BaseCollector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import SliceSampler
from torchrl.envs import DeviceCastTransform, EnvBase, ExplorationType, TransformedEnv, set_exploration_type
from torchrl.objectives import HardUpdate, SoftUpdate

from fop_modules.checkpointing import gather_ranks, load_replay_state, replay_state
from fop_modules.collectors import KINDS as COLLECTOR_KINDS
from fop_modules.collectors import make_collector, needs_weight_sync
from fop_modules.loss import FOPLoss
from fop_modules.temperature import TemperatureSchedule

__all__ = ["FOPLightningModule", "OptimConfig", "CollectConfig", "OptimizerName", "TargetUpdate"]

OBJECTIVES = ("qvalue", "value", "actor", "alpha")  # Algorithm 1 order
SEED_STRIDE = 1_000  # DDP rank r seeds its collector with seed + r * SEED_STRIDE


class OptimizerName(str, Enum):
    """``optim.name``. A str Enum (equal to its value) so that Hydra's structured configs check it."""

    adam = "adam"
    rmsprop = "rmsprop"


class TargetUpdate(str, Enum):
    """``optim.target_update``: polyak averaging or periodic copies of the target networks."""

    soft = "soft"
    hard = "hard"


@dataclass
class OptimConfig:
    """Optimisers, one per objective. ``lr_*`` per objective; ``grad_clip`` is a norm (None: off)."""

    name: OptimizerName = OptimizerName.adam
    lr_qvalue: float = 3e-4
    lr_mixer: float | None = None  # the mixer's own rate in the eq. (9) optimiser (None: lr_qvalue)
    lr_value: float = 3e-4
    lr_actor: float = 3e-4
    lr_alpha: float = 3e-4
    grad_clip: float | None = None
    rmsprop_alpha: float = 0.99  # the authors' RMSprop smoothing
    eps: float = 1e-5
    target_update: TargetUpdate = TargetUpdate.soft
    tau: float = 0.005  # soft (polyak) target update rate
    hard_update_interval: int = 200  # updates between hard target copies
    on_nonfinite: str = "raise"  # a nan/inf loss stops the run | skips that step

    def __post_init__(self) -> None:
        for name in ("lr_qvalue", "lr_value", "lr_actor", "lr_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"optim.{name} must be > 0, got {getattr(self, name)}")
        if self.lr_mixer is not None and not self.lr_mixer > 0:
            raise ValueError(f"optim.lr_mixer must be > 0 or null, got {self.lr_mixer}")
        if self.name not in ("adam", "rmsprop"):
            raise ValueError(f"optim.name must be 'adam' or 'rmsprop', got {self.name!r}")
        if self.target_update not in ("soft", "hard"):
            raise ValueError(f"optim.target_update must be 'soft' or 'hard', got {self.target_update!r}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"optim.tau must be in (0, 1], got {self.tau}")
        if self.on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"optim.on_nonfinite must be 'raise' or 'skip', got {self.on_nonfinite!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"optim.grad_clip must be > 0 or null, got {self.grad_clip}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if not 0 <= self.rmsprop_alpha < 1:
            raise ValueError(f"optim.rmsprop_alpha must be in [0, 1), got {self.rmsprop_alpha}")
        if self.hard_update_interval < 1:
            raise ValueError(f"optim.hard_update_interval must be >= 1, got {self.hard_update_interval}")


@dataclass
class CollectConfig:
    """How data is collected, stored and replayed. All counts are env frames unless named."""

    total_frames: int = 10_000  # env frames of the whole run (frames = env steps x parallel envs)
    frames_per_batch: int = 16  # frames per collector batch (one training_step)
    init_random_frames: int = 0  # frames collected with a uniform random policy first
    buffer_size: int = 100_000  # replay capacity in frames
    batch_size: int = 64  # transitions per update
    updates_per_batch: int = 1  # FOP updates per collected batch
    warmup_frames: int = 64  # no update before the buffer holds this many frames
    policy_warmup_frames: int = 0  # no policy (eq. 11) or temperature update before this many
    #   env frames: the critics first learn from the warm-up data while the policies stay put
    eval_interval: int = 1_000  # frames between greedy evaluations (0: only at the end)
    eval_envs: int = 8  # parallel envs of a greedy evaluation
    eval_max_steps: int = 1  # steps of an evaluation rollout
    sequence_length: int | None = None  # None: replay transitions; L: replay slices of up to L
    #   steps within one episode, batch_size of them per update (L >= the episode limit: whole
    #   episodes, as the authors do); needed by recurrent actors
    collector: str = "single"  # fop_modules.collectors: single | multi_sync | multi_async | distributed
    num_workers: int = 1  # env processes of the multi_* and distributed collectors
    launcher: str = "mp"  # distributed: local processes | SLURM jobs

    def __post_init__(self) -> None:
        if self.policy_warmup_frames < 0:
            raise ValueError(f"collect.policy_warmup_frames must be >= 0, got {self.policy_warmup_frames}")
        for name in ("total_frames", "frames_per_batch", "buffer_size", "batch_size",
                     "updates_per_batch", "eval_envs", "eval_max_steps", "num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"collect.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("init_random_frames", "eval_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"collect.{name} must be >= 0, got {getattr(self, name)}")
        if self.collector not in COLLECTOR_KINDS:
            raise ValueError(f"collect.collector must be one of {COLLECTOR_KINDS}, got {self.collector!r}")
        if self.launcher not in ("mp", "submitit"):
            raise ValueError(f"collect.launcher must be 'mp' or 'submitit', got {self.launcher!r}")
        if self.sequence_length is not None and self.sequence_length < 1:
            raise ValueError(f"collect.sequence_length must be >= 1 or null, got {self.sequence_length}")
        if self.batch_size * (self.sequence_length or 1) > self.buffer_size:
            raise ValueError(
                f"collect.batch_size ({self.batch_size}) x sequence_length "
                f"({self.sequence_length or 1}) frames is larger than collect.buffer_size "
                f"({self.buffer_size})"
            )
        if self.warmup_frames < self.batch_size:
            raise ValueError(
                f"collect.warmup_frames ({self.warmup_frames}) must be >= collect.batch_size "
                f"({self.batch_size}) so the first update has a full batch"
            )


class FOPLightningModule(L.LightningModule):
    """Trains FOP with manual optimisation in Algorithm 1 order.

    Args:
        loss_module: the :class:`~fop_modules.FOPLoss` (holds every network).
        policy: the stochastic actor used for collection (the same module given to the loss,
            whose parameters the loss trains in place).
        make_env: a picklable callable returning a fresh environment.
        make_eval_env: callable ``(num_envs) -> env`` for greedy evaluation.
        collect: :class:`CollectConfig`.
        optim: :class:`OptimConfig`.
        temperature: schedule of alpha over env frames, or None for a learned alpha.
        seed: seeds the collector's environments (the recipe seeds torch itself).
    """

    def __init__(
        self,
        loss_module: FOPLoss,
        policy: nn.Module,
        make_env: Callable[[], EnvBase],
        make_eval_env: Callable[[int], EnvBase],
        *,
        collect: CollectConfig,
        optim: OptimConfig,
        temperature: TemperatureSchedule | None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if temperature is None and not loss_module.learn_alpha:
            raise ValueError(
                "give a temperature schedule, or build FOPLoss with learn_alpha=True "
                "(recipe: `~temperature algorithm.learn_alpha=true`)"
            )
        if temperature is not None and loss_module.learn_alpha:
            raise ValueError(
                "alpha is learned (learn_alpha=True): do not also give a schedule "
                "(recipe: add `~temperature`)"
            )
        self.automatic_optimization = False
        self.loss_module, self.policy = loss_module, policy
        self.make_env, self.make_eval_env = make_env, make_eval_env
        self.collect, self.optim, self.temperature, self.seed = collect, optim, temperature, seed
        self.env_frames = 0
        self.updates = 0
        self._next_eval = collect.eval_interval or collect.total_frames
        # (env_frames, greedy return, greedy joint action of the first eval env at its first step)
        self.eval_history: list[tuple[int, float, list]] = []
        self.eval_win_rate: float | None = None  # share of won greedy episodes (SMAC, SMAX)
        self.buffer = self._make_buffer(collect)
        if optim.target_update == "soft":
            self.target_updater = SoftUpdate(loss_module, tau=optim.tau)
        else:
            self.target_updater = HardUpdate(
                loss_module, value_network_update_interval=optim.hard_update_interval
            )
        self._objectives = [
            name
            for name in OBJECTIVES
            if (name != "value" or loss_module.value_network is not None)
            and (name != "alpha" or loss_module.learn_alpha)
        ]

    # ------------------------------------------------------------------ data
    @staticmethod
    def _make_buffer(collect: CollectConfig) -> TensorDictReplayBuffer:
        """Transitions, or slices within one trajectory (TorchRL's SliceSampler: a slice never
        crosses an episode or a collector batch; shorter ones are padded and masked by
        ``("collector", "mask")``, and each slice's last step is marked truncated)."""
        storage = LazyTensorStorage(collect.buffer_size)
        if collect.sequence_length is None:
            return TensorDictReplayBuffer(storage=storage, batch_size=collect.batch_size)
        sampler = SliceSampler(
            slice_len=collect.sequence_length,
            traj_key=("collector", "traj_ids"),
            strict_length=False,
            pad_output=True,
        )
        return TensorDictReplayBuffer(
            storage=storage, sampler=sampler, batch_size=collect.batch_size * collect.sequence_length
        )

    def sample(self) -> TensorDictBase:
        """One replay batch: [batch_size] transitions or [batch_size, sequence_length] slices."""
        sample = self.buffer.sample()
        if self.collect.sequence_length is not None:
            sample = sample.reshape(self.collect.batch_size, self.collect.sequence_length)
        return sample

    def train_dataloader(self) -> BaseCollector:
        # Under DDP every rank collects its own data: rank r seeds its envs, and its torch/numpy
        # generators, with seed + r * SEED_STRIDE (one rank: the recipe's seeding stands). A
        # resumed run seeds its envs past the frames already seen (their in-flight episodes
        # restart anyway), and RNGCheckpoint then restores the generators saved with the run.
        rank_seed = self.seed + SEED_STRIDE * self.global_rank
        if self.trainer.world_size > 1:
            L.seed_everything(rank_seed, verbose=False)
        self.collector = make_collector(
            self.collect.collector,
            self.make_env,
            self.policy,
            frames_per_batch=self.collect.frames_per_batch,
            total_frames=self.collect.total_frames,
            init_random_frames=self.collect.init_random_frames,
            num_workers=self.collect.num_workers,
            launcher=self.collect.launcher,
            seed=rank_seed + self.env_frames,
        )
        return self.collector

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.optim.on_nonfinite == "skip":
            self.log("train/nonfinite_skips", float(self.nonfinite_skips), batch_size=1)
        if needs_weight_sync(self.collector, self.policy):  # workers act with copies: refresh them
            self.collector.update_policy_weights_()

    def teardown(self, stage: str) -> None:
        collector = getattr(self, "collector", None)
        if collector is not None:  # stop worker processes (a no-op for the in-process collector)
            collector.shutdown()
            self.collector = None

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device)

    def on_fit_start(self) -> None:
        if self.device.type != "cpu":  # replay in host memory, updates on the learner's device
            self.buffer.append_transform(DeviceCastTransform(self.device))

    def on_train_start(self) -> None:
        if not self.eval_history:  # not when resuming: the history came with the checkpoint
            self.evaluate()  # frame 0: the learning curve and path start at the initial policy

    # ------------------------------------------------------------------ optimisation
    def objective_parameters(self, objective: str) -> list[nn.Parameter]:
        loss = self.loss_module
        if objective == "alpha":
            return [loss.log_alpha]
        groups = {
            "qvalue": [loss.qvalue_network_params, loss.mixer_params],
            "value": [loss.value_network_params] if loss.value_network is not None else [],
            "actor": [loss.actor_network_params],
        }[objective]
        return [p for g in groups for p in g.values(True, True) if p.requires_grad]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        o = self.optim
        optimizers = []
        for name in self._objectives:
            groups = [{"params": self.objective_parameters(name), "lr": getattr(o, f"lr_{name}")}]
            if name == "qvalue" and o.lr_mixer is not None:  # the mixer in a group of its own
                mixer = {id(p) for p in self.loss_module.mixer_params.values(True, True)}
                groups = [
                    {"params": [p for p in groups[0]["params"] if id(p) not in mixer], "lr": o.lr_qvalue},
                    {"params": [p for p in groups[0]["params"] if id(p) in mixer], "lr": o.lr_mixer},
                ]
            if o.name == "adam":
                optimizers.append(torch.optim.Adam(groups, eps=o.eps))
            else:
                optimizers.append(torch.optim.RMSprop(groups, alpha=o.rmsprop_alpha, eps=o.eps))
        return optimizers

    nonfinite_skips: int = 0  # optimiser steps skipped for a nan/inf loss (optim.on_nonfinite=skip)

    def _step(self, optimizer, loss: torch.Tensor, objective: str) -> None:
        # every rank takes the same decision (DDP: a rank that skipped a backward would hang the others)
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if not finite:
            where = (f"loss_{objective} is {loss.item()} (on this rank or another) at env frame "
                     f"{self.env_frames} (update {self.updates})")
            if self.optim.on_nonfinite == "raise":
                raise FloatingPointError(
                    f"{where}: stopping instead of training on it (optim.on_nonfinite=skip skips such steps)"
                )
            self.nonfinite_skips += 1
            if self.nonfinite_skips == 1:
                rank_zero_warn(f"{where}: skipped this optimiser step (optim.on_nonfinite=skip); "
                               "further skips are counted in train/nonfinite_skips")
            return
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.optim.grad_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.optim.grad_clip)
        optimizer.step()

    def update(self, sample: TensorDictBase) -> dict[str, torch.Tensor]:
        """One FOP update in Algorithm 1 order; returns the detached losses."""
        optimizers = dict(zip(self._objectives, self.optimizers()))
        loss = self.loss_module
        out = {}
        out["qvalue"], _ = loss.qvalue_loss(sample)  # eq. (9)
        self._step(optimizers["qvalue"], out["qvalue"], "qvalue")
        if "value" in optimizers:
            out["value"], _ = loss.value_loss(sample)  # eq. (10)
            self._step(optimizers["value"], out["value"], "value")
        if self.env_frames >= self.collect.policy_warmup_frames:
            out["actor"], meta = loss.actor_loss(sample)  # eq. (11)
            self._step(optimizers["actor"], out["actor"], "actor")
            if "alpha" in optimizers:
                out["alpha"] = loss.alpha_loss(meta["log_prob_jt"])  # dual temperature
                self._step(optimizers["alpha"], out["alpha"], "alpha")
            out["entropy"] = -meta["log_prob_jt"].mean()
        self.target_updater.step()
        self.updates += 1
        return {k: v.detach() for k, v in out.items()}

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        self.env_frames += batch.numel()
        self.buffer.extend(batch.reshape(-1))
        if self.temperature is not None:
            self.loss_module.alpha = self.temperature(self.env_frames)
        if len(self.buffer) >= self.collect.warmup_frames:
            for _ in range(self.collect.updates_per_batch):
                metrics = self.update(self.sample())
            self.log_dict(
                {f"train/loss_{k}" if k != "entropy" else "train/entropy": v for k, v in metrics.items()},
                batch_size=1,
            )
        self.log_dict(
            {
                "train/alpha": float(self.loss_module.alpha_value),
                "train/episode_reward": batch.get(("next", "reward")).float().mean(),
                "env_frames": float(self.env_frames),
            },
            batch_size=1,
            prog_bar=True,
        )
        if self.env_frames >= self._next_eval or self.env_frames >= self.collect.total_frames:
            metrics = {"eval/return": self.evaluate(), "env_frames": float(self.env_frames)}
            if self.eval_win_rate is not None:
                metrics["eval/win_rate"] = self.eval_win_rate
            for logger in self.loggers:  # every evaluation, not only on log_every_n_steps ...
                logger.log_metrics(metrics, step=self.global_step)
                logger.save()  # ... and on disk at once: a crash or a kill loses no evaluation
            while self._next_eval <= self.env_frames:
                self._next_eval += self.collect.eval_interval or self.collect.total_frames

    # ------------------------------------------------------------------ checkpoints
    checkpoint_replay: bool = True  # keep the replay buffer in checkpoints (recipe: checkpoint.replay_buffer)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Adds the run state Lightning does not hold: counters, evaluations, the replay buffer
        (unless ``checkpoint_replay`` is False) and the hard target update's counter."""
        checkpoint["fop_run"] = {
            "env_frames": self.env_frames,
            "updates": self.updates,
            "next_eval": self._next_eval,
            "eval_history": self.eval_history,
            "eval_win_rate": self.eval_win_rate,
            "target_update_counter": getattr(self.target_updater, "counter", None),
            "nonfinite_skips": self.nonfinite_skips,
            "replay": gather_ranks(self.trainer, replay_state(self.buffer)) if self.checkpoint_replay else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        run = checkpoint["fop_run"]
        self.env_frames, self.updates, self._next_eval = run["env_frames"], run["updates"], run["next_eval"]
        self.eval_history = [tuple(entry) for entry in run["eval_history"]]
        self.eval_win_rate = run["eval_win_rate"]
        self.nonfinite_skips = run["nonfinite_skips"]
        if run["target_update_counter"] is not None:
            self.target_updater.counter = run["target_update_counter"]
        if run["replay"] is not None:
            if len(run["replay"]) != self.trainer.world_size:
                raise ValueError(
                    f"the checkpoint holds the replay buffers of {len(run['replay'])} rank(s) but this "
                    f"run has {self.trainer.world_size}: resume with the same trainer.devices and num_nodes"
                )
            load_replay_state(self.buffer, run["replay"][self.global_rank])

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> float:
        """Greedy (deterministic) episodes; records and returns the mean episode return.

        A batched env plays ``eval_envs`` episodes side by side; an unbatched one (one game per
        process, as SMAC) plays them one after another. Where the env reports
        ``("info", "battle_won")``, the share of won episodes is logged as ``eval/win_rate``.
        """
        env = self.make_eval_env(self.collect.eval_envs)
        env.set_seed(self.seed + 10_000 + self.env_frames)
        if self.device.type != "cpu":  # envs on CPU, a learner on GPU: cast on the way in and out
            env = TransformedEnv(env, DeviceCastTransform(self.device, env.device))
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            if env.batch_size:
                rollouts = [env.rollout(self.collect.eval_max_steps, self.policy,
                                        break_when_any_done=False)]
            else:
                rollouts = [env.rollout(self.collect.eval_max_steps, self.policy).unsqueeze(0)
                            for _ in range(self.collect.eval_envs)]
        returns, wins = [], []
        for rollout in rollouts:  # [E, T]
            done = rollout.get(("next", "done")).squeeze(-1)
            # count each env's first episode only: steps up to and including its first done
            alive = torch.cumsum(done.int(), dim=-1) - done.int() == 0
            returns.append((rollout.get(("next", "reward")).squeeze(-1) * alive).sum(-1))
            won = rollout.get(("next", "info", "battle_won"), None)
            if won is not None:
                wins.append((won.squeeze(-1) & done & alive).any(-1).float())
        episode_return = torch.cat(returns).mean().item()
        greedy_action = rollouts[0].get(("agents", "action"))[0, 0].tolist()
        env.close()
        self.eval_history.append((self.env_frames, episode_return, greedy_action))
        self.eval_win_rate = torch.cat(wins).mean().item() if wins else None
        return episode_return
