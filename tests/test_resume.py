"""Crash and resume: a run killed with SIGKILL and resumed equals the uninterrupted run; a
checkpoint is never half-written; a nan/inf loss stops the run or skips the step.

What is bit-identical after a resume on CPU, and why (the kill test below checks all of it on the
matrix game): every logged loss, alpha, entropy and reward after the checkpoint, the final
parameters (networks, targets, mixer), optimiser states, replay buffer and summary.json. The
checkpoint holds every piece of state the next batch reads: the module and optimisers
(Lightning), the collector's frame counters (Lightning saves stateful dataloaders), the env-frame
and update counters, evaluations and replay buffer (``FOPLightningModule.on_save_checkpoint``),
and the generator states (``RNGCheckpoint``). The one-step games hold no state between batches
(every env is reset after each step), so the collector's next batch is drawn exactly as it would
have been.

Not bit-identical: the frames collected after the last checkpoint and before the kill (they are
collected again, identically here); rows logged then (kept in metrics.before_resume_1.csv, and
for TensorBoard in events.out.before_resume_1.*); wall times. On multi-step envs the episodes in flight at the checkpoint restart from a reset
(the collector's carried env state and a recurrent actor's hidden state are not saved; envs are
re-seeded with seed + env_frames), so the resumed run is a valid continuation but not the same
numbers. Multi-process collectors keep their workers' generators in the workers (not saved).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fop_modules.checkpointing import AtomicCheckpointIO
from fop_modules.loss import FOPLoss

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
import train  # noqa: E402  (the recipe module)

# ~3k frames of the matrix game: a checkpoint every 480, logged every step
RUN = ["collect.total_frames=3008", "checkpoint.every_frames=480", "trainer.log_every_n_steps=1",
       "trainer.enable_progress_bar=false", "evaluation.interval=1000"]
LOSSES = ("train/loss_qvalue", "train/loss_actor", "train/entropy", "train/alpha", "train/reward_per_frame")


@pytest.fixture(autouse=True)
def _sigint_as_in_a_terminal():
    """The recipe runs started here get Ctrl-C's default disposition, as in a terminal. A run that
    starts with SIGINT ignored keeps ignoring it (as ``nohup`` and background jobs ask), and pytest
    inherits it ignored when CI runs in the background. A Python handler in this process (unlike
    an ignored signal) is reset to the default in a child at ``exec``."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def _recipe(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "recipes" / "train.py"), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """Training rows of a metrics.csv by (step, env_frames)."""
    with path.open() as f:
        return {(r["step"], r["env_frames"]): {k: r[k] for k in LOSSES}
                for r in csv.DictReader(f) if r["train/loss_qvalue"]}


def _flat(tree, prefix=""):
    """Tensors and plain values of a nested checkpoint entry, by dotted path."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flat(value, f"{prefix}{key}.")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _flat(value, f"{prefix}{i}.")
    else:
        yield prefix, tree


def _same(a, b) -> list[str]:
    """Paths where two checkpoint entries differ (tensors compared bit for bit)."""
    fa, fb = dict(_flat(a)), dict(_flat(b))
    assert fa.keys() == fb.keys()
    return [k for k in fa if not (torch.equal(fa[k], fb[k]) if isinstance(fa[k], torch.Tensor) else fa[k] == fb[k])]


