"""CompactTensorStorage: what the learner samples is what the plain LazyTensorStorage gives.

Data is collected by the recipe's envs and policies (SMAC's stand-in game, SMAX when JaxMARL is
installed, the matrix game), with small collector batches and a capacity smaller than what is
written, so the buffers hold episode ends, collector-batch boundaries and a wrapped cursor.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from fop_modules.checkpointing import load_replay_state, replay_state
from fop_modules.episodes import EpisodeAssembler, mask_partial_episodes
from fop_modules.lightning import FOPLightningModule
from fop_modules.recurrent import HIDDEN_KEY
from fop_modules.replay import CompactTensorStorage, IntegerCodec, OneHotCodec, make_replay_buffer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
import train  # noqa: E402  (the recipe module)

SMAC = ["+experiment=smac_3s_vs_3z", "env.backend=fake"]
SMAX = ["+experiment=smax_3m", "env.num_envs=4"]


def _collect(overrides: list[str], frames: int, frames_per_batch: int, seed: int = 0):
    """(env, loss, batches): the recipe's env and policy, ``frames`` frames in collector batches."""
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(seed)
    config = train.schema.validate(cfg).algorithm
    env = train.make_env(cfg.env, config)
    parts = config.build(env)
    loss, policy = parts.loss, parts.policy
    env.set_seed(seed)
    collector = Collector(env, policy, frames_per_batch=frames_per_batch, total_frames=frames)
    batches = [batch.clone() for batch in collector]
    collector.shutdown()
    return env, loss, batches


@pytest.fixture(scope="module")
def smac_data():
    return _collect(SMAC, frames=1200, frames_per_batch=48)


@pytest.fixture(scope="module")
def smax_data():
    pytest.importorskip("jaxmarl")
    return _collect(SMAX, frames=1600, frames_per_batch=80)  # [4 envs, 20 steps] per batch


def _pair(capacity: int, batch_size: int, sequence_length: int | None):
    """(plain, compact) buffers with the same sampler settings and seeded generators."""
    plain = make_replay_buffer(capacity, batch_size, sequence_length, compact=False)
    compact = make_replay_buffer(capacity, batch_size, sequence_length)
    if sequence_length is None:  # transitions: the same RandomSampler over a compact storage
        compact = TensorDictReplayBuffer(storage=CompactTensorStorage(capacity), batch_size=batch_size)
    return plain, compact


def _assert_same_sample(plain, compact, seed: int, dropped=()) -> TensorDict:
    torch.manual_seed(seed)
    a = plain.sample()
    torch.manual_seed(seed)
    b = compact.sample()
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key, value in a.items(True, True):
        other = b.get(key)
        assert other.dtype == value.dtype and other.shape == value.shape, key
        if key not in dropped:
            assert torch.equal(other, value), key
    return a


def _fill(plain, compact, batches):
    for batch in batches:
        plain.extend(batch.reshape(-1))
        compact.extend(batch.reshape(-1))


def _storages_equal(plain, compact):
    n = len(plain)
    assert len(compact) == n
    rows_a, rows_b = plain.storage[torch.arange(n)], compact.storage[torch.arange(n)]
    for key, value in rows_a.items(True, True):
        if key[0] == "next" and key[1:] == (HIDDEN_KEY,) or key in (HIDDEN_KEY, "index"):
            continue
        assert torch.equal(rows_b.get(key), value), key


@pytest.mark.parametrize("data", ["smac_data", "smax_data"])
def test_slices_equal_the_plain_buffer_with_episode_ends_batch_boundaries_and_wrap(data, request):
    env, loss, batches = request.getfixturevalue(data)
    plain, compact = _pair(capacity=500, batch_size=6, sequence_length=60)  # wraps: > 500 frames written
    _fill(plain, compact, batches)
    assert plain.storage._is_full and compact.storage._is_full
    written = sum(b.numel() for b in batches)
    assert written > 2 * 500
    # the data has what the successor rule must get right
    done = torch.cat([b.get(("next", "done")).reshape(-1) for b in batches])
    assert done.any() and len(batches) >= 20  # episode ends and collector-batch boundaries
    # a batch is [*envs, T], time last: reshape(-1) writes each env's steps one after another
    for batch in batches:
        ended = batch.get(("next", "done"))[..., :-1, 0]
        carried = batch.get(("next", "agents", "observation"))[..., :-1, :, :][~ended]
        assert torch.equal(carried, batch.get(("agents", "observation"))[..., 1:, :, :][~ended])
    _storages_equal(plain, compact)
    padded = False
    for seed in range(8):
        sample = _assert_same_sample(plain, compact, seed, dropped={HIDDEN_KEY, ("next", HIDDEN_KEY)})
        # dropping HIDDEN_KEY is exact since the learner masks every slice that does not start an
        # episode (tests/test_episodes.py); the episode starts come through the sampler unchanged
        stored = plain.storage[sample.get("index").reshape(-1)].get("is_init")
        assert torch.equal(sample.get("is_init"), stored)
        padded |= not sample.get(("collector", "mask"), torch.ones(1, dtype=torch.bool)).all()
    assert padded  # some slices were shorter than 60 steps, padded and masked alike
    # a fraction of rows keep their "next" in the side table: ends, batch boundaries, the wrap
    assert 0 < compact.storage.side_rows < 500 / 4


