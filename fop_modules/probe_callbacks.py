"""Lightning callbacks that probe a finished run on one of the paper's didactic games.

An experiment selects them: the recipe instantiates ``configs/probe/<env>.yaml`` where one exists
for the run's env (``matrix_game``, ``mtq``), and ``~probe`` on the command line drops it. At the
end of training each callback reads the trained module, prints what the agents learned, draws it
beside the run's other outputs (the trainer's ``default_root_dir``) and keeps JSON-ready numbers
in :attr:`GameProbe.summary`, which recipes/train.py adds to summary.json.

Use them in your own Lightning loop the same way::

    probe = MatrixGameProbe()
    trainer = L.Trainer(..., callbacks=[probe])
    trainer.fit(module)
    probe.summary["greedy_joint_action"]

Examples:
    >>> from fop_modules.probe_callbacks import MatrixGameProbe
    >>> MatrixGameProbe().summary  # empty until a run has finished training
    {}
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torchrl.envs import EnvBase, RewardScaling, TransformedEnv

from fop_modules import plots, probes
from fop_modules.envs import DifferentialGameEnv, MatrixGameEnv
from fop_modules.evaluation import GreedyEvaluation

__all__ = ["GameProbe", "MatrixGameProbe", "DifferentialGameProbe"]


class GameProbe(L.Callback):
    """Probes the trained module once training has finished (every env frame of the run).

    A run stopped early (a stop signal; ``resume=`` continues it) is probed when it finishes;
    under DDP rank 0 probes. Subclasses name the game they read (``game``) and implement
    :meth:`probe`.
    """

    game: type[EnvBase]

    def __init__(self) -> None:
        self.summary: dict = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        env = pl_module.make_env()  # before training, not after it: a wrong game fails at once
        try:
            self.check(env)
        finally:
            env.close()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or pl_module.env_frames < pl_module.collect.total_frames:
            return
        env = pl_module.make_env()  # the training env: its reward standardisation included
        try:
            self.summary = self.probe(pl_module, env, Path(trainer.default_root_dir))
        finally:
            env.close()

    def check(self, env: EnvBase) -> None:
        """Raises TypeError unless ``env`` (or the env it transforms) is the probe's game."""
        game = env.base_env if isinstance(env, TransformedEnv) else env
        if not isinstance(game, self.game):
            raise TypeError(
                f"{type(self).__name__} reads a {self.game.__name__}, but the run's env is a "
                f"{type(game).__name__}: leave the probe out"
            )

    def probe(self, module: L.LightningModule, env: EnvBase, out_dir: Path) -> dict:
        """What ``module`` has learned on ``env``, printed, drawn under ``out_dir`` and returned."""
        raise NotImplementedError


class MatrixGameProbe(GameProbe):
    """The learned Q_i, Q_jt over every joint action and the greedy joint action (paper Table 1b)
    of a :class:`~fop_modules.envs.MatrixGameEnv` run, in the payoff's units: printed, drawn as
    ``q_tables.png`` and kept as :func:`fop_modules.probes.matrix_game_tables`' dict. Needs the
    module's ``joint_q`` (FOP, and QMIX/VDN/MASAC with MLP agents); GRU agents have no one-step
    Q table, and the probe says so and returns nothing."""

    game = MatrixGameEnv

    def probe(self, module: L.LightningModule, env: EnvBase, out_dir: Path) -> dict:
        if module.joint_q is None:
            print("note: recurrent agents have no one-step Q table: no matrix-game tables", flush=True)
            return {}
        transforms = env.transform if isinstance(env, TransformedEnv) else []
        scaling = next((t for t in transforms if isinstance(t, RewardScaling)), None)  # reward_std
        tables = probes.matrix_game_tables(module.joint_q, env, module.policy, reward_scaling=scaling)
        plots.matrix_game_tables(tables, env.payoff, out_dir / "q_tables.png")
        print(probes.format_matrix_game_tables(tables), flush=True)
        return tables


class DifferentialGameProbe(GameProbe):
    """The greedy actions and their payoff (paper Fig. 2) of a
    :class:`~fop_modules.envs.DifferentialGameEnv` run, with the global optimum: printed, kept as
    :func:`fop_modules.probes.differential_game_result`' dict, and the greedy action of every
    evaluation of the trainer's :class:`~fop_modules.evaluation.GreedyEvaluation` drawn on the
    payoff surface as ``learning_path.png`` (no path without one)."""

    game = DifferentialGameEnv
    evaluation: GreedyEvaluation | None = None  # the trainer's, found when the fit starts

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.evaluation = next((c for c in trainer.callbacks if isinstance(c, GreedyEvaluation)), None)

    def probe(self, module: L.LightningModule, env: EnvBase, out_dir: Path) -> dict:
        result = probes.differential_game_result(module.policy, env)
        if self.evaluation is not None:
            plots.differential_game_path(env, self.evaluation.history, out_dir / "learning_path.png")
        print(f"greedy actions {result['greedy_action']}, payoff {result['greedy_payoff']:.3f}", flush=True)
        return result
