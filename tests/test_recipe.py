"""The Hydra recipe: every config composes, each game runs end to end (bad input: test_bad_input.py).

The full reproductions (5 seeds of the paper's settings) are marked ``slow``:
``python -m pytest -m slow tests/test_recipe.py``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
import train  # noqa: E402  (the recipe module)

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
# FOP and its presets (the baselines apply to some envs only: tests/test_baselines.py)
ALGORITHMS = sorted(p.stem for p in (ROOT / "configs" / "algorithm").glob("fop*.yaml"))
TEMPERATURES = sorted(p.stem for p in (ROOT / "configs" / "temperature").glob("*.yaml"))
# A few hundred frames: enough for updates, evaluations, summary.json and the plots.
SHORT = [
    "collect.total_frames=256", "collect.frames_per_batch=32", "collect.warmup_frames=64",
    "evaluation.interval=128", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
]

# SMAC experiments run on the stand-in game here, with few, short evaluations and small batches.
SMAC_SHORT = ["env.backend=fake", "collect.batch_size=4", "evaluation.episodes=2",
              "collect.frames_per_batch=16", "collect.updates_per_batch=1"]
# SMAX replays whole episodes (up to 101 steps): 2 games play 128 steps each, so episodes end.
SMAX_SHORT = ["env.num_envs=2"]
# VMAS presets (BenchMARL's 6000-frame iterations, 1000 updates of 128) scaled down the same way.
VMAS_SHORT = ["env.num_envs=4", "collect.batch_size=32", "collect.updates_per_batch=2",
              "evaluation.episodes=2", "evaluation.max_steps=10"]


def _short(experiment: str) -> list[str]:
    extra = {"smac": SMAC_SHORT, "smax": SMAX_SHORT, "vmas": VMAS_SHORT}.get(experiment.split("_")[0], [])
    return SHORT + extra


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_experiment_and_algorithm_composes_validates_and_builds(experiment, algorithm):
    learned_alpha = ["~temperature"] if algorithm == "fop_paper" else []  # the paper's dual alpha
    cfg = _compose([f"+experiment={experiment}", f"algorithm={algorithm}", *learned_alpha, *_short(experiment)])
    config = train.schema.validate(cfg).algorithm
    env = train.make_env(cfg.env, config)
    assert config.build(env).loss.n_agents == env.n_agents


@pytest.mark.parametrize(("experiment", "limit"), [("smac_mmm", 120), ("smac_mmm2", 200), ("smac_2c_vs_64zg", 300),
                                                ("smax_3m", 80), ("smax_5m_vs_6m", 120)])
def test_replay_and_warmup_sizes_follow_the_episode_limit(experiment, limit):
    """The authors' 5000 episodes of replay and 100 of warm-up, in frames of the map's own limit
    (`${episodes:N}`): a map or an override sets `episode_limit` alone."""
    collect = _compose([f"+experiment={experiment}", f"episode_limit={limit}"]).collect
    assert (collect.buffer_size, collect.warmup_frames) == (5000 * limit, 100 * limit)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_every_temperature_config_instantiates(temperature):
    from hydra.utils import instantiate

    cfg = _compose([f"temperature={temperature}"])
    schedule = instantiate(cfg.temperature)
    assert schedule(0) >= 0 and schedule(cfg.collect.total_frames) >= 0


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_greedy_algorithm_runs_with_alpha_zero_in_every_experiment(experiment, tmp_path, capsys):
    cfg = _compose([f"+experiment={experiment}", "algorithm=fop_greedy", *_short(experiment)])
    train.train(cfg, tmp_path)
    # the temperature the experiment picks (or its learned alpha) is set aside, and the run says so
    note = next(line for line in capsys.readouterr().out.splitlines() if "algorithm.greedy=true" in line)
    assert note.startswith("note: algorithm.greedy=true: alpha = 0 for the whole run; ")
    assert ("Temperature) not used" in note) != ("learn_alpha=true not used" in note), note
    metrics = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    alpha_column = metrics[0].split(",").index("train/alpha")
    alphas = {row.split(",")[alpha_column] for row in metrics[1:]} - {""}
    assert alphas == {"0.0"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_short_run_end_to_end(experiment, tmp_path):
    cfg = _compose([f"+experiment={experiment}", *_short(experiment)])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert summary["env_frames"] == 256 and summary["updates"] > 0
    assert summary["config_name"] == experiment and summary["seed"] == 0
    plots = {"matrix_game": ["q_tables.png"], "mtq": ["learning_path.png"]}.get(experiment, [])
    for name in ("learning_curve.png", *plots, "config.yaml", "logs/metrics.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    if experiment == "matrix_game":
        assert len(summary["q_jt"]) == 3 and len(summary["greedy_joint_action"]) == 2
    elif experiment == "mtq":
        assert len(summary["greedy_action"]) == 2
    elif experiment.startswith("vmas"):
        assert "final_eval_win_rate" not in summary
    else:
        assert 0 <= summary["final_eval_win_rate"] <= 1
    lines = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    columns = ["train/loss_qvalue", "train/loss_actor", "train/alpha", "eval/return", "env_frames"]
    for column in columns + ["eval/win_rate"] * experiment.startswith("smac"):
        assert column in lines[0]
    eval_column = lines[0].split(",").index("eval/return")
    evaluations = [row for row in lines[1:] if row.split(",")[eval_column]]
    assert len(evaluations) == 2  # frames 128 and 256, whatever log_every_n_steps is


def test_policy_warmup_delays_policy_updates_not_critic_updates(tmp_path):
    cfg = _compose([*SHORT, "collect.policy_warmup_frames=160"])
    train.train(cfg, tmp_path)
    lines = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    critic = [float(r["env_frames"]) for r in rows if r.get("train/loss_qvalue")]
    actor = [float(r["env_frames"]) for r in rows if r.get("train/loss_actor")]
    assert min(critic) == 64 and min(actor) == 160  # 32-frame batches: the first at or after 160


def test_every_evaluation_is_logged_whatever_the_logging_interval(tmp_path):
    cfg = _compose([*SHORT, "trainer.log_every_n_steps=1000"])
    train.train(cfg, tmp_path)
    lines = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    eval_column = lines[0].split(",").index("eval/return")
    assert len([row for row in lines[1:] if row.split(",")[eval_column]]) == 2


def test_smac_trains_a_few_hundred_updates_on_the_stand_in_game(tmp_path):
    """The authors' SMAC pipeline (GRU actor, whole-episode replay, TD(lambda), twin critics,
    RMSprop, hard targets) for 301 updates on the fake StarCraft2Env, 3s_vs_3z."""
    cfg = _compose(["+experiment=smac_3s_vs_3z", "env.backend=fake", "collect.total_frames=3200",
                    "collect.frames_per_batch=10", "collect.updates_per_batch=1",
                    "collect.warmup_frames=200", "collect.batch_size=4", "evaluation.episodes=2",
                    "evaluation.interval=0", "trainer.enable_progress_bar=false"])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    # one update per batch once the replay holds 200 frames of whole (ended) episodes: 301 batches
    # from frame 200 on, less the few frames of the episodes still running at frame 200
    assert 290 <= summary["updates"] <= 301 and summary["env_frames"] == 3200
    assert 0 <= summary["final_eval_win_rate"] <= 1


def test_updates_per_episode_runs_one_update_per_episode_that_ends(tmp_path):
    """collect.updates_per_episode=1 with updates_per_batch=0: after each collected batch, as many
    updates as episodes ended in it (PyMARL's rate), whatever the episodes' length."""
    import lightning as L

    class Count(L.Callback):
        def __init__(self):
            self.rows = []  # (episodes ended in the batch, updates it ran), once the replay is warm

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.before = module.updates

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if len(module.buffer) >= module.collect.warmup_frames:
                self.rows.append((int(batch.get(("next", "done")).sum()), module.updates - self.before))

    count = Count()
    cfg = _compose(["+experiment=smac_3s_vs_3z", *_short("smac"), "collect.updates_per_batch=0",
                    "collect.updates_per_episode=1", "collect.total_frames=640"])
    summary = json.loads(train.train(cfg, tmp_path, callbacks=[count]).read_text())
    episodes, updates = zip(*count.rows)
    assert list(updates) == list(episodes) and sum(episodes) > 2 and 0 in episodes  # some batches end none
    assert summary["updates"] == sum(updates)


def test_recurrent_critic_runs_on_the_stand_in_game(tmp_path):
    cfg = _compose(["+experiment=smac_3s_vs_3z", "algorithm.recurrent_critic=true", *_short("smac")])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert summary["updates"] > 0 and 0 <= summary["final_eval_win_rate"] <= 1


def test_bf16_mixed_precision_autocasts_the_updates_and_plays_in_float32(tmp_path, monkeypatch):
    """trainer.precision=bf16-mixed (Lightning's plugin) runs every update under CPU autocast
    (the GRU actor's and the critics' products in bfloat16), evaluation outside it, and trains."""
    import torch
    from torchrl.envs import EnvBase

    from fop_modules.lightning import FOPLightningModule

    seen = {"update": [], "rollout": []}  # autocast on? at each update, and each evaluation's play
    for owner, method in ((FOPLightningModule, "update"), (EnvBase, "rollout")):
        original = getattr(owner, method)

        def spy(self, *args, _original=original, _seen=seen[method], **kwargs):
            _seen.append(torch.is_autocast_enabled("cpu"))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(owner, method, spy)
    cfg = _compose(["+experiment=smac_3s_vs_3z", "trainer.precision=bf16-mixed", *_short("smac")])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert summary["updates"] > 0 and all(seen["update"])
    assert seen["rollout"] and not any(seen["rollout"])
    header, *rows = [line.split(",") for line in (tmp_path / "logs" / "metrics.csv").read_text().splitlines()]
    losses = [float(row[i]) for row in rows for i, name in enumerate(header)
              if name.startswith("train/loss") and row[i]]
    assert losses and all(math.isfinite(v) for v in losses)


def test_vmas_task_runs_through_the_recipe(tmp_path):
    """Continuous FOP (the mtq experiment's settings) on VMAS navigation, time limits truncated."""
    cfg = _compose(["+experiment=mtq", "env=vmas", "env.num_envs=4", "collect.total_frames=400",
                    "collect.frames_per_batch=100", "collect.init_random_frames=0",
                    "collect.warmup_frames=64", "evaluation.interval=200", "evaluation.episodes=2",
                    "evaluation.max_steps=20", "trainer.enable_progress_bar=false"])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert summary["env_frames"] == 400 and summary["updates"] > 0


def test_smac_without_the_game_says_what_to_install(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "train.py"), "+experiment=smac_mmm",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path,
        env={"SC2PATH": str(tmp_path / "no_sc2"), "PATH": "", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    for needed in ("oxwhirl/smac", "StarCraft II 4.10", "SC2PATH", "SMAC_Maps", "backend"):
        assert needed in out.stderr, needed


def test_recurrent_actor_runs_end_to_end(tmp_path):
    """The GRU actor through the collector (hidden state carried), slice replay and the loss."""
    cfg = _compose(["algorithm.recurrent=true", "collect.sequence_length=1", *SHORT])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert summary["updates"] > 0 and len(summary["greedy_joint_action"]) == 2


def test_command_line_prints_summary_path_last(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "train.py"), *SHORT, f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.strip().splitlines()
    assert out[-1] == f"summary: {tmp_path / 'summary.json'}"
    assert any(line.startswith("greedy joint action:") for line in out)
    assert any(line.startswith("Q_1 = [") for line in out)


def test_learned_alpha_runs(tmp_path):
    cfg = _compose(["~temperature", "algorithm.learn_alpha=true", *SHORT])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert summary["updates"] > 0


def test_plot_draws_mean_and_ci_over_seeds(tmp_path):
    for seed in (0, 1):
        train.train(_compose([*SHORT, f"seed={seed}"]), tmp_path / "sweep" / f"seed{seed}")
    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "plot.py"), str(tmp_path / "sweep"),
         "--reference", "payoff of (A, A)=8", "--out", str(tmp_path / "curve.png")],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "matrix_game: 2 runs, final eval/return" in out
    assert (tmp_path / "curve.png").stat().st_size > 0


@pytest.mark.parametrize("experiment, kind", [("matrix_game", "qtables"), ("mtq", "paths")])
def test_plot_draws_one_panel_per_algorithm_of_a_didactic_sweep(experiment, kind, tmp_path):
    for algorithm in ("fop", "fop_linear"):
        for seed in (0, 1):
            cfg = _compose([f"+experiment={experiment}", f"algorithm={algorithm}", f"seed={seed}", *SHORT])
            train.train(cfg, tmp_path / "sweep" / f"{algorithm}_{seed}")
    summary = json.loads((tmp_path / "sweep" / "fop_0" / "summary.json").read_text())
    assert summary["algorithm"] == "fop" and [h[0] for h in summary["eval_history"]] == [0, 128, 256]
    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "plot.py"), str(tmp_path / "sweep"), "--kind", kind,
         "--out", str(tmp_path / "panels.png")],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "fop: 2 runs" in out and "fop_linear: 2 runs" in out
    assert (tmp_path / "panels.png").stat().st_size > 0


