"""Whole-episode replay: every replayed step's recurrent state is the one the agent acted with.

Data comes from the recipe's recurrent FOP (GRU actor and GRU critic) on two copies of the SMAC
stand-in game played side by side (as SMAX plays its games), collected in batches much shorter
than its episodes, so nearly every episode is collected across two or more collector batches and
stored in pieces by a plain ``buffer.extend``; it is stored and sampled by the learner's own data
path (``FOPLightningModule.store`` / ``sample``).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.envs import SerialEnv

from fop_modules.episodes import EpisodeAssembler, mask_partial_episodes
from fop_modules.lightning import FOPLightningModule
from fop_modules.loop_config import CollectConfig
from fop_modules.optimisation import OptimConfig
from fop_modules.recurrent import find_encoder
from fop_modules.temperature import ConstantTemperature

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
import train  # noqa: E402  (the recipe module)

GAMES, STEPS_PER_BATCH = 2, 10  # 3s_vs_3z's stand-in battles last 40-150 steps
FRAMES_PER_BATCH = GAMES * STEPS_PER_BATCH
UID = "uid"  # a per-step id added to the collected data, to find each replayed step's acting one


@pytest.fixture(scope="module")
def collected():
    overrides = ["+experiment=smac_3s_vs_3z", "env.backend=fake", "algorithm.recurrent_critic=true"]
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(0)
    config = train.schema.validate(cfg).algorithm
    env = SerialEnv(GAMES, lambda: train.make_env(cfg.env, config))
    parts = config.build(env)
    loss, policy = parts.loss, parts.policy
    env.set_seed(0)
    collector = Collector(env, policy, frames_per_batch=FRAMES_PER_BATCH, total_frames=1200)
    batches = []
    for i, batch in enumerate(collector):  # [GAMES, STEPS_PER_BATCH]
        batch = batch.clone()
        batch[UID] = torch.arange(batch.numel()).reshape(batch.shape) + i * FRAMES_PER_BATCH
        batches.append(batch)
    collector.shutdown()
    return cfg, loss, policy, batches


def _learner(collected, buffer_size: int, batch_size: int) -> FOPLightningModule:
    """The learner's replay path for the collected data, whole episodes per slice."""
    cfg, loss, policy, _ = collected
    collect = CollectConfig(total_frames=1200, frames_per_batch=FRAMES_PER_BATCH, buffer_size=buffer_size,
                            batch_size=batch_size, warmup_frames=batch_size, sequence_length=cfg.episode_limit)
    return FOPLightningModule(loss, policy, FOPLightningModule.fop_objectives(loss), lambda: None, collect=collect,
                              optim=OptimConfig(), temperature=ConstantTemperature(0.5))


def _episodes(batches) -> dict[int, TensorDict]:
    """The collected steps of each trajectory, in order of time."""
    steps = torch.cat(batches, dim=1).reshape(-1)  # game after game, each in time order
    traj = steps["collector", "traj_ids"]
    return {int(t): steps[traj == t] for t in traj.unique()}


def _stepped_critic_embeddings(loss, episodes) -> dict[int, torch.Tensor]:
    """Twin 0's GRU critic stepped along each episode from its first step: uid -> embedding."""
    encoder = find_encoder(loss.qvalue_network)
    out = {}
    with torch.no_grad(), loss._twin(loss.qvalue_network_params, 0).to_module(loss.qvalue_network):
        for episode in episodes.values():
            hidden = torch.zeros(1, encoder.n_agents, encoder.hidden)
            for t in range(episode.numel()):
                step = episode[t : t + 1].select(*encoder.in_keys, strict=False).exclude(encoder.hidden_key)
                step.set(encoder.hidden_key, hidden)
                encoder(step)
                hidden = step.get(("next", encoder.hidden_key))
                out[int(episode[UID][t])] = step.get(encoder.embed_key)[0]
    return out


