"""Lightning modules: TorchRL collector -> replay buffer -> loss -> optimisers -> targets.

:class:`MARLLightningModule` trains any TorchRL ``LossModule`` off-policy: each ``training_step``
receives one batch of env frames from a TorchRL :class:`Collector` (the train dataloader), stores
it in a replay buffer and runs ``updates_per_batch`` updates, plus ``updates_per_episode`` per
episode that ended in the batch (:meth:`MARLLightningModule.updates_for`). An update calls the loss once and
steps one optimiser per :class:`Objective` (the loss output it minimises and the parameters it
trains), in the given order, then the target networks (TorchRL's convention, as BenchMARL
does). The baselines of :mod:`fop_modules.baselines` train this way.

:class:`FOPLightningModule` is the same loop with FOP's update in Algorithm 1 order: joint TD
(eq. 9) -> V_i (eq. 10, paper form) -> policies (eq. 11) -> the dual temperature -> target
networks, each objective computed after the previous one has stepped. A temperature schedule,
when given, is evaluated at the current env-step count before every batch of updates.

Metrics go to the Lightning loggers as ``train/*`` with ``env_frames`` (the x axis of every
curve). Greedy evaluation is a callback beside the module,
:class:`~fop_modules.evaluation.GreedyEvaluation` (``eval/*``). A Lightning profiler
(``Trainer(profiler="simple")``) times the updates of each batch (replay sampling included) as
``[<module class>]updates``, beside Lightning's ``[_TrainingEpochLoop].train_dataloader_next`` (the
collector's iteration: env steps and policy) and the evaluation's ``[GreedyEvaluation]evaluate``.
"""

from __future__ import annotations

from typing import Callable

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.collectors import BaseCollector
from torchrl.data import TensorDictReplayBuffer
from torchrl.envs import DeviceCastTransform, EnvBase
from torchrl.objectives import LossModule

from fop_modules.checkpointing import gather_ranks, load_replay_state, replay_state
from fop_modules.collectors import make_collector, needs_weight_sync
from fop_modules.episodes import EpisodeAssembler, mask_partial_episodes
from fop_modules.loop_config import CollectConfig
from fop_modules.loss import FOPLoss
from fop_modules.optimisation import Objective, OptimConfig
from fop_modules.replay import make_replay_buffer
from fop_modules.temperature import TemperatureSchedule, check_alpha_source

__all__ = ["MARLLightningModule", "FOPLightningModule"]

SEED_STRIDE = 1_000  # DDP rank r seeds its collector with seed + r * SEED_STRIDE


