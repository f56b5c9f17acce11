"""Greedy evaluation of a team: episode returns and wins, with 95% confidence intervals, and
the callback that evaluates a training run.

:class:`GreedyEvaluation` is a Lightning callback that plays greedy episodes at the start of
training, every ``interval`` env frames and at the end, and logs ``eval/return`` (and
``eval/win_rate`` where the env reports wins). :func:`play_greedy` plays ``episodes`` episodes with the policy's deterministic action (the mode:
argmax over available actions, the tanh-Gaussian's mean) and returns an :class:`EpisodeStats`;
:func:`greedy_rollouts` plays them (a batched env stops once every copy has ended its first
episode); :func:`first_episodes` reads each env's first episode out of an ``[E, T]`` rollout (what
:class:`GreedyEvaluation` logs as ``eval/return`` and ``eval/win_rate``). The mean return's interval is Student's t,
``mean +- t_{0.975, n-1} s / sqrt(n)``; the win rate's is Wilson's score interval, which stays
inside [0, 1] and is not empty at 0 or n wins.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import lightning as L
import torch
from tensordict import TensorDictBase
from torch import Tensor, nn
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

__all__ = ["EpisodeStats", "GreedyEvaluation", "first_episodes", "greedy_rollouts", "play_greedy", "t_quantile",
           "wilson_interval"]

Z_95 = 1.959964  # standard normal 97.5% quantile
# Student-t 97.5% quantiles by degrees of freedom; between keys the next larger key's (wider) value
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}
WON_KEY = ("next", "info", "battle_won")  # SMAC's and SMAX's adapters


def t_quantile(df: int) -> float:
    """The two-sided 95% Student-t quantile for ``df`` degrees of freedom (the next tabulated
    ``df`` at or above it, so the interval is never too narrow; the normal's beyond 120).

    Examples:
        >>> t_quantile(4), t_quantile(12), t_quantile(1000)
        (2.776, 2.131, 1.959964)
    """
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 samples), got {df}")
    return next((T_95[k] for k in sorted(T_95) if k >= df), Z_95)


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval of a success probability from ``successes`` out of ``n``.

    Examples:
        >>> [round(x, 3) for x in wilson_interval(0, 10)]
        [0.0, 0.278]
        >>> [round(x, 3) for x in wilson_interval(5, 10)]
        [0.237, 0.763]
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p, z2 = successes / n, Z_95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def first_episodes(rollout: TensorDictBase) -> tuple[Tensor, Tensor, Tensor | None]:
    """Each env's first episode in an ``[E, T]`` rollout: its return ``[E]``, whether it ended
    within the ``T`` steps ``[E]`` (bool), and whether it was won ``[E]`` (float 0/1; None
    where the env reports no ``("info", "battle_won")``). Steps after an env's first ``done``
    belong to its next episode and are not counted.

    Examples:
        >>> from tensordict import TensorDict
        >>> done = torch.tensor([[False, True, False], [False, False, False]])[..., None]
        >>> rollout = TensorDict({"next": {"reward": torch.ones(2, 3, 1), "done": done}}, [2, 3])
        >>> returns, ended, won = first_episodes(rollout)
        >>> returns.tolist(), ended.tolist(), won
        ([2.0, 3.0], [True, False], None)
    """
    done = rollout.get(("next", "done")).squeeze(-1)  # [E, T]
    alive = torch.cumsum(done.int(), dim=-1) - done.int() == 0  # steps up to and including the first done
    returns = (rollout.get(("next", "reward")).squeeze(-1) * alive).sum(-1)
    ended = (done & alive).any(-1)
    won = rollout.get(WON_KEY, None)
    wins = None if won is None else (won.squeeze(-1) & done & alive).any(-1).float()
    return returns, ended, wins


@dataclass
class EpisodeStats:
    """Per-episode results of :func:`play_greedy`.

    Attributes:
        returns: team return of each episode ``[n]``.
        ended: whether each episode ended within the step limit ``[n]`` (bool); one that did
            not counts with the return it had reached.
        wins: 1.0 for a won battle, else 0.0 ``[n]``; None where the env reports no wins.
    """

    returns: Tensor
    ended: Tensor
    wins: Tensor | None = None

    def summary(self) -> dict[str, float | int | list[float] | None]:
        """Mean return with its 95% Student-t interval and the win rate with its 95% Wilson
        interval (None without wins); a single episode gives no return interval (None).

        Examples:
            >>> stats = EpisodeStats(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3, dtype=torch.bool),
            ...                      torch.tensor([1.0, 0.0, 1.0]))
            >>> s = stats.summary()
            >>> s["mean_return"], [round(x, 3) for x in s["return_ci95"]], round(s["win_rate"], 3)
            (2.0, [-0.484, 4.484], 0.667)
        """
        n = self.returns.numel()
        mean = self.returns.mean().item()
        interval = None
        if n > 1:
            half = t_quantile(n - 1) * self.returns.std().item() / math.sqrt(n)
            interval = [mean - half, mean + half]
        out = {"episodes": n, "ended": int(self.ended.sum()), "mean_return": mean, "return_ci95": interval,
               "win_rate": None, "win_rate_ci95": None}
        if self.wins is not None:
            won = int(self.wins.sum().item())
            out.update(win_rate=won / n, win_rate_ci95=list(wilson_interval(won, n)))
        return out


@torch.no_grad()
def play_greedy(env: EnvBase, policy: nn.Module, episodes: int, max_steps: int) -> EpisodeStats:
    """Plays ``episodes`` greedy episodes of at most ``max_steps`` steps.

    A batched env (``batch_size == [E]``) plays ``E`` episodes per rollout, as many rollouts as
    needed (the last one's surplus is dropped); an unbatched one (one game per process, as
    SMAC) plays them one after another. Seed the env first for repeatable episodes.

    Args:
        env: the env, with the transforms the policy needs (e.g. a GRU's hidden state).
        policy: a TorchRL policy; its deterministic mode is played.
        episodes: number of episodes.
        max_steps: step limit of each episode (at least the env's episode limit, so that
            every episode ends).

    Returns:
        The episodes' :class:`EpisodeStats`.

    Examples:
        >>> from fop_modules import networks
        >>> from fop_modules.envs import MatrixGameEnv
        >>> env = MatrixGameEnv(num_envs=4)
        >>> stats = play_greedy(env, networks.discrete_actor(2, 1, 3), episodes=6, max_steps=1)
        >>> stats.returns.shape, bool(stats.ended.all()), stats.wins
        (torch.Size([6]), True, None)
    """
    stats = _first_episode_stats(greedy_rollouts(env, policy, episodes, max_steps))
    wins = stats.wins[:episodes] if stats.wins is not None else None
    return EpisodeStats(stats.returns[:episodes], stats.ended[:episodes], wins)


def _first_episode_stats(rollouts: list[TensorDictBase]) -> EpisodeStats:
    """Every env's first episode of every ``[E, T]`` rollout (:func:`first_episodes`), concatenated."""
    returns, ended, wins = zip(*(first_episodes(rollout) for rollout in rollouts))
    return EpisodeStats(torch.cat(returns), torch.cat(ended), None if wins[0] is None else torch.cat(wins))


def greedy_rollouts(env: EnvBase, policy: nn.Module, episodes: int, max_steps: int) -> list[TensorDictBase]:
    """``[E, T]`` rollouts of the policy's deterministic action, enough for ``episodes`` first
    episodes (read them with :func:`first_episodes`).

    A batched env plays its ``E`` copies side by side and stops as soon as every copy has ended
    its first episode (TorchRL's ``break_when_all_done``: a copy that has ended is not reset, and
    its last step is repeated until the others end), or after ``max_steps``. On SMAX, battles
    that last 15-30 steps no longer cost the 101 steps of the episode limit. An unbatched env
    plays one episode per rollout.

    Args:
        env: the env, with the transforms the policy needs.
        policy: a TorchRL policy; its deterministic mode is played.
        episodes: number of first episodes needed.
        max_steps: step limit of each episode.

    Returns:
        The rollouts, each ``[E, T]`` (``[1, T]`` for an unbatched env), ``T <= max_steps``.

    Examples:
        >>> from fop_modules import networks
        >>> from fop_modules.envs import MatrixGameEnv
        >>> [r.shape for r in greedy_rollouts(MatrixGameEnv(num_envs=4), networks.discrete_actor(2, 1, 3), 6, 5)]
        [torch.Size([4, 1]), torch.Size([4, 1])]
    """
    if episodes < 1 or max_steps < 1:
        raise ValueError(f"episodes and max_steps must be >= 1, got {episodes} and {max_steps}")
    rollouts, played = [], 0
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        while played < episodes:
            if env.batch_size:
                rollouts.append(env.rollout(max_steps, policy, break_when_all_done=True))
            else:
                rollouts.append(env.rollout(max_steps, policy).unsqueeze(0))
            played += rollouts[-1].shape[0]
    return rollouts


class GreedyEvaluation(L.Callback):
    """Greedy evaluation of a training run: a Lightning callback for
    :class:`~fop_modules.lightning.MARLLightningModule` (and FOP's).

    It plays ``episodes`` greedy episodes (:func:`greedy_rollouts`; each env's first episode
    counts) on a fresh env from ``make_env(episodes)``: when training starts (frame 0), after the
    batch at which the module's ``env_frames`` reach the next multiple of ``interval``, and after
    the run's last batch. Each evaluation after the start goes to every logger at once and is
    saved to disk (a crash loses none; the one at frame 0 is kept in :attr:`history` only):
    ``eval/return``, the mean episode return, and ``eval/win_rate``, the
    share of won episodes, where the env reports ``("info", "battle_won")`` (SMAC, SMAX), with
    ``env_frames``. Its envs are seeded with the module's ``seed + 10_000 + env_frames``.

    The evaluations so far (:attr:`history`) and the last win rate are kept in the run's
    checkpoints, so a resumed run continues its curve. With a Lightning profiler each evaluation
    is timed as ``[GreedyEvaluation]evaluate``.

    Args:
        make_env: ``(num_envs) -> env`` with the transforms the policy needs, giving the env's
            own rewards (not a training-time reward standardisation).
        episodes: greedy episodes per evaluation (envs side by side where the env is batched).
        max_steps: step limit of an evaluation episode (at least the episode limit, so that
            every episode ends).
        interval: env frames between evaluations; 0 or None: at the start and the end only.

    Attributes:
        history: ``[(env_frames, mean return, greedy joint action of the first env at its first
            step)]``, one entry per evaluation.
        win_rate: share of won episodes in the last evaluation, or None where the env reports
            no wins.

    Examples:
        >>> evaluation = GreedyEvaluation(lambda n: None, episodes=32, max_steps=101, interval=10_000)
        >>> evaluation.history, evaluation.win_rate
        ([], None)
    """

    def __init__(self, make_env: Callable[[int], EnvBase], *, episodes: int, max_steps: int,
                 interval: int | None = None) -> None:
        for name, value in (("episodes", episodes), ("max_steps", max_steps)):
            if value < 1:
                raise ValueError(f"GreedyEvaluation.{name} must be >= 1, got {value}")
        if interval is not None and interval < 0:
            raise ValueError(f"GreedyEvaluation.interval must be >= 0 (0 or None: start and end only), got {interval}")
        self.make_env, self.episodes, self.max_steps, self.interval = make_env, episodes, max_steps, interval
        self.history: list[tuple[int, float, list]] = []
        self.win_rate: float | None = None
        self.next_eval: int | None = None  # env frames of the next evaluation (set when training starts)

    # ------------------------------------------------------------------ when
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.next_eval is None:
            self.next_eval = self._period(pl_module)
        if not self.history:  # not when resuming: the history came with the checkpoint
            self._evaluate(trainer, pl_module)  # frame 0: the curve starts at the initial policy

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        frames, total = pl_module.env_frames, pl_module.collect.total_frames
        if frames < self.next_eval and frames < total:
            return
        metrics = {"eval/return": self._evaluate(trainer, pl_module), "env_frames": float(frames)}
        if self.win_rate is not None:
            metrics["eval/win_rate"] = self.win_rate
        for logger in trainer.loggers:  # every evaluation, not only on log_every_n_steps ...
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()  # ... and on disk at once: a crash or a kill loses no evaluation
        while self.next_eval <= frames:
            self.next_eval += self._period(pl_module)

    def _period(self, pl_module: L.LightningModule) -> int:
        return self.interval or pl_module.collect.total_frames

    # ------------------------------------------------------------------ what
    @torch.no_grad()
    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """One evaluation of the module's policy; records it and returns the mean return."""
        with trainer.profiler.profile(f"[{type(self).__name__}]evaluate"):
            env = self.make_env(self.episodes)
            env.set_seed(pl_module.seed + 10_000 + pl_module.env_frames)
            policy, env_device = pl_module.policy, env.device or torch.device("cpu")
            if pl_module.device != env_device:  # a learner on GPU, envs on CPU: play with a CPU copy
                policy = copy.deepcopy(policy).to(env_device)
            # float32 play, as the collectors' (trainer.precision=bf16-mixed autocasts the training step)
            with torch.autocast(pl_module.device.type, enabled=False):
                rollouts = greedy_rollouts(env, policy, self.episodes, self.max_steps)
            stats = _first_episode_stats(rollouts)  # [E, T] each: every env's first episode counts
            episode_return = stats.returns.mean().item()
            greedy_action = rollouts[0].get(("agents", "action"))[0, 0].tolist()
            env.close()
        self.history.append((pl_module.env_frames, episode_return, greedy_action))
        self.win_rate = stats.wins.mean().item() if stats.wins is not None else None
        return episode_return

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"history": self.history, "win_rate": self.win_rate, "next_eval": self.next_eval}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [tuple(entry) for entry in state_dict["history"]]
        self.win_rate, self.next_eval = state_dict["win_rate"], state_dict["next_eval"]

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """A checkpoint saved before this callback existed kept the evaluations in the module's
        run state (``fop_run``): read them from there (a newer one's own state follows)."""
        run = checkpoint.get("fop_run", {})
        if "eval_history" in run:
            self.load_state_dict({"history": run["eval_history"], "win_rate": run["eval_win_rate"],
                                  "next_eval": run["next_eval"]})