def test_episodes_collected_across_batches_replay_with_the_acting_hidden_states(collected):
    cfg, loss, policy, batches = collected
    episodes = _episodes(batches)
    lengths = {t: e.numel() for t, e in episodes.items() if bool(e["next", "done"][-1])}
    spanning = [t for t in lengths if len({int(u) // FRAMES_PER_BATCH for u in episodes[t][UID]}) >= 2]
    assert len(spanning) >= 3, "the data must hold episodes collected across collector batches"

    module = _learner(collected, buffer_size=2400, batch_size=16)
    for batch in batches:
        module.store(batch)
    actor, critic = find_encoder(loss.actor_network), find_encoder(loss.qvalue_network)
    steps = torch.cat(batches, dim=1).reshape(-1)
    acting = {int(u): e for u, e in zip(steps[UID], steps["agents", "embed"])}
    critic_stepped = _stepped_critic_embeddings(loss, episodes)

    replayed = set()
    for _ in range(4):
        sample = module.sample()
        valid = sample["collector", "mask"]
        with torch.no_grad():
            with loss.actor_network_params.to_module(loss.actor_network):
                actor_out = actor.unroll(sample, valid.sum(-1))
            with loss._twin(loss.qvalue_network_params, 0).to_module(loss.qvalue_network):
                critic_out = critic.unroll(sample, valid.sum(-1))
        uids = sample[UID][valid].tolist()
        replayed.update(int(sample["collector", "traj_ids"][b, 0]) for b in range(len(valid)) if valid[b].any())
        torch.testing.assert_close(actor_out["agents", "embed"][valid], torch.stack([acting[u] for u in uids]),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(critic_out[critic.embed_key][valid],
                                   torch.stack([critic_stepped[u] for u in uids]), atol=1e-6, rtol=0)
        # every episode replays from its first step to its last
        for b in range(len(valid)):
            if valid[b].any():
                assert int(valid[b].sum()) == lengths.get(int(sample["collector", "traj_ids"][b, 0]))
    assert replayed & set(spanning), "some replayed episodes were collected across batches"


def test_the_assembler_releases_each_episode_whole_once_it_ends():
    # two envs, 4 steps per batch; env 0: episodes 0 (6 steps), 2 (...); env 1: episode 1 (3 steps), 3 (...)
    traj = [torch.tensor([[0, 0, 0, 0], [1, 1, 1, 3]]), torch.tensor([[0, 0, 2, 2], [3, 3, 3, 3]])]
    done = [torch.tensor([[0, 0, 0, 0], [0, 0, 1, 0]]), torch.tensor([[0, 1, 0, 0], [0, 0, 0, 1]])]
    assembler, out = EpisodeAssembler(), []
    for k in range(2):
        batch = TensorDict({("collector", "traj_ids"): traj[k], ("next", "done"): done[k].bool().unsqueeze(-1),
                            "t": torch.arange(4).expand(2, 4) + 4 * k}, [2, 4])
        released = assembler(batch)
        out.append(None if released is None else (released["collector", "traj_ids"].tolist(), released["t"].tolist()))
    assert out[0] == ([1, 1, 1], [0, 1, 2])
    assert out[1] == ([0, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3], [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7])
    assert assembler.held_frames == 2  # episode 2's first two steps wait for its end
    assembler.reset()
    assert assembler.held_frames == 0


def test_slices_that_do_not_start_an_episode_are_masked():
    slices = TensorDict({"is_init": torch.tensor([[True, False, False], [False, False, False]]).unsqueeze(-1),
                         ("collector", "mask"): torch.tensor([[True, True, False], [True, True, True]])}, [2, 3])
    assert mask_partial_episodes(slices)["collector", "mask"].tolist() == [[True, True, False], [False] * 3]
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        mask_partial_episodes(slices[0])
    unpadded = slices.exclude("collector")  # no slice needed padding: the sampler wrote no mask
    assert mask_partial_episodes(unpadded)["collector", "mask"].tolist() == [[True] * 3, [False] * 3]


def test_a_slice_left_by_an_overwritten_episode_head_is_masked(collected):
    """The round-robin writer overwrites an old episode's head: its tail must not replay."""
    batches = collected[-1]
    module = _learner(collected, buffer_size=600, batch_size=4)
    for batch in batches:
        module.store(batch)
    starts_seen = False
    for _ in range(40):
        sample = module.sample()
        valid = sample["collector", "mask"]
        for b in range(len(valid)):
            if valid[b].any():
                assert bool(sample["is_init"][b, 0])
            else:
                starts_seen = True
    assert starts_seen, "the wrapped buffer should hold a partial episode that gets sampled"