class MARLLightningModule(L.LightningModule):
    """Trains a TorchRL loss off-policy with manual optimisation, one optimiser per objective.

    Args:
        loss_module: a TorchRL ``LossModule`` whose output holds every ``Objective.loss_key``
            (it holds every network; the soft (:class:`~fop_modules.target_update.FusedSoftUpdate`)
            or hard target update is built from it).
        policy: the policy used for collection, exploration included (its deterministic mode
            is the greedy evaluation policy).
        objectives: ``name -> Objective``, stepped in this order after one call of the loss
            (each backward runs after the earlier steps: put an objective whose graph holds
            another's weights first, e.g. the actor before the critic, as TorchRL's losses
            detach those weights but share their storage).
        make_env: a picklable callable returning a fresh environment.
        collect: :class:`CollectConfig`.
        optim: :class:`OptimConfig` (its ``lr_*`` are FOP's; objectives carry their own rates).
        seed: seeds the collector's environments (the recipe seeds torch itself).
        process_batch: applied to every collected batch before it is stored (e.g. a team
            reward copied per agent for per-agent critics), or None.
        exploration: a TorchRL exploration module inside ``policy`` whose ``step(frames)``
            anneals its noise (epsilon, sigma) by the collected frames, or None.
        joint_q: ``batch -> {"q_i", "q_jt", "v_i"}``, the learned values of given joint actions
            (``FOPLoss.joint_q``, ``Baseline.joint_q``) that
            :class:`~fop_modules.probe_callbacks.MatrixGameProbe` reads, or None.
    """

    def __init__(
        self,
        loss_module: LossModule,
        policy: nn.Module,
        objectives: dict[str, Objective],
        make_env: Callable[[], EnvBase],
        *,
        collect: CollectConfig,
        optim: OptimConfig,
        seed: int = 0,
        process_batch: Callable[[TensorDictBase], TensorDictBase] | None = None,
        exploration: nn.Module | None = None,
        joint_q: Callable[[TensorDictBase], dict] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.loss_module, self.policy, self.objectives = loss_module, policy, objectives
        self.make_env = make_env
        self.collect, self.optim, self.seed = collect, optim, seed
        self.process_batch, self.exploration, self.joint_q = process_batch, exploration, joint_q
        self.env_frames = 0
        self.updates = 0
        self.buffer = self._make_buffer(collect)
        # Sequence replay stores whole episodes, each from its first step, so that a recurrent
        # network replays every step on the history it acted on (fop_modules.episodes); a slice
        # that does not start an episode is masked out.
        self.assembler = EpisodeAssembler() if collect.sequence_length is not None else None
        self.target_updater = optim.make_target_updater(loss_module)

    # ------------------------------------------------------------------ data
    @staticmethod
    def _make_buffer(collect: CollectConfig) -> TensorDictReplayBuffer:
        """Transitions, or slices within one trajectory in a compact storage (each step stored
        once; see :func:`fop_modules.replay.make_replay_buffer`)."""
        return make_replay_buffer(collect.buffer_size, collect.batch_size, collect.sequence_length)

    def store(self, batch: TensorDictBase) -> None:
        """Writes a collected batch to the replay: its transitions, or (sequence replay) the
        episodes that end in it, whole (the others wait for their end in ``self.assembler``)."""
        if self.assembler is not None:
            batch = self.assembler(batch)
        if batch is not None:
            self.buffer.extend(batch.reshape(-1))

    def sample(self) -> TensorDictBase:
        """One replay batch: [batch_size] transitions or [batch_size, sequence_length] slices
        (slices that do not start an episode are masked out)."""
        sample = self.buffer.sample()
        if self.collect.sequence_length is not None:
            sample = sample.reshape(self.collect.batch_size, self.collect.sequence_length)
            sample = mask_partial_episodes(sample)
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

    def _profile(self, section: str):
        """A section of the trainer's profiler (``trainer.profiler=simple`` reports
        ``[<module class>]updates`` beside Lightning's own)."""
        return self.trainer.profiler.profile(f"[{type(self).__name__}]{section}")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optim.make_optimizer(objective.param_groups) for objective in self.objectives.values()]

    nonfinite_skips: int = 0  # optimiser steps skipped for a nan/inf loss (optim.on_nonfinite=skip)

    def _optimizers(self) -> list:
        """The optimisers in objective order (Lightning unwraps a list of one)."""
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def _step(self, optimizer, loss: torch.Tensor, objective: str) -> None:
        # every rank takes the same decision (DDP: a rank that skipped a backward would hang the others)
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if not finite:
            where = (f"{objective} is {loss.item()} (on this rank or another) at env frame "
                     f"{self.env_frames} (update {self.updates})")
            if self.optim.on_nonfinite == "raise":
                raise FloatingPointError(
                    f"{where}: stopping instead of training on it (OptimConfig(on_nonfinite='skip') skips such steps)"
                )
            self.nonfinite_skips += 1
            if self.nonfinite_skips == 1:
                rank_zero_warn(f"{where}: skipped this optimiser step (OptimConfig(on_nonfinite='skip')); "
                               "further skips are counted in train/nonfinite_skips")
            return
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.optim.grad_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.optim.grad_clip)
        optimizer.step()

    def update(self, sample: TensorDictBase) -> dict[str, torch.Tensor]:
        """One call of the loss, one step per objective in order, then the targets; returns the
        detached scalar outputs of the loss (``loss_*`` and metrics such as ``alpha``)."""
        out = self.loss_module(sample)
        for objective, optimizer in zip(self.objectives.values(), self._optimizers()):
            self._step(optimizer, out[objective.loss_key], objective.loss_key)
        self.target_updater.step()
        self.updates += 1
        return {k: v.detach().float().mean() for k, v in out.items() if v.numel() > 0}

    def before_updates(self, frames: int) -> None:
        """Called once per collected batch of ``frames`` frames, before its updates."""
        if self.exploration is not None:
            self.exploration.step(frames)  # anneal epsilon / sigma by the frames collected

    def progress_metrics(self) -> dict[str, float]:
        """Logged after every collected batch (and shown in the progress bar)."""
        for name in ("eps", "sigma"):  # EGreedyModule / AdditiveGaussianModule, OU
            if self.exploration is not None and hasattr(self.exploration, name):
                return {f"train/{name}": float(getattr(self.exploration, name))}
        return {}

    def updates_for(self, batch: TensorDictBase) -> int:
        """Updates after ``batch``: ``updates_per_batch``, plus ``updates_per_episode`` for every
        episode that ends in it (under DDP the most any rank's batch asks for, so that every
        rank runs the same updates)."""
        updates = self.collect.updates_per_batch
        if self.collect.updates_per_episode:
            episodes = batch.get(("next", "done")).sum()
            if self.trainer.world_size > 1:
                episodes = self.all_gather(episodes).max()
            updates += self.collect.updates_per_episode * int(episodes)
        return updates

    def warm(self) -> bool:
        """Whether the replay holds ``collect.warmup_frames``, on every rank under DDP: sequence
        replay stores whole episodes only, so ranks reach the warm-up at different batches, and a
        rank that updated alone would wait forever in the gradients' all-reduce."""
        warm = len(self.buffer) >= self.collect.warmup_frames
        return self.trainer.strategy.reduce_boolean_decision(warm, all=True)

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        self.env_frames += batch.numel()
        if self.process_batch is not None:
            batch = self.process_batch(batch)
        self.store(batch)
        self.before_updates(batch.numel())
        updates = self.updates_for(batch)
        if self.warm() and updates:
            with self._profile("updates"):  # replay sampling included
                for _ in range(updates):
                    metrics = self.update(self.sample())
            self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=1)
        self.log_dict(
            {
                **self.progress_metrics(),
                "train/reward_per_frame": batch.get(("next", "reward")).float().mean(),  # not a return
                "env_frames": float(self.env_frames),
            },
            batch_size=1,
            prog_bar=True,
        )

    # ------------------------------------------------------------------ checkpoints
    checkpoint_replay: bool = True  # keep the replay buffer in checkpoints (recipe: checkpoint.replay_buffer)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Adds the run state Lightning does not hold: counters, the replay buffer (unless
        ``checkpoint_replay`` is False) and the hard target update's counter."""
        checkpoint["fop_run"] = {
            "env_frames": self.env_frames,
            "updates": self.updates,
            "target_update_counter": getattr(self.target_updater, "counter", None),
            "nonfinite_skips": self.nonfinite_skips,
            "replay": gather_ranks(self.trainer, replay_state(self.buffer)) if self.checkpoint_replay else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        run = checkpoint["fop_run"]
        self.env_frames, self.updates = run["env_frames"], run["updates"]  # older checkpoints also hold
        # the evaluations, which GreedyEvaluation reads from there
        self.nonfinite_skips = run["nonfinite_skips"]
        if run["target_update_counter"] is not None:
            self.target_updater.counter = run["target_update_counter"]
        if run["replay"] is not None:
            if len(run["replay"]) != self.trainer.world_size:
                raise ValueError(
                    f"the checkpoint holds the replay buffers of {len(run['replay'])} rank(s) but this "
                    f"run has {self.trainer.world_size}: resume with a Trainer of the same devices and num_nodes"
                )
            load_replay_state(self.buffer, run["replay"][self.global_rank])


class FOPLightningModule(MARLLightningModule):
    """Trains FOP with manual optimisation in Algorithm 1 order.

    Args:
        loss_module: the :class:`~fop_modules.FOPLoss` (holds every network).
        policy: the stochastic actor used for collection (the same module given to the loss,
            whose parameters the loss trains in place).
        objectives: FOP's objectives with their rates, :meth:`fop_objectives` (``"qvalue"``,
            ``"value"`` with V_i networks, ``"actor"``, ``"alpha"`` with a learned alpha).
        make_env: a picklable callable returning a fresh environment.
        collect: :class:`CollectConfig`.
        optim: :class:`OptimConfig` (the optimiser, clipping and target update).
        temperature: schedule of alpha over env frames, or None for a learned alpha.
        seed: seeds the collector's environments (the recipe seeds torch itself).
    """

    def __init__(
        self,
        loss_module: FOPLoss,
        policy: nn.Module,
        objectives: dict[str, Objective],
        make_env: Callable[[], EnvBase],
        *,
        collect: CollectConfig,
        optim: OptimConfig,
        temperature: TemperatureSchedule | None,
        seed: int = 0,
    ) -> None:
        check_alpha_source(temperature, loss_module.learn_alpha)
        expected = list(self.fop_objectives(loss_module))
        if list(objectives) != expected:
            raise ValueError(
                f"objectives must be FOP's {expected} in this order (this loss's objectives), got "
                f"{list(objectives)}: build them with FOPLightningModule.fop_objectives(loss, lr_actor=...)"
            )
        super().__init__(
            loss_module, policy, objectives, make_env,
            collect=collect, optim=optim, seed=seed, joint_q=loss_module.joint_q,
        )
        self.temperature = temperature

    @staticmethod
    def fop_objectives(loss: FOPLoss, **rates: float | None) -> dict[str, Objective]:
        """FOP's optimisers in Algorithm 1 order, :meth:`FOPLoss.param_groups` with ``rates``
        (its ``lr_*`` arguments; the mixer in a group of its own unless ``lr_mixer=None``).

        Examples:
            >>> from fop_modules import FOPLoss, FOPMixer, networks
            >>> loss = FOPLoss(networks.discrete_actor(2, 3, 4), networks.discrete_critic(2, 3, 4),
            ...                FOPMixer(2, state_dim=5, action_dim=4), action_space="discrete")
            >>> objectives = FOPLightningModule.fop_objectives(loss, lr_actor=1e-3)
            >>> {name: [g["lr"] for g in o.param_groups] for name, o in objectives.items()}
            {'qvalue': [0.0003, 0.03], 'actor': [0.001]}
        """
        groups = loss.param_groups(**rates)
        return {key.removeprefix("loss_"): Objective(key, group) for key, group in groups.items()}

    def before_updates(self, frames: int) -> None:
        if self.temperature is not None:
            self.loss_module.alpha = self.temperature(self.env_frames)

    def progress_metrics(self) -> dict[str, float]:
        return {"train/alpha": float(self.loss_module.alpha_value)}

    def update(self, sample: TensorDictBase) -> dict[str, torch.Tensor]:
        """One FOP update in Algorithm 1 order, each objective computed after the previous step;
        returns the detached losses and the team entropy."""
        optimizers = dict(zip(self.objectives, self._optimizers()))
        loss = self.loss_module
        out = {}
        sample = loss.unroll(sample)  # a GRU actor is unrolled once: the actor steps last
        out["loss_qvalue"], _ = loss.qvalue_loss(sample)  # eq. (9)
        self._step(optimizers["qvalue"], out["loss_qvalue"], "loss_qvalue")
        if "value" in optimizers:
            out["loss_value"], _ = loss.value_loss(sample)  # eq. (10)
            self._step(optimizers["value"], out["loss_value"], "loss_value")
        if self.env_frames >= self.collect.policy_warmup_frames:
            out["loss_actor"], meta = loss.actor_loss(sample)  # eq. (11)
            self._step(optimizers["actor"], out["loss_actor"], "loss_actor")
        if "loss_actor" in out:
            if "alpha" in optimizers:
                out["loss_alpha"] = loss.alpha_loss(meta["log_prob_jt"], meta["target_entropy"])  # dual temperature
                self._step(optimizers["alpha"], out["loss_alpha"], "loss_alpha")
            out["entropy"] = -meta["log_prob_jt"].mean()
        self.target_updater.step()
        self.updates += 1
        return {k: v.detach() for k, v in out.items()}
