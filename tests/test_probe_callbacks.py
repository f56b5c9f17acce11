"""The didactic games' probes as Lightning callbacks, in a plain Lightning loop (the recipe's
selection of them: tests/test_recipe.py)."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest

from fop_modules import FOPLoss, FOPMixer, networks
from fop_modules.envs import DifferentialGameEnv, MatrixGameEnv
from fop_modules.lightning import FOPLightningModule
from fop_modules.loop_config import CollectConfig
from fop_modules.optimisation import OptimConfig
from fop_modules.probe_callbacks import DifferentialGameProbe, MatrixGameProbe
from fop_modules.temperature import ConstantTemperature


def _matrix_game_module(total_frames: int = 64) -> FOPLightningModule:
    loss = FOPLoss(networks.discrete_actor(2, 1, 3), networks.discrete_critic(2, 1, 3), FOPMixer(2, 1, 3),
                   action_space="discrete", num_qvalue_nets=1)
    collect = CollectConfig(total_frames=total_frames, frames_per_batch=16, batch_size=16, warmup_frames=16)
    return FOPLightningModule(loss, loss.actor_network, FOPLightningModule.fop_objectives(loss), lambda: MatrixGameEnv(num_envs=4),
                              collect=collect, optim=OptimConfig(),
                              temperature=ConstantTemperature(0.5))


def test_the_matrix_game_probe_reads_the_trained_tables_in_a_lightning_loop(tmp_path):
    probe = MatrixGameProbe()
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[probe])
    trainer.fit(_matrix_game_module())
    assert len(probe.summary["q_jt"]) == 3 and len(probe.summary["q_i"]) == 2  # 3 x 3 Q_jt, Q_i per agent
    assert probe.summary["greedy_payoff"] in MatrixGameEnv().payoff.flatten().tolist()
    assert (tmp_path / "q_tables.png").stat().st_size > 0


def test_a_run_stopped_before_its_last_frame_is_not_probed(tmp_path):
    module = _matrix_game_module(total_frames=64)
    module.env_frames = 32  # a stop signal halfway: resume= finishes it, and the probe then
    probe = MatrixGameProbe()
    probe.on_train_end(SimpleNamespace(is_global_zero=True, default_root_dir=tmp_path), module)
    assert probe.summary == {} and not (tmp_path / "q_tables.png").exists()


def test_a_probe_refuses_another_game_before_training():
    with pytest.raises(TypeError, match="DifferentialGameProbe reads a DifferentialGameEnv, but the run's env is a "
                                        "MatrixGameEnv: leave the probe out"):
        DifferentialGameProbe().setup(None, _matrix_game_module(), "fit")
    DifferentialGameProbe().check(DifferentialGameEnv())  # its own game passes