def test_the_loss_is_unchanged_on_compact_slices(smac_data):
    """As the learner replays: whole episodes written, slices that do not start one masked."""
    env, loss, batches = smac_data
    plain, compact = _pair(capacity=700, batch_size=4, sequence_length=150)
    assembler = EpisodeAssembler()
    _fill(plain, compact, [episodes for b in batches if (episodes := assembler(b)) is not None])
    outputs = []
    for buffer in (plain, compact):
        torch.manual_seed(3)
        sample = mask_partial_episodes(buffer.sample().reshape(4, 150))
        torch.manual_seed(4)
        outputs.append(loss(sample))
    for key, value in outputs[0].items():
        assert torch.equal(outputs[1][key], value), key


def test_transitions_equal_the_plain_buffer_on_the_matrix_game():
    env, loss, batches = _collect(["+experiment=matrix_game"], frames=320, frames_per_batch=32)
    plain, compact = _pair(capacity=100, batch_size=16, sequence_length=None)
    _fill(plain, compact, batches)
    _storages_equal(plain, compact)
    for seed in range(3):
        _assert_same_sample(plain, compact, seed)


def test_stores_each_step_once_in_narrow_dtypes(smac_data):
    env, loss, batches = smac_data
    buffer = make_replay_buffer(2000, 4, 30)
    for batch in batches:
        buffer.extend(batch.reshape(-1))
    columns = buffer.storage[:]  # the stored columns
    keys = set(columns.keys(True, True))
    assert ("next", "agents", "observation") not in keys and ("next", "state") not in keys
    assert HIDDEN_KEY not in keys and ("next", HIDDEN_KEY) not in keys
    assert columns.get(("agents", "action")).dtype == torch.uint8
    assert columns.get(("agents", "last_action")).dtype == torch.uint8
    assert columns.get(("agents", "action_mask")).dtype == torch.bool
    sizes = buffer.storage.nbytes()
    plain = make_replay_buffer(2000, 4, 30, compact=False)
    for batch in batches:
        plain.extend(batch.reshape(-1))
    plain_bytes = sum(v.nbytes for v in plain.storage._storage.values(True, True))
    assert sizes["rows"] + sizes["side"] < 0.5 * plain_bytes


def test_state_dict_round_trips_and_sampling_continues_identically(smac_data, tmp_path):
    env, loss, batches = smac_data
    buffer = make_replay_buffer(500, 4, 30)
    for batch in batches:
        buffer.extend(batch.reshape(-1))
    torch.save(replay_state(buffer), tmp_path / "replay.pt")
    copy = make_replay_buffer(500, 4, 30)
    load_replay_state(copy, torch.load(tmp_path / "replay.pt", weights_only=True))
    _storages_equal(buffer, copy)
    assert copy.storage.side_rows == buffer.storage.side_rows
    for a, b in ((buffer, copy),):  # the same rows and cursor: the same samples after more writes
        for batch in batches[:3]:
            a.extend(batch.reshape(-1))
            b.extend(batch.reshape(-1))
        _assert_same_sample(a, b, seed=0)
    # TorchRL's own buffer state_dict round-trips too
    again = make_replay_buffer(500, 4, 30)
    again.load_state_dict(buffer.state_dict())
    _assert_same_sample(buffer, again, seed=1)


def test_codecs_refuse_what_they_cannot_rebuild():
    with pytest.raises(ValueError, match="outside torch.uint8's range"):
        IntegerCodec(torch.uint8).encode("action", torch.tensor([3, 300]))
    with pytest.raises(ValueError, match="not one-hot"):
        OneHotCodec().encode("last_action", torch.tensor([[0.5, 0.5]]))
    storage = CompactTensorStorage(10)
    storage.set(torch.arange(2), TensorDict({"x": torch.zeros(2)}, [2]))
    with pytest.raises(ValueError, match="differ from the first write"):
        storage.set(torch.arange(2, 4), TensorDict({"y": torch.zeros(2)}, [2]))


