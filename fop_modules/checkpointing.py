"""Checkpoints a killed run can continue from: when to save, what to add, how to write.

Lightning's checkpoint already holds the module's parameters and buffers (networks, target
networks, ``log_alpha``, the scheduled ``alpha``), the optimisers, the loop counters and, since
the TorchRL :class:`~torchrl.collectors.Collector` is a stateful dataloader, the collector's frame
and trajectory counters. :class:`~fop_modules.lightning.FOPLightningModule` adds its own state (env-frame
and update counters, evaluation history, replay buffer) in ``on_save_checkpoint``. This module
adds the rest, and the helpers the module's hooks use (:func:`replay_state`,
:func:`load_replay_state`, :func:`gather_ranks`):

- :class:`EnvFrameCheckpoint`: a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` that saves
  ``last.ckpt`` every ``every_frames`` env frames (Lightning's ``every_n_train_steps`` counts
  optimiser steps, ``n_objectives`` per update and none during warm-up) and at the end of training.
- :class:`RNGCheckpoint`: the python, numpy and torch generators (CUDA too where there is one),
  saved with the checkpoint and put back in ``on_train_start``, the last hook before the resumed
  run collects its first batch (the module's own ``on_train_start`` draws nothing on resume).
- :class:`AtomicCheckpointIO`: writes to a temporary file in the checkpoint's own folder, flushes
  it to disk, then renames it over the old one, so a kill at any moment leaves either the old or
  the new checkpoint, never half of one. (Lightning's own writer goes through an fsspec
  transaction whose temporary file lives in the system temp dir: when that is another file
  system, the final move is a copy, which a kill can cut short.)
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from tensordict import TensorDict
from torchrl.data import ReplayBuffer

from fop_modules.replay import CompactTensorStorage

__all__ = [
    "AtomicCheckpointIO", "EnvFrameCheckpoint", "RNGCheckpoint", "gather_ranks", "get_rng_states",
    "load_replay_state", "replay_state", "set_rng_states",
]

RNG_KEY = "rng_states"  # checkpoint entry of RNGCheckpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<dir>/.<name>.XXXX.tmp``, ``fsync``, then ``os.replace`` onto ``path``.

    ``os.replace`` within one folder is atomic on POSIX file systems: readers (and a resumed run)
    see the old file or the new one. A kill during ``torch.save`` leaves only the temporary file,
    which the next save in that folder does not touch and ``ckpt_path="last"`` never picks
    (it ends in ``.tmp``).

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> io = AtomicCheckpointIO()
        >>> folder = Path(tempfile.mkdtemp())
        >>> io.save_checkpoint({"step": torch.tensor(3)}, folder / "last.ckpt")
        >>> int(io.load_checkpoint(folder / "last.ckpt")["step"]), sorted(p.name for p in folder.iterdir())
        (3, ['last.ckpt'])
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class EnvFrameCheckpoint(ModelCheckpoint):
    """Saves ``<dirpath>/last.ckpt`` whenever the run's env-frame count crosses a multiple of
    ``every_frames``, and at the end of training.

    Args:
        dirpath: folder of ``last.ckpt`` (the recipe: ``<run dir>/checkpoints``).
        every_frames: env frames between checkpoints (0: only at the end of training). Reads the
            module's ``env_frames``; a batch that crosses several multiples saves once.

    Examples:
        >>> cb = EnvFrameCheckpoint("/tmp/ckpts", every_frames=1000)
        >>> cb.every_frames, cb.save_last, cb.save_top_k
        (1000, True, 0)
    """

    def __init__(self, dirpath: str | Path, every_frames: int) -> None:
        if every_frames < 0:
            raise ValueError(f"checkpoint.every_frames must be >= 0, got {every_frames}")
        # save_top_k=0: no history, only last.ckpt; every_n_epochs=1: also at the end of the
        # single epoch the recipe runs (the end of training)
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_epochs=1)
        self.every_frames = every_frames
        self._frames_before_batch = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._frames_before_batch = pl_module.env_frames

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.every_frames
        if not every or pl_module.env_frames // every == self._frames_before_batch // every:
            return
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # ModelCheckpoint's own end-of-epoch save writes last.ckpt only beside a top-k one (none
        # here): save it directly, unless this step is saved already
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def get_rng_states() -> dict[str, Any]:
    """The python, numpy and torch generator states (CUDA ones where CUDA is up), as values
    ``torch.load(weights_only=True)`` reads back (numpy's key array as a tensor).

    Examples:
        >>> states = get_rng_states()
        >>> a = torch.rand(2); set_rng_states(states); bool((torch.rand(2) == a).all())
        True
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores what :func:`get_rng_states` returned."""
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


class RNGCheckpoint(Callback):
    """Saves this process's generator states with each checkpoint; on resume puts them back in
    ``on_train_start``, after everything set-up draws (building the module and the collector) and
    before the collector draws its first action.

    Under DDP each rank saves its own states (gathered to rank 0, which writes the file) and gets
    its own back, so the ranks' collectors keep drawing different actions.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = gather_ranks(trainer, get_rng_states())

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(RNG_KEY)
        if saved is None:
            raise KeyError(
                f"the checkpoint has no {RNG_KEY!r} entry (it was not written with RNGCheckpoint): "
                "it cannot continue the run exactly"
            )
        if len(saved) != trainer.world_size:
            raise ValueError(
                f"the checkpoint holds generator states of {len(saved)} process(es) but this run has "
                f"{trainer.world_size}: resume with the same trainer.devices and trainer.num_nodes"
            )
        self._pending = saved[trainer.global_rank]

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        # Not on_train_epoch_start: Lightning skips that hook when it restarts mid-epoch.
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


def replay_state(buffer: ReplayBuffer) -> dict[str, Any]:
    """The filled part of a replay buffer's storage, with its writer's and sampler's state, as
    plain tensors (``torch.load(weights_only=True)`` reads them). The buffer's own ``state_dict``
    would also save the unfilled, preallocated capacity.

    Examples:
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(100), batch_size=2)
        >>> _ = buffer.extend(TensorDict({"x": torch.arange(5.0)}, [5]))
        >>> copy = TensorDictReplayBuffer(storage=LazyTensorStorage(100), batch_size=2)
        >>> load_replay_state(copy, replay_state(buffer))
        >>> len(copy), copy[:5]["x"].tolist()
        (5, [0.0, 1.0, 2.0, 3.0, 4.0])
    """
    filled = len(buffer)
    if isinstance(buffer.storage, CompactTensorStorage):  # its own state: the stored columns
        data = buffer.storage.state_dict()
    else:  # clone: torch.save of a view writes the whole preallocated storage behind it
        data = buffer.storage[:filled].clone().state_dict() if filled else None
    return {
        "data": data,
        "writer": buffer.writer.state_dict(),
        "sampler": buffer.sampler.state_dict(),
    }


def load_replay_state(buffer: ReplayBuffer, state: dict[str, Any]) -> None:
    """Puts what :func:`replay_state` returned back into ``buffer``, in the same slots (sampling
    then draws the same indices as it would have)."""
    if isinstance(buffer.storage, CompactTensorStorage):
        buffer.storage.load_state_dict(state["data"])
    elif state["data"] is not None:
        data = TensorDict()
        data.load_state_dict(state["data"], strict=False)
        buffer.storage.set(torch.arange(data.shape[0]), data)
    buffer.writer.load_state_dict(state["writer"])
    buffer.sampler.load_state_dict(state["sampler"])


def gather_ranks(trainer: L.Trainer, state: Any) -> list[Any]:
    """``[state of rank 0, rank 1, ...]`` (``[state]`` with one process). Checkpoint hooks run on
    every rank but only rank 0 writes the file, so per-rank state must be gathered to it."""
    if trainer.world_size == 1:
        return [state]
    gathered: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered
