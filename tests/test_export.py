"""fop_modules.export and recipes/export.py: each agent's exported greedy actor (ONNX run by
onnxruntime, TorchScript) picks the same actions as the team's TorchRL policy on 100
observations, for every kind of actor the recipe trains; the GRU step also returns the same
hidden state."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from torchrl.envs import ExplorationType, set_exploration_type

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
import export  # noqa: E402  (recipes/export.py)
import train  # noqa: E402

from fop_modules.export import AgentPolicy, export_actor  # noqa: E402
from fop_modules.recurrent import HIDDEN_KEY, IS_INIT_KEY, LAST_ACTION_KEY  # noqa: E402

OBS, MASK, ACTION = ("agents", "observation"), ("agents", "action_mask"), ("agents", "action")
SAMPLES = 100
# (overrides, actor kind): every kind of actor the recipe trains
ACTORS = {
    "fop-discrete": ([], "discrete"),
    "fop-gru": (["algorithm.recurrent=true", "collect.sequence_length=1"], "recurrent"),
    "fop-continuous": (["+experiment=mtq"], "continuous"),
    "qmix": (["algorithm=qmix"], "qvalue"),
    "masac-discrete": (["algorithm=masac"], "discrete"),
    "maddpg": (["+experiment=mtq", "algorithm=maddpg"], "deterministic"),
}


def _policy(overrides):
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    typed = train.schema.validate(cfg)
    _, policy = train.build_module(cfg, typed, train.make_env(cfg.env, typed.algorithm))
    for p in policy.parameters():  # away from the near-constant initial outputs
        p.data.normal_(0, 0.5)
    return policy


def _inputs(agent: AgentPolicy, generator: torch.Generator) -> TensorDict:
    """SAMPLES joint observations (and masks with at least one available action)."""
    td = TensorDict({OBS: torch.randn(SAMPLES, agent.n_agents, agent.obs_dim, generator=generator) * 2}, [SAMPLES])
    if agent.masked:
        mask = torch.rand(SAMPLES, agent.n_agents, agent.n_actions, generator=generator) > 0.4
        mask[..., 0] |= ~mask.any(-1)
        td[MASK] = mask
    return td


def _runner(agent: AgentPolicy, fmt: str, tmp_path: Path):
    """Calls the exported file: (inputs as tensors) -> outputs as tensors."""
    path = export_actor(agent, tmp_path / f"actor.{fmt}", fmt)
    if fmt == "torchscript":
        scripted = torch.jit.load(str(path))
        return lambda *inputs: [t.detach() for t in scripted(*inputs)]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    assert names == agent.input_names
    return lambda *inputs: [torch.from_numpy(o) for o in session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})]


def _needs(fmt: str) -> None:
    if fmt == "onnx":
        for package in ("onnx", "onnxscript", "onnxruntime"):
            if importlib.util.find_spec(package) is None:
                pytest.skip(f"ONNX export and its check need {package}: pip install -e '.[export]'")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", list(ACTORS))
def test_exported_actor_picks_the_policys_actions(name, fmt, tmp_path):
    _needs(fmt)
    overrides, kind = ACTORS[name]
    torch.manual_seed(0)
    policy = _policy(overrides)
    agent = AgentPolicy(policy)
    assert agent.kind == kind
    run = _runner(agent, fmt, tmp_path)
    td = _inputs(agent, torch.Generator().manual_seed(1))
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        if kind != "recurrent":
            expected = policy(td.clone())[ACTION]  # [S, N] or [S, N, d]
            for i in range(agent.n_agents):
                inputs = [td[OBS][:, i], torch.full((SAMPLES,), i)] + ([td[MASK][:, i]] if agent.masked else [])
                action = run(*inputs)[0]
                if kind in ("continuous", "deterministic"):
                    torch.testing.assert_close(action, expected[:, i], rtol=1e-5, atol=1e-5)
                else:
                    assert torch.equal(action, expected[:, i]), f"agent {i}"
            return
        # the GRU: 100 steps of one team (4 games side by side), hidden state carried both ways
        games, n, hidden = 4, agent.n_agents, agent.encoder.hidden
        steps = td.reshape(SAMPLES // games, games)
        h_team = torch.zeros(games, n, hidden)
        h_agents = torch.zeros(games, n, hidden)
        last = torch.zeros(games, n, agent.n_actions)
        for t in range(steps.shape[0]):
            step = steps[t].clone()
            step.update({HIDDEN_KEY: h_team, LAST_ACTION_KEY: last,
                         IS_INIT_KEY: torch.full((games, 1), t == 0)})
            out = policy(step)
            expected, h_team = out[ACTION], out["next", HIDDEN_KEY]
            for i in range(n):
                action, _, h_agents[:, i] = run(step[OBS][:, i], torch.full((games,), i), step[MASK][:, i],
                                                last[:, i], h_agents[:, i].clone())
                assert torch.equal(action, expected[:, i]), f"step {t}, agent {i}"
            torch.testing.assert_close(h_agents, h_team, rtol=1e-4, atol=1e-5)
            last = torch.nn.functional.one_hot(expected, agent.n_actions).float()


def test_recipe_exports_a_trained_run(tmp_path, capsys):
    _needs("onnx")
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["collect.total_frames=128", "collect.frames_per_batch=32",
                                           "collect.warmup_frames=64", "evaluation.interval=0",
                                           "trainer.enable_progress_bar=false"])
    summary = json.loads(train.train(cfg, tmp_path).read_text())
    assert export.main([str(tmp_path)]) == 0
    info = json.loads((tmp_path / "export" / "actor.onnx.json").read_text())
    assert info["actor"] == "discrete" and info["outputs"] == ["action", "probs"]
    import onnxruntime

    session = onnxruntime.InferenceSession(info["file"])
    obs = np.zeros((2, info["inputs"]["observation"]["shape"][1]), dtype=np.float32)  # the game's observation
    actions = session.run(None, {"observation": obs, "agent": np.array([0, 1]),
                                 "action_mask": np.ones((2, info["n_actions"]), dtype=bool)})[0]
    assert actions.tolist() == summary["greedy_joint_action"]
    assert "wrote" in capsys.readouterr().out


def test_a_policy_without_known_networks_is_refused():
    with pytest.raises(ValueError, match="AgentMLP or GRUEncoder"):
        AgentPolicy(torch.nn.Linear(2, 2))