def test_rows_written_in_one_call_link_only_when_next_matches_bit_for_bit():
    obs = torch.tensor([1.0, 2.0, 0.0, 4.0, 5.0])
    data = TensorDict({"o": obs[:4], ("next", "o"): torch.tensor([2.0, -0.0, 4.0, 5.0])}, [4])
    storage = CompactTensorStorage(10)
    storage.set(torch.arange(4), data)
    assert storage.side_rows == 2  # row 1 (-0.0 is not 0.0 bit for bit) and the last row
    assert torch.equal(storage[torch.arange(4)].get(("next", "o")).view(torch.int32),
                       data.get(("next", "o")).view(torch.int32))


def _stream(steps: int, ends: tuple[int, ...]) -> TensorDict:
    """One env's steps as a collector writes them: float actions, episodes ending at ``ends``."""
    obs = torch.randn(steps + 1, 3)
    done = torch.zeros(steps, 1, dtype=torch.bool)
    done[list(ends)] = True
    next_obs = obs[1:].clone()
    next_obs[done.squeeze(-1)] = torch.randn(len(ends), 3)  # the terminal observation, then a reset
    return TensorDict({"observation": obs[:-1], "action": torch.randn(steps, 2),
                       ("next", "observation"): next_obs, ("next", "done"): done,
                       ("next", "reward"): torch.randn(steps, 1)}, [steps])


def test_a_write_that_wraps_links_across_the_end_of_the_storage_and_any_index_reads_back():
    data = _stream(14, ends=(4,))
    plain, compact = LazyTensorStorage(10), CompactTensorStorage(10)
    for storage in (plain, compact):
        storage.set(torch.arange(7), data[:7])
        storage.set(torch.arange(7, 14) % 10, data[7:])  # slots 7, 8, 9, 0, 1, 2, 3
    # side rows: the episode end (row 4), the last row of each write (6, 13); row 9 (slot 9) is
    # linked to row 10 (slot 0) across the wrap
    assert compact.side_rows == 3
    assert compact._storage.get("_side_slot")[9] == -1
    for index in (torch.arange(10), torch.tensor([9, 0, 3]), 9, -1, torch.arange(10) % 2 == 0,
                  torch.tensor([[1, 2], [9, 0]])):
        a, b = plain[index], compact[index]
        assert a.shape == b.shape
        for key, value in a.items(True, True):
            assert torch.equal(b.get(key), value), (index, key)
    assert compact[:].get("action").dtype == torch.float32  # continuous actions: no uint8 codec


def test_single_rows_added_one_at_a_time_read_back():
    data = _stream(6, ends=(2,))
    plain = TensorDictReplayBuffer(storage=LazyTensorStorage(4), batch_size=2)
    compact = TensorDictReplayBuffer(storage=CompactTensorStorage(4), batch_size=2)
    for buffer in (plain, compact):
        buffer.extend(data[:1])
        for row in data[1:]:
            buffer.add(row.clone())
    assert compact.storage.side_rows == 4  # every row written alone keeps its own "next"
    a, b = plain[:4], compact[:4]
    for key in ("observation", ("next", "observation"), ("next", "done"), "action"):
        assert torch.equal(b.get(key), a.get(key)), key


def test_a_smac_run_checkpoints_its_compact_replay_and_resumes_with_it(tmp_path, monkeypatch):
    short = ["collect.frames_per_batch=16", "collect.batch_size=2", "collect.warmup_frames=64",
             "evaluation.interval=0", "evaluation.episodes=1",
             "evaluation.max_steps=5", "trainer.enable_progress_bar=false", "checkpoint.every_frames=192",
             "collect.total_frames=320"]
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*SMAC, *short])
    step = FOPLightningModule.training_step

    def crash_after_the_checkpoint(self, batch, batch_idx):
        if self.env_frames >= 208:
            raise RuntimeError("crash")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(FOPLightningModule, "training_step", crash_after_the_checkpoint)
    with pytest.raises(RuntimeError, match="crash"):
        train.train(cfg, tmp_path)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt")["fop_run"]["replay"][0]["data"]
    assert 0 < saved["_len"] <= 192 and saved["side"] is not None  # the episodes ended by then
    monkeypatch.setattr(FOPLightningModule, "training_step", step)
    cfg.resume = str(tmp_path)
    train.train(cfg, tmp_path)  # the buffer comes back from the checkpoint, then grows
    final = torch.load(tmp_path / "checkpoints" / "last.ckpt")["fop_run"]["replay"][0]["data"]
    assert final["_len"] > saved["_len"]
    rows_a, rows_b = (TensorDict().load_state_dict(d["rows"], strict=False) for d in (saved, final))
    for key, value in rows_a.items(True, True):  # the restored rows are kept as they were
        assert torch.equal(rows_b.get(key)[: saved["_len"]], value), key
