"""recipes/evaluate.py on short real runs of recipes/train.py: the checkpoint's weights come back,
greedy episodes are counted and summarised with intervals, videos of VMAS teams and SMAX battles."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
import evaluate  # noqa: E402  (recipes/evaluate.py)
import train  # noqa: E402

from fop_modules.envs import MatrixGameEnv  # noqa: E402
from fop_modules.evaluation import play_greedy  # noqa: E402
from fop_modules.probes import greedy_action  # noqa: E402

SHORT = ["collect.total_frames=256", "collect.frames_per_batch=32", "collect.warmup_frames=64",
         "evaluation.interval=0", "trainer.enable_progress_bar=false"]
VMAS = ["+experiment=mtq", "env=vmas", "env.num_envs=4", "env.max_steps=8", "collect.total_frames=200",
        "collect.frames_per_batch=100", "collect.init_random_frames=0", "collect.warmup_frames=64",
        "evaluation.interval=0", "evaluation.episodes=2", "evaluation.max_steps=8",
        "trainer.enable_progress_bar=false"]
SMAX = ["+experiment=smax_3m", "env.num_envs=4", "env.max_steps=20", "episode_limit=21",
        "collect.total_frames=168", "collect.frames_per_batch=84", "collect.warmup_frames=84",
        "collect.batch_size=2", "collect.updates_per_batch=1", "collect.updates_per_episode=0", "evaluation.interval=0",
        "evaluation.episodes=4", "evaluation.max_steps=21", "trainer.enable_progress_bar=false"]


def _train(overrides: list[str], run_dir: Path) -> dict:
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return json.loads(train.train(cfg, run_dir).read_text())


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("matrix")
    return run, _train(SHORT, run)


def _evaluate(run: Path, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "evaluation.json"
    assert evaluate.main([str(run), "--json", str(out), *args]) == 0
    return json.loads(out.read_text())


def test_the_checkpoint_weights_are_the_trained_ones(matrix_run):
    run, summary = matrix_run
    cfg, policy, make_env = evaluate.load_run(run)
    env = make_env()
    assert greedy_action(policy, env).tolist() == summary["greedy_joint_action"]
    untrained = train.build_module(cfg, train.schema.validate(cfg), env)[1]
    trained = dict(policy.named_parameters())
    assert any(not torch.equal(p, trained[name]) for name, p in untrained.named_parameters())


def test_matrix_game_greedy_return_is_the_runs_last_evaluation(matrix_run, tmp_path, capsys):
    run, summary = matrix_run
    result = _evaluate(run, tmp_path, "--episodes", "10")
    assert result["episodes"] == 10 and result["ended"] == 10  # one-step episodes
    assert result["mean_return"] == pytest.approx(summary["final_eval_return"])  # deterministic game
    assert result["return_ci95"] == pytest.approx([result["mean_return"]] * 2)  # one greedy action: no spread
    assert result["win_rate"] is None
    assert "mean return" in capsys.readouterr().out


def test_a_run_saved_by_an_older_recipe_is_evaluated(matrix_run, tmp_path):
    """Its config.yaml lacks keys added since (reward_std, probe) and names its logger as a string."""
    run, summary = matrix_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    cfg = OmegaConf.load(old / "config.yaml")
    del cfg["reward_std"], cfg["probe"]
    cfg.logger = "csv"
    OmegaConf.save(cfg, old / "config.yaml")
    assert _evaluate(old, tmp_path, "--episodes", "2")["mean_return"] == pytest.approx(summary["final_eval_return"])


@pytest.mark.parametrize("algorithm", ["qmix", "masac"])
def test_baselines_are_evaluated_too(algorithm, tmp_path):
    summary = _train([*SHORT, f"algorithm={algorithm}"], tmp_path / "run")
    result = _evaluate(tmp_path / "run", tmp_path, "--episodes", "4")
    assert result["algorithm"] == algorithm
    assert result["mean_return"] == pytest.approx(summary["final_eval_return"])


def test_batched_env_plays_as_many_rollouts_as_episodes_need():
    from fop_modules import networks

    stats = play_greedy(MatrixGameEnv(num_envs=4), networks.discrete_actor(2, 1, 3), episodes=10, max_steps=1)
    assert stats.returns.shape == (10,) and bool(stats.ended.all())


def test_a_directory_without_a_run_says_what_to_give(tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml" in err and "recipes/train.py" in err


def test_render_refuses_a_game_without_renderer(matrix_run, tmp_path, capsys):
    run, _ = matrix_run
    assert evaluate.main([str(run), "--episodes", "1", "--render", str(tmp_path / "x.gif")]) == 2
    assert "VMAS and SMAX" in capsys.readouterr().err


def _frames(path: Path) -> int:
    import imageio.v3 as iio

    return len(iio.imread(path, index=None, **({"plugin": "pyav"} if path.suffix == ".mp4" else {})))


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_vmas_team_evaluated_and_rendered(suffix, tmp_path):
    for package in ("imageio", "av"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"videos need {package}: pip install -e '.[render]'")
    _train(VMAS, tmp_path / "run")
    video = tmp_path / f"team{suffix}"
    result = _evaluate(tmp_path / "run", tmp_path, "--episodes", "3", "--render", str(video))
    assert result["episodes"] == 3 and result["ended"] == 3  # truncated after env.max_steps=8
    assert result["return_ci95"][0] <= result["mean_return"] <= result["return_ci95"][1]
    assert _frames(video) == 9  # the reset and each of the 8 steps


def test_smax_battle_evaluated_with_win_rate_and_rendered(tmp_path):
    if importlib.util.find_spec("jaxmarl") is None:
        pytest.skip("SMAX needs pip install -e '.[smax]'")
    if importlib.util.find_spec("imageio") is None:
        pytest.skip("videos need pip install -e '.[render]'")
    _train(SMAX, tmp_path / "run")
    video = tmp_path / "battle.gif"
    result = _evaluate(tmp_path / "run", tmp_path, "--episodes", "6", "--render", str(video))
    assert result["episodes"] == 6 and 0 <= result["win_rate"] <= 1
    low, high = result["win_rate_ci95"]
    assert 0 <= low <= result["win_rate"] <= high <= 1 and high - low > 0.2  # 6 battles: a wide interval
    assert _frames(video) > 21  # several frames per env step (SMAX's sub-steps)


def test_smac_stand_in_battles_are_played_one_after_another(tmp_path):
    """SMAC runs one game per process (an unbatched env): episodes are played in turn."""
    _train(["+experiment=smac_3s_vs_3z", "env.backend=fake", *SHORT, "collect.frames_per_batch=16",
            "collect.batch_size=4", "evaluation.episodes=2"], tmp_path / "run")
    result = _evaluate(tmp_path / "run", tmp_path, "--episodes", "2")
    assert result["episodes"] == 2 and 0 <= result["win_rate"] <= 1
    assert result["win_rate_ci95"][0] <= result["win_rate"] <= result["win_rate_ci95"][1]