# ---------------------------------------------------------------------- reproductions (slow)
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_matrix_game_reaches_the_optimum(seed, tmp_path):
    """Paper Table 1b: greedy (A, A) and Q_jt(A, A) within 0.5 of 8 (10k frames, alpha 1 -> 0.01)."""
    cfg = _compose(["+experiment=matrix_game", f"seed={seed}", "trainer.enable_progress_bar=false"])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert summary["greedy_joint_action"] == [0, 0]
    assert abs(summary["q_jt"][0][0] - 8.0) < 0.5


@pytest.mark.parametrize("algorithm", ["fop", "fop_linear"])
def test_mtq_uses_the_papers_individual_temperatures(algorithm):
    """MTQ's FOP and its linear ablation take alpha_i from the paper's formula (docs/results.md:
    with alpha_i = alpha, FOP reaches (5, 5) in 4/5 seeds; with the formula in 10/10)."""
    cfg = _compose(["+experiment=mtq", f"algorithm={algorithm}", *SHORT])
    assert cfg.algorithm.individual_temperature == "paper" and cfg.algorithm.value_network
    config = train.schema.validate(cfg).algorithm
    loss = config.build(train.make_env(cfg.env, config)).loss
    assert loss.individual_temperature == "paper" and loss.num_qvalue_nets == 1