def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = _recipe(*RUN, f"hydra.run.dir={whole}")
    run = _recipe(*RUN, f"hydra.run.dir={killed}")
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "last.ckpt").exists():  # the first checkpoint, 480 frames in
        assert run.poll() is None and time.monotonic() < deadline, run.stdout.read()
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.5))  # an arbitrary later step (well before the run ends)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL, "the run ended before the kill: lengthen RUN"
    saved_frames = torch.load(killed / "checkpoints" / "last.ckpt")["fop_run"]["env_frames"]
    assert 0 < saved_frames < 3008

    resumed = _recipe(f"resume={killed}")
    out, ref_out = resumed.communicate(timeout=300)[0], reference.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert reference.returncode == 0, ref_out

    # metrics.csv holds the whole history: the rows up to the checkpoint (kept from the killed
    # part), then the resumed part's, every one equal to the uninterrupted run's row, bit for bit
    after, ref = _rows(killed / "logs" / "metrics.csv"), _rows(whole / "logs" / "metrics.csv")
    assert after == {k: ref[k] for k in after}
    assert after.keys() == ref.keys()  # every row, the checkpoint batch's too (a kill -9 can land
    # before that row reaches the disk: the checkpoint holds it)
    assert (killed / "logs" / "metrics.before_resume_1.csv").is_file()

    # the end-of-training checkpoints: parameters, targets, optimisers, counters, replay
    a, b = (torch.load(d / "checkpoints" / "last.ckpt") for d in (whole, killed))
    assert a["fop_run"]["env_frames"] == b["fop_run"]["env_frames"] == 3008
    assert _same(a["state_dict"], b["state_dict"]) == []
    assert _same(a["optimizer_states"], b["optimizer_states"]) == []
    (replay_a,), (replay_b,) = a["fop_run"].pop("replay"), b["fop_run"].pop("replay")  # one rank
    assert _same(a["fop_run"], b["fop_run"]) == []
    data_a, data_b = (dict(_flat(dict(r["data"]))) for r in (replay_a, replay_b))
    assert len(data_a["state."]) == len(data_b["state."]) == 3008
    assert _same(replay_a["writer"], replay_b["writer"]) == []
    ids = "collector.traj_ids."  # state_dict keys are dotted paths
    assert _same({k: v for k, v in data_a.items() if k != ids}, {k: v for k, v in data_b.items() if k != ids}) == []
    # trajectory ids are labels: the resumed collector starts its 16 envs on new trajectories,
    # so every id from the resume point on is 16 (num_envs) larger; the data they label is equal
    offset = data_b[ids] - data_a[ids]
    assert set(offset[:saved_frames].tolist()) == {0} and set(offset[saved_frames:].tolist()) == {16}
    summaries = [json.loads((d / "summary.json").read_text()) for d in (whole, killed)]
    for s in summaries:
        s.pop("wall_time_s")
    assert summaries[0] == summaries[1]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


