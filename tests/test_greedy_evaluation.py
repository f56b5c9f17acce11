"""GreedyEvaluation, the callback that evaluates a training run: when it plays, what it logs, and
what it keeps across a resume (the recipe's use of it: tests/test_recipe.py, test_resume.py)."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger

from fop_modules import FOPLoss, FOPMixer, networks
from fop_modules.envs import MatrixGameEnv
from fop_modules.evaluation import GreedyEvaluation
from fop_modules.lightning import FOPLightningModule
from fop_modules.loop_config import CollectConfig
from fop_modules.optimisation import OptimConfig
from fop_modules.temperature import ConstantTemperature


def _module(total_frames: int = 96) -> FOPLightningModule:
    loss = FOPLoss(networks.discrete_actor(2, 1, 3), networks.discrete_critic(2, 1, 3), FOPMixer(2, 1, 3),
                   action_space="discrete", num_qvalue_nets=1)
    collect = CollectConfig(total_frames=total_frames, frames_per_batch=16, batch_size=16, warmup_frames=16)
    return FOPLightningModule(loss, loss.actor_network, FOPLightningModule.fop_objectives(loss), lambda: MatrixGameEnv(num_envs=4), collect=collect,
                              optim=OptimConfig(), temperature=ConstantTemperature(0.5))


def _fit(tmp_path, module, evaluation):
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=CSVLogger(tmp_path), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[evaluation])
    trainer.fit(module)
    return trainer


def test_it_evaluates_at_the_start_every_interval_and_at_the_end(tmp_path):
    evaluation = GreedyEvaluation(lambda n: MatrixGameEnv(num_envs=n), episodes=3, max_steps=1, interval=40)
    _fit(tmp_path, _module(total_frames=96), evaluation)
    # frame 0, the first batches past 40 and 80 (48, 80), and the last batch (96)
    assert [frames for frames, _, _ in evaluation.history] == [0, 48, 80, 96]
    assert all(-12 <= ret <= 8 for _, ret, _ in evaluation.history)  # payoffs of the paper's table
    assert all(len(action) == 2 for _, _, action in evaluation.history)  # one action per agent
    assert evaluation.win_rate is None  # the matrix game reports no wins
    rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    logged = [row for row in rows[1:] if row.split(",")[rows[0].split(",").index("eval/return")]]
    assert len(logged) == 3  # every evaluation after the start reaches the logger


def test_without_an_interval_it_evaluates_at_the_start_and_the_end(tmp_path):
    evaluation = GreedyEvaluation(lambda n: MatrixGameEnv(num_envs=n), episodes=2, max_steps=1)
    _fit(tmp_path, _module(total_frames=64), evaluation)
    assert [frames for frames, _, _ in evaluation.history] == [0, 64]


def test_its_state_survives_a_checkpoint_and_an_older_checkpoint_is_read():
    evaluation = GreedyEvaluation(lambda n: None, episodes=2, max_steps=1, interval=10)
    evaluation.history, evaluation.win_rate, evaluation.next_eval = [(0, 1.0, [0, 0]), (16, 2.0, [1, 1])], 0.5, 20
    restored = GreedyEvaluation(lambda n: None, episodes=2, max_steps=1, interval=10)
    restored.load_state_dict(evaluation.state_dict())
    assert (restored.history, restored.win_rate, restored.next_eval) == (evaluation.history, 0.5, 20)
    # a checkpoint saved before the callback existed held the evaluations in the module's run state
    older = GreedyEvaluation(lambda n: None, episodes=2, max_steps=1, interval=10)
    old_run = {"env_frames": 16, "eval_history": [[0, 1.0, [0, 0]], [16, 2.0, [1, 1]]], "eval_win_rate": None,
               "next_eval": 20}
    older.on_load_checkpoint(None, None, {"fop_run": old_run})
    assert older.history == [(0, 1.0, [0, 0]), (16, 2.0, [1, 1])] and older.next_eval == 20


@pytest.mark.parametrize("kwargs, match", [
    ({"episodes": 0, "max_steps": 1}, "episodes must be >= 1"),
    ({"episodes": 2, "max_steps": 1, "interval": -5}, "interval must be >= 0"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GreedyEvaluation(lambda n: None, **kwargs)


def test_updates_per_episode_take_the_most_any_rank_asks_for():
    """Under DDP every rank must run the same updates (each backward is a collective): the count of
    ended episodes is the largest over the ranks (here a second rank reports 5)."""
    from types import SimpleNamespace

    import torch
    from tensordict import TensorDict

    module = _module()
    module.collect.updates_per_batch, module.collect.updates_per_episode = 1, 2
    done = torch.tensor([[True, False], [False, True]])[..., None]  # 2 episodes end in this rank's batch
    batch = TensorDict({"next": {"done": done}}, [2, 2])
    module._trainer = SimpleNamespace(world_size=1)
    assert module.updates_for(batch) == 1 + 2 * 2
    module._trainer = SimpleNamespace(world_size=2)
    module.all_gather = lambda episodes: torch.stack([episodes, torch.tensor(5)])
    assert module.updates_for(batch) == 1 + 2 * 5