@pytest.mark.slow
def test_mtq_reaches_the_global_optimum(tmp_path):
    """Paper Fig. 2 after 20k frames (alpha_i from the paper's formula), seeds 0-4: every seed ends
    in the global optimum's basin (payoff above the local optimum's 0 at (-5, -5)), and at least 4
    within 0.5 of (5, 5). Seed 2 ends at (6.64, 5.60), oscillating about the peak (docs/results.md)."""
    ends = []
    for seed in range(5):
        cfg = _compose(["+experiment=mtq", f"seed={seed}", "trainer.enable_progress_bar=false"])
        ends.append(json.loads(train.train(cfg, tmp_path / str(seed)).read_text()))
    assert all(summary["greedy_payoff"] > 0 for summary in ends), ends
    assert sum(all(abs(u - 5.0) < 0.5 for u in summary["greedy_action"]) for summary in ends) >= 4, ends



@pytest.mark.parametrize(("experiment", "probe"), [
    ("matrix_game", "MatrixGameProbe"), ("mtq", "DifferentialGameProbe"), ("smax_3m", None), ("vmas_navigation", None),
])
def test_each_didactic_game_selects_its_probe_callback(experiment, probe):
    """configs/probe/<env>.yaml where one exists (Table 1b, Fig. 2); none for the other envs."""
    cfg = _compose([f"+experiment={experiment}"])
    assert (cfg.probe and cfg.probe._target_.rsplit(".", 1)[-1]) == probe


def test_the_probe_can_be_left_out(tmp_path):
    summary = json.loads(train.train(_compose([*SHORT, "~probe"]), tmp_path).read_text())
    assert "q_jt" not in summary and not (tmp_path / "q_tables.png").exists()
    assert summary["env_frames"] == 256


def test_a_probe_of_another_game_fails_before_training_and_says_how_to_leave_it_out(tmp_path):
    cfg = _compose(["+experiment=mtq", "probe=matrix_game", *SHORT])
    with pytest.raises(train.ConfigError, match=r"probe: MatrixGameProbe reads a MatrixGameEnv, but the run's env "
                                                r"is a DifferentialGameEnv: leave the probe out \(`~probe`\)"):
        train.train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()