SHORT = ["collect.total_frames=256", "collect.frames_per_batch=32", "evaluation.interval=128",
         "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "checkpoint.every_frames=128"]


def test_checkpoints_hold_the_run_state_and_can_leave_out_the_replay(tmp_path):
    train.train(_compose(SHORT), tmp_path / "with")
    train.train(_compose([*SHORT, "checkpoint.replay_buffer=false"]), tmp_path / "without")
    with_replay = torch.load(tmp_path / "with" / "checkpoints" / "last.ckpt")
    without = torch.load(tmp_path / "without" / "checkpoints" / "last.ckpt")
    assert with_replay["fop_run"]["env_frames"] == 256 and with_replay["fop_run"]["updates"] > 0
    assert len(with_replay["fop_run"]["replay"][0]["data"]["state"]) == 256  # every frame collected, no more
    assert without["fop_run"]["replay"] is None
    assert len(with_replay["rng_states"]) == 1 and "torch" in with_replay["rng_states"][0]
    assert with_replay["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["frames"] == 256  # collector
    assert sorted(p.name for p in (tmp_path / "with" / "checkpoints").iterdir()) == ["last.ckpt", "last.previous.ckpt"]


def test_resume_refuses_other_overrides_and_needs_a_checkpoint(tmp_path):
    cfg = _compose([*SHORT, "checkpoint.every_frames=0", f"resume={tmp_path}"])
    with pytest.raises(ValueError, match="no checkpoint"):
        train.train(cfg, tmp_path)
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    with pytest.raises(ValueError, match=r"drop the other overrides \['seed=3'\]"):
        train.resumed_config(cfg, [f"resume={tmp_path}", "seed=3", "hydra.run.dir=x"])


def test_a_run_saved_before_a_key_existed_resumes_as_it_trained(tmp_path):
    """A run saved before `reward_std` existed trained on raw rewards; resume used to fail with
    `Missing key reward_std`. One saved before the probe callbacks had none; one saved before the
    logger group named its logger (`logger: tensorboard`); one saved before the evaluation
    callback held its settings in `collect.eval_*`."""
    cfg = OmegaConf.create(OmegaConf.to_container(_compose([*SHORT, "checkpoint.every_frames=0"])))
    del cfg["reward_std"], cfg["probe"]  # a config.yaml written before the keys existed
    cfg.logger = "tensorboard"
    evaluation = cfg.pop("evaluation")
    cfg.collect.update(eval_interval=evaluation.interval, eval_envs=3, eval_max_steps=evaluation.max_steps)
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    resumed = train.resumed_config(OmegaConf.create({"resume": str(tmp_path)}), [f"resume={tmp_path}"])
    assert resumed.reward_std is None and resumed.probe is None  # as that run trained
    assert resumed.logger._target_ == "lightning.pytorch.loggers.TensorBoardLogger"
    assert resumed.evaluation == {**evaluation, "episodes": 3} and "eval_envs" not in resumed.collect
    assert train.schema.validate(resumed) is not None


@pytest.mark.parametrize("saved, scaling", [({"raw_world_state": False}, "cooldowns"),
                                            ({"raw_world_state": True}, "jaxmarl"), ({}, "jaxmarl")])
def test_a_smax_run_resumes_on_the_state_it_trained_on(tmp_path, saved, scaling):
    """SMAX runs saved before env.world_state: with raw_world_state=false (cooldowns scaled,
    positions in map units), =true or before that key (JaxMARL's state) resume on that state."""
    cfg = OmegaConf.create(OmegaConf.to_container(_compose(["+experiment=smax_3m"])))
    del cfg.env["world_state"]
    cfg.env.update(saved)
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    resumed = train.saved_config(tmp_path)
    assert resumed.env.world_state == scaling and "raw_world_state" not in resumed.env


@pytest.mark.parametrize("algorithm", ["fop", "qmix"])
def test_a_run_saved_before_algorithms_held_their_rates_resumes_at_them(tmp_path, algorithm):
    """FOP's rates were `optim.lr_*` (the baselines never read them) and QMIX's/VDN's was
    `algorithm.lr`: a saved run resumes with them as `algorithm.lr_*`, at the same values."""
    cfg = OmegaConf.create(OmegaConf.to_container(_compose(["+experiment=smax_3m", f"algorithm={algorithm}"])))
    old_fop_rates = {"lr_qvalue": 1e-4, "lr_mixer": None, "lr_value": 2e-4, "lr_actor": 3e-4, "lr_alpha": 4e-4}
    for key in train.FOP_RATES:
        cfg.algorithm.pop(key, None)
    cfg.optim.update(old_fop_rates)
    if algorithm == "qmix":
        cfg.algorithm.lr = 7e-4
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    resumed = train.saved_config(tmp_path)
    assert not set(train.FOP_RATES) & set(resumed.optim)
    typed = train.schema.validate(resumed).algorithm
    if algorithm == "fop":
        assert typed.rates == old_fop_rates
    else:
        assert typed.lr_qvalue == 7e-4 and "lr" not in resumed.algorithm


@pytest.mark.parametrize("experiment, old_optim", [
    ("smax_3m", {"name": "rmsprop", "rmsprop_alpha": 0.99, "eps": 1e-5, "target_update": "hard", "tau": 0.01,
                 "hard_update_interval": 200}),
    ("vmas_navigation", {"name": "adam", "rmsprop_alpha": 0.99, "eps": 1e-6, "target_update": "soft", "tau": 0.005,
                         "hard_update_interval": 200})])
def test_a_run_saved_before_the_optimiser_groups_resumes_with_the_same_optimiser(tmp_path, experiment, old_optim):
    """`optim.name`, `eps`, `rmsprop_alpha`, `target_update: soft|hard`, `tau` and
    `hard_update_interval` of an older run become the optim/optimizer and optim/target_update
    nodes that build the same optimiser and target update as the experiment composes today."""
    cfg = OmegaConf.create(OmegaConf.to_container(_compose([f"+experiment={experiment}"])))
    composed = OmegaConf.to_container(cfg.optim)
    cfg.optim = {"grad_clip": cfg.optim.grad_clip, "on_nonfinite": cfg.optim.on_nonfinite, **old_optim}
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    resumed = OmegaConf.to_container(train.saved_config(tmp_path).optim)
    assert resumed == composed


def test_a_write_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    def dies_midway(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # what a kill looks like from inside the write

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(io.load_checkpoint(path)["step"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def _nan_qvalue_loss_from(call: int, monkeypatch):
    """FOPLoss.qvalue_loss returns nan from its ``call``-th call on."""
    original, calls = FOPLoss.qvalue_loss, [0]

    def patched(self, td):
        loss, meta = original(self, td)
        calls[0] += 1
        return (loss * float("nan") if calls[0] >= call else loss), meta

    monkeypatch.setattr(FOPLoss, "qvalue_loss", patched)


def test_a_nan_loss_stops_the_run_naming_the_objective_and_the_step(tmp_path, monkeypatch):
    _nan_qvalue_loss_from(5, monkeypatch)
    with pytest.raises(FloatingPointError, match=r"loss_qvalue is nan .* at env frame \d+ \(update 4\)"):
        train.train(_compose(SHORT), tmp_path)


def test_a_nan_loss_skips_the_step_when_asked(tmp_path, monkeypatch):
    _nan_qvalue_loss_from(5, monkeypatch)
    with pytest.warns(UserWarning, match="loss_qvalue is nan .* skipped this optimiser step"):
        train.train(_compose([*SHORT, "optim.on_nonfinite=skip"]), tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt")
    updates = ckpt["fop_run"]["updates"]
    assert ckpt["fop_run"]["nonfinite_skips"] == updates - 4  # every critic step from the 5th on
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


# ============================================================================ interrupts: signals and kills
# A short run interrupted at random moments, by SIGINT (Ctrl-C), SIGTERM (a scheduler's preemption
# notice) and SIGKILL, resumed after each, must end as the uninterrupted run: same parameters,
# optimisers, counters, replay data, summary, and one continuous metrics history.

FAULT_RUN = ["collect.total_frames=1600", "checkpoint.every_frames=160", "trainer.log_every_n_steps=1",
             "trainer.enable_progress_bar=false", "evaluation.interval=160"]


def _wait_for_new_checkpoint(run: subprocess.Popen, ckpt: Path, after: float, deadline: float) -> bool:
    """Waits until ``run`` writes a checkpoint newer than ``after`` (False: the run ended first)."""
    while not (ckpt.exists() and ckpt.stat().st_mtime_ns > after):
        if run.poll() is not None:
            return False
        assert time.monotonic() < deadline, "no checkpoint within the deadline"
        time.sleep(0.02)
    return True


def _interrupted_run(run_dir: Path, faults: list[signal.Signals], rng: random.Random) -> list[tuple]:
    """Runs FAULT_RUN in ``run_dir``; each process is hit by the next fault at a random moment of the
    checkpoint interval after its first checkpoint, then resumed. Returns (fault, exit code,
    checkpoint frames) per fault that landed before the run ended.

    The moment is a uniform fraction of one checkpoint interval as the first process measured it
    (the shorter of the gaps between its first three checkpoints: the first gap can hold one-time
    costs), so that each fault lands inside the run however fast this machine trains, with about
    ten intervals to spare for three faults."""
    ckpt, landed, interval, gaps = run_dir / "checkpoints" / "last.ckpt", [], None, []
    args = [*FAULT_RUN, f"hydra.run.dir={run_dir}"]
    for fault in faults:
        before = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
        run = _recipe(*args)
        if not _wait_for_new_checkpoint(run, ckpt, before, time.monotonic() + 120):
            assert run.returncode == 0, run.stdout.read()
            return landed  # finished before the fault
        if interval is None:  # the shorter of two intervals: the first can hold one-time costs
            gaps = []
            for _ in range(2):
                last = ckpt.stat().st_mtime_ns
                assert _wait_for_new_checkpoint(run, ckpt, last, time.monotonic() + 120), run.stdout.read()
                gaps.append((ckpt.stat().st_mtime_ns - last) / 1e9)
            interval = min(gaps)
        delay = rng.uniform(0.0, interval)
        time.sleep(delay)
        run.send_signal(fault)
        out = run.communicate(timeout=120)[0]
        if run.returncode == 0:  # the fault came after the last batch
            print(f"{fault.name} after {delay:.2f} s (checkpoint intervals {gaps} s) came after the last batch")
            return landed
        frames = torch.load(ckpt)["fop_run"]["env_frames"]
        landed.append((fault, run.returncode, frames))
        if fault == signal.SIGKILL:
            assert run.returncode == -signal.SIGKILL
        else:  # a clean stop: exit code 128 + signal, one line saying how to continue, no traceback
            assert run.returncode == 128 + fault, out
            assert "Traceback" not in out, out
            assert f"stopped: {fault.name} at env frame {frames} of 1600: saved {ckpt}" in out, out
            assert f"resume={run_dir}" in out.splitlines()[-1]
        args = [f"resume={run_dir}"]
    run = _recipe(*args)
    out = run.communicate(timeout=300)[0]
    assert run.returncode == 0, out
    return landed


def _eval_rows(path: Path) -> dict[str, str]:
    with path.open() as f:
        return {r["env_frames"]: r["eval/return"] for r in csv.DictReader(f) if r["eval/return"]}


def _assert_same_run(whole: Path, resumed: Path) -> None:
    a, b = (torch.load(d / "checkpoints" / "last.ckpt") for d in (whole, resumed))
    assert a["fop_run"]["env_frames"] == b["fop_run"]["env_frames"] == 1600
    assert _same(a["state_dict"], b["state_dict"]) == []
    assert _same(a["optimizer_states"], b["optimizer_states"]) == []
    (replay_a,), (replay_b,) = a["fop_run"].pop("replay"), b["fop_run"].pop("replay")
    assert _same(a["fop_run"], b["fop_run"]) == []
    ids = "collector.traj_ids."  # labels: each resume starts its envs on new trajectory ids
    data_a, data_b = ({k: v for k, v in _flat(dict(r["data"])) if k != ids} for r in (replay_a, replay_b))
    assert _same(data_a, data_b) == []
    summaries = [json.loads((d / "summary.json").read_text()) for d in (whole, resumed)]
    for summary in summaries:
        summary.pop("wall_time_s")
    assert summaries[0] == summaries[1]
    # one continuous history: every training row equals the uninterrupted run's, none missing
    assert _rows(resumed / "logs" / "metrics.csv") == _rows(whole / "logs" / "metrics.csv")
    assert _eval_rows(resumed / "logs" / "metrics.csv") == _eval_rows(whole / "logs" / "metrics.csv")


def _fault_injection(tmp_path, faults: list[signal.Signals], seed: int) -> None:
    whole = tmp_path / "whole"
    reference = _recipe(*FAULT_RUN, f"hydra.run.dir={whole}")
    landed = _interrupted_run(tmp_path / "interrupted", faults, random.Random(seed))
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    assert len(landed) == len(faults), f"seed {seed}: only {landed} landed: lengthen FAULT_RUN"
    _assert_same_run(whole, tmp_path / "interrupted")


def test_signals_and_kills_at_random_moments_resume_to_the_uninterrupted_run(tmp_path):
    seed = random.randrange(10**6)
    _fault_injection(tmp_path, [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], seed)


# the recipe, sent `fault` by itself right after EnvFrameCheckpoint's `hook` ran: `setup` is before
# the training loop, `on_train_end` after its last batch (the run then writes its outputs)
SIGNALLED_AFTER = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever pytest inherited
from fop_modules.checkpointing import EnvFrameCheckpoint
hook = EnvFrameCheckpoint.{hook}
def hook_then_signal(self, *args, **kwargs):
    hook(self, *args, **kwargs)
    os.kill(os.getpid(), signal.{fault})
EnvFrameCheckpoint.{hook} = hook_then_signal
sys.path.insert(0, {recipes!r})
sys.argv[0] = os.path.join({recipes!r}, "train.py")
import train
train.main()
"""


def _signalled_after(hook: str, fault: signal.Signals, *args: str) -> subprocess.CompletedProcess:
    code = SIGNALLED_AFTER.format(hook=hook, fault=fault.name, recipes=str(ROOT / "recipes"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, timeout=300,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("fault", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_while_the_run_is_built_stops_it_before_it_trains(tmp_path, fault):
    run = _signalled_after("setup", fault, *SHORT, f"hydra.run.dir={tmp_path}")
    assert run.returncode == 128 + fault, run.stdout
    assert "Traceback" not in run.stdout, run.stdout
    assert run.stdout.splitlines()[-1] == (
        f"stopped: {fault.name} before the first training batch: nothing to save; start the run again")
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists() and not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("fault", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_after_the_last_batch_lets_the_run_write_its_outputs(tmp_path, fault):
    whole = tmp_path / "whole"
    train.train(_compose(SHORT), whole)
    run = _signalled_after("on_train_end", fault, *SHORT, f"hydra.run.dir={tmp_path / 'signalled'}")
    assert run.returncode == 0, run.stdout
    assert f"note: {fault.name} came after the last training batch: the run is complete" in run.stdout
    summaries = [json.loads((d / "summary.json").read_text()) for d in (whole, tmp_path / "signalled")]
    for summary in summaries:
        summary.pop("wall_time_s")
    assert summaries[0] == summaries[1]


@pytest.mark.slow
def test_many_interrupts_in_random_order_resume_to_the_uninterrupted_run(tmp_path):
    seed = random.randrange(10**6)
    faults = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL] * 2
    random.Random(seed).shuffle(faults)
    _fault_injection(tmp_path, faults, seed)


# ============================================================================ corrupt, finished, misdirected resumes


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _finished_run(tmp_path) -> Path:
    run = tmp_path / "run"
    cfg = _compose(SHORT)
    train.train(cfg, run)  # checkpoints at 128 (kept as the previous one) and 256 (the end)
    return run


CORRUPTIONS = {
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "garbage": lambda b: random.Random(0).randbytes(5000),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_checkpoint_falls_back_to_the_previous_one_and_says_so(tmp_path, corruption, capsys):
    run = _finished_run(tmp_path)
    (run / "summary.json").unlink()  # not finished: resume continues from a checkpoint
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(CORRUPTIONS[corruption](last.read_bytes()))
    orphan = run / "checkpoints" / ".last.ckpt.abc123.tmp"  # a write that a kill cut short
    orphan.write_bytes(b"half")
    capsys.readouterr()
    train.train(train.resumed_config(_compose([f"resume={run}"]), [f"resume={run}"]), run)
    out = capsys.readouterr().out
    assert re.search(rf"note: {re.escape(str(last))} does not load \(.+\); resuming from "
                     rf"{re.escape(str(run / 'checkpoints' / 'last.previous.ckpt'))} \(env frame 128\)", out), out
    assert not orphan.exists()
    assert torch.load(last)["fop_run"]["env_frames"] == 256 and (run / "summary.json").is_file()


def test_no_loadable_checkpoint_exits_2_with_one_line_and_changes_nothing(tmp_path, capsys):
    run = _finished_run(tmp_path)
    (run / "summary.json").unlink()
    for path in (run / "checkpoints").iterdir():
        path.write_bytes(b"garbage")
    before = _snapshot(run)
    with pytest.raises(SystemExit) as stop:
        train.check_resume_before_hydra([f"resume={run}"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.match(rf"error: resume={re.escape(str(run))}: no checkpoint loads \(.*last.ckpt does not load .*last.previous.ckpt does not load .*\): start the run again without resume", err), err
    assert _snapshot(run) == before


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    run = _finished_run(tmp_path)
    before = _snapshot(run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train.check_resume_before_hydra([f"resume={run}"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.splitlines() == [
        f"resume={run}: the run is finished (256 env frames); nothing to do", f"summary: {run / 'summary.json'}"]
    path = train.train(train.resumed_config(_compose([f"resume={run}"]), [f"resume={run}"]), run)  # the API: the same
    assert path == run / "summary.json" and _snapshot(run) == before


def test_resume_of_a_missing_directory_does_not_create_it(tmp_path):
    missing = tmp_path / "nope"
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), f"resume={missing}"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: resume={missing}: no {missing / 'config.yaml'}; give the directory of a run made by this recipe"
    assert not missing.exists()


def test_resume_refuses_another_run_directory(tmp_path, capsys):
    run = _finished_run(tmp_path)
    with pytest.raises(SystemExit) as stop:
        train.check_resume_before_hydra([f"resume={run}", f"hydra.run.dir={tmp_path / 'elsewhere'}"])
    assert stop.value.code == 2
    assert f"resume={run} continues that run in its own directory; drop hydra.run.dir={tmp_path / 'elsewhere'}" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


def test_plot_reads_a_resumed_run_as_one_history(tmp_path):
    """Runs resumed before metrics.csv held the whole history: plot.py joins the parts."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import plot

    logs = tmp_path / "logs"
    logs.mkdir()
    header = "env_frames,eval/return,step\n"
    (logs / "metrics.before_resume_1.csv").write_text(header + "100,1,1\n200,2,2\n300,9,3\n")  # killed after 250
    (logs / "metrics.csv").write_text(header + "300,3,3\n400,4,4\n")
    assert plot.read_curve(tmp_path, "eval/return") == ([100.0, 200.0, 300.0, 400.0], [1.0, 2.0, 3.0, 4.0])


# ============================================================================ the history of a killed run
# Kills with SIGKILL in the middle of a checkpoint interval (the files hold rows past the checkpoint)
# and right after a checkpoint's write (before the row of that batch reaches the files), each
# followed by a resume: the history must hold every row of the uninterrupted run once, in
# metrics.csv and in TensorBoard's event files.

KILL_RUN = ["collect.total_frames=640", "checkpoint.every_frames=160", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "evaluation.interval=160"]

# the recipe, killed by SIGKILL (or another `fault`) at the end of the training batch that reaches
# `frames` env frames (after that batch's checkpoint, if it writes one, and before Lightning logs its row)
KILLED_AT = """
import os, signal, sys
from fop_modules.checkpointing import EnvFrameCheckpoint
batch_end = EnvFrameCheckpoint.on_train_batch_end
def batch_end_then_die(self, trainer, pl_module, *args):
    batch_end(self, trainer, pl_module, *args)
    if pl_module.env_frames == {frames}:
        {fault}
EnvFrameCheckpoint.on_train_batch_end = batch_end_then_die
sys.path.insert(0, {recipes!r})
sys.argv[0] = os.path.join({recipes!r}, "train.py")
import train
train.check_resume_before_hydra(sys.argv[1:])
train.main()
"""


SIGKILL_SELF = "os.kill(os.getpid(), signal.SIGKILL)"


def _killed_at(frames: int, *args: str, fault: str = SIGKILL_SELF) -> subprocess.CompletedProcess:
    code = KILLED_AT.format(frames=frames, recipes=str(ROOT / "recipes"), fault=fault)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, timeout=300,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _scalars(logs: Path) -> dict[str, list[tuple[int, float]]]:
    """Every (step, value) of every scalar tag, as TensorBoard reads the folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logs), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _wandb_history(run_dir: Path) -> tuple[set[str], dict[str, list[tuple[int, float]]], list[float]]:
    """What ``wandb sync`` of a run's offline parts (oldest first) makes of them: the run ids,
    every metric's (``_step``, value) list, and the largest env frame each part logged. A part
    that rewinds its run (the run record's ``branch_point``) first drops the rows after that
    ``_step``. Reads each part's ``.wandb`` file with ``wandb leet inspect --json``."""
    ids, rows, reached = set(), [], []
    for part in sorted((run_dir / "wandb").glob("offline-run-*")):  # offline-run-<start time>-<id>
        records = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(part)],
                                 capture_output=True, text=True, check=True, timeout=120).stdout
        reached.append(0.0)
        for record in map(json.loads, records.splitlines()):
            if record["type"] == "run":
                ids.add(record["run"]["run_id"])
                branch = record["run"].get("branch_point")
                if branch and branch["run"] == record["run"]["run_id"]:  # a rewind
                    rows = [row for row in rows if row["_step"] <= branch["value"]]
            elif record["type"] == "history":
                rows.append(record["history"]["item"])
                reached[-1] = max(reached[-1], rows[-1].get("env_frames", 0.0))
    metrics: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("_runtime", "_timestamp"):  # wall clock
                metrics.setdefault(key, []).append((row["_step"], value))
    return ids, metrics, reached


@pytest.mark.parametrize("logger", ["csv", "tensorboard"])
def test_kills_mid_interval_and_right_after_a_checkpoint_leave_one_history(tmp_path, logger):
    if logger == "tensorboard":
        pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install -e '.[tensorboard]'")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = _recipe(*KILL_RUN, f"logger={logger}", f"hydra.run.dir={whole}")
    args = [*KILL_RUN, f"logger={logger}", f"hydra.run.dir={killed}"]
    for frames, checkpoint in ((400, 320), (480, 480)):  # mid-interval, then at a checkpoint
        run = _killed_at(frames, *args)
        assert run.returncode == -signal.SIGKILL, run.stdout
        assert torch.load(killed / "checkpoints" / "last.ckpt")["fop_run"]["env_frames"] == checkpoint
        args = [f"resume={killed}"]
    resumed = _recipe(*args)
    out, ref_out = resumed.communicate(timeout=300)[0], reference.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert reference.returncode == 0, ref_out
    if logger == "csv":
        # the second kill came before the checkpoint batch's row reached the file ...
        assert max(float(frames) for _, frames in _rows(killed / "logs" / "metrics.before_resume_2.csv")) < 480
        # ... and the history holds it (from the checkpoint) and every other row, once
        assert _rows(killed / "logs" / "metrics.csv") == _rows(whole / "logs" / "metrics.csv")
        with (killed / "logs" / "metrics.csv").open() as f:
            keys = [(r["step"], r["env_frames"], r["eval/return"]) for r in csv.DictReader(f)]
        assert len(keys) == len(set(keys)), "a row logged twice"
        assert _eval_rows(killed / "logs" / "metrics.csv") == _eval_rows(whole / "logs" / "metrics.csv")
        return
    history, reference_history = _scalars(killed / "logs"), _scalars(whole / "logs")
    assert history.keys() == reference_history.keys()
    assert "train/loss_qvalue" in history and "eval/return" in history
    for tag in (*LOSSES, "eval/return", "env_frames"):
        steps = [step for step, _ in history[tag]]
        if tag != "env_frames":  # (train rows and evaluations share the env_frames tag, on two step scales)
            assert len(steps) == len(set(steps)), f"{tag}: a step logged twice"
        assert history[tag] == reference_history[tag], tag  # every step once, every value bit for bit
    assert len(list((killed / "logs").glob("events.out.before_resume_*"))) == 2  # the killed parts, set aside


def test_a_crash_and_a_sigterm_leave_one_wandb_run_with_one_history(tmp_path, monkeypatch):
    """logger=wandb, offline: a crash mid-interval (W&B holds rows past the checkpoint), a resume,
    a SIGTERM (the checkpoint batch's row comes after the checkpoint), a resume: one W&B run whose
    history, as ``wandb sync`` applies the parts' rewinds, is the uninterrupted run's, each row once
    at the same ``_step``. Resuming the finished run changes nothing."""
    pytest.importorskip("wandb", reason="the wandb extra: pip install -e '.[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no account (the recipes' subprocesses inherit it)
    for key, folder in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(key, str(tmp_path / "wandb_home" / folder))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = _recipe(*KILL_RUN, "logger=wandb", f"hydra.run.dir={whole}")
    crash = _killed_at(400, *KILL_RUN, "logger=wandb", f"hydra.run.dir={killed}", fault="raise RuntimeError('crash')")
    assert crash.returncode == 1 and "RuntimeError: crash" in crash.stdout, crash.stdout
    sigterm = _killed_at(480, f"resume={killed}", fault="os.kill(os.getpid(), signal.SIGTERM)")
    assert sigterm.returncode == 128 + signal.SIGTERM, sigterm.stdout
    stopped_at = torch.load(killed / "checkpoints" / "last.ckpt")["fop_run"]["env_frames"]
    resumed = _recipe(f"resume={killed}")
    out, ref_out = resumed.communicate(timeout=300)[0], reference.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert reference.returncode == 0, ref_out

    ids, history, reached = _wandb_history(killed)
    reference_ids, reference_history, _ = _wandb_history(whole)
    assert len(ids) == 1 and len(reference_ids) == 1, ids  # one W&B run across the resumes
    # the parts logged past their checkpoints: up to the batch before the crash (checkpoint 320),
    # then the row of the checkpoint batch itself
    assert 320 < reached[0] < 400 and reached[1] == stopped_at, reached
    assert history.keys() == reference_history.keys()
    assert "train/loss_qvalue" in history and "eval/return" in history
    for key in history:  # every row once, at the uninterrupted run's _step, every value the same
        assert history[key] == reference_history[key], key
    before = _snapshot(killed)
    again = _recipe(f"resume={killed}")
    assert again.wait(timeout=120) == 0, again.stdout.read()
    assert _snapshot(killed) == before


def test_wall_time_counts_every_part_of_a_resumed_run(tmp_path):
    run = _finished_run(tmp_path)
    checkpoints = run / "checkpoints"
    saved = [torch.load(checkpoints / name).get("wall_time_s") for name in ("last.previous.ckpt", "last.ckpt")]
    whole_run = json.loads((run / "summary.json").read_text())["wall_time_s"]
    # the run as a kill right after its first checkpoint (env frame 128) leaves it, had that part
    # taken 1000 s
    first_part = torch.load(checkpoints / "last.previous.ckpt")
    first_part["wall_time_s"] = 1000.0
    torch.save(first_part, checkpoints / "last.ckpt")
    (run / "summary.json").unlink()
    start = time.perf_counter()
    train.train(train.resumed_config(_compose([f"resume={run}"]), [f"resume={run}"]), run)
    second_part = time.perf_counter() - start
    wall_time = json.loads((run / "summary.json").read_text())["wall_time_s"]
    assert 1000.0 < wall_time <= 1000.0 + second_part + 0.01  # both parts
    # each checkpoint holds the wall time of the run up to its save
    assert 0 < saved[0] < saved[1] <= whole_run


def test_sigterm_under_two_process_ddp_saves_exits_143_and_resumes(tmp_path):
    """SIGTERM to the launching process (what a scheduler sends) under 2-process CPU DDP: Lightning
    passes it on to the other rank, the ranks agree on the stop, rank 0 writes one checkpoint
    holding both ranks' state, and `resume=` (which Lightning's launcher starts again on both
    ranks, adding a quoted `hydra.run.dir="<run dir>"`) ends as the uninterrupted run."""
    ddp = ["trainer.devices=2", "collect.total_frames=512", "collect.frames_per_batch=32",
           "checkpoint.every_frames=128", "evaluation.interval=256", "trainer.enable_progress_bar=false"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    ckpt = stopped / "checkpoints" / "last.ckpt"
    run = _recipe(*ddp, f"hydra.run.dir={stopped}")
    assert _wait_for_new_checkpoint(run, ckpt, 0, time.monotonic() + 300), run.stdout.read()
    run.send_signal(signal.SIGTERM)
    out = run.communicate(timeout=300)[0]
    assert run.returncode == 128 + signal.SIGTERM, out
    frames = torch.load(ckpt)["fop_run"]["env_frames"]
    assert 0 < frames < 512 and "Traceback" not in out, out
    assert out.count(f"stopped: SIGTERM at env frame {frames} of 512: saved {ckpt}") == 1, out  # rank 0 says it
    saved = torch.load(ckpt)
    assert len(saved["rng_states"]) == len(saved["fop_run"]["replay"]) == 2  # both ranks' state

    resumed = _recipe(f"resume={stopped}")
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    reference = _recipe(*ddp, f"hydra.run.dir={whole}")
    ref_out = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, ref_out
    a, b = (torch.load(d / "checkpoints" / "last.ckpt") for d in (whole, stopped))
    assert a["fop_run"]["env_frames"] == b["fop_run"]["env_frames"] == 512
    assert _same(a["state_dict"], b["state_dict"]) == [] and _same(a["optimizer_states"], b["optimizer_states"]) == []
    summaries = [json.loads((d / "summary.json").read_text()) for d in (whole, stopped)]
    for summary in summaries:
        summary.pop("wall_time_s")
    assert summaries[0] == summaries[1] and summaries[0]["world_size"] == 2
