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
  optimiser steps, ``n_objectives`` per update and none during warm-up), at the end of training,
  and after the batch during which SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption notice)
  arrived, then stops the run (``trainer.should_stop``). With each save it stores the training row
  Lightning logs after that batch (:data:`LOG_ROW_KEY`; a kill can land before the row reaches
  the logger's files) and the run's wall time over all its parts (:data:`WALL_TIME_KEY`).
- :func:`newest_loadable`: the newest checkpoint of a folder that loads (``last.ckpt``, else the
  ``last.previous.ckpt`` that :class:`AtomicCheckpointIO` keeps), for a resume.
- :class:`RNGCheckpoint`: the python, numpy and torch generators (CUDA too where there is one),
  saved with the checkpoint and put back in ``on_train_start``, the last hook before the resumed
  run collects its first batch (the module's own ``on_train_start`` draws nothing on resume).
- :class:`AtomicCheckpointIO`: writes to a temporary file in the checkpoint's own folder, flushes
  it to disk, then renames it over the old one (which it keeps as ``<name>.previous.ckpt``), so a
  kill at any moment leaves either the old or the new checkpoint, never half of one. (Lightning's own writer goes through an fsspec
  transaction whose temporary file lives in the system temp dir: when that is another file
  system, the final move is a copy, which a kill can cut short.)
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from tensordict import TensorDict
from torchrl.data import ReplayBuffer

from fop_modules.replay import CompactTensorStorage

__all__ = [
    "LOG_ROW_KEY", "WALL_TIME_KEY", "AtomicCheckpointIO", "EnvFrameCheckpoint", "RNGCheckpoint", "gather_ranks",
    "get_rng_states", "load_replay_state", "newest_loadable", "orphan_writes", "pending_log_row", "previous_path",
    "replay_state", "set_rng_states",
]

RNG_KEY = "rng_states"  # checkpoint entry of RNGCheckpoint
# checkpoint entries of EnvFrameCheckpoint: the training row Lightning logs after the saving batch,
# {"step": int, "metrics": {name: float}} (None: no row, or the batch's row was already logged),
# and the wall time in seconds of the run up to the save, over all its parts
LOG_ROW_KEY = "pending_log_row"
WALL_TIME_KEY = "wall_time_s"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<dir>/.<name>.XXXX.tmp``, ``fsync``, then ``os.replace`` onto ``path``,
    the file it replaces kept as :func:`previous_path` (a fallback, should the new one not load).

    ``os.replace`` within one folder is atomic on POSIX file systems: readers (and a resumed run)
    see the old file or the new one. A kill during ``torch.save`` leaves only the temporary file,
    which ``ckpt_path="last"`` never picks (it ends in ``.tmp``) and :class:`EnvFrameCheckpoint`
    removes when the next run in that folder starts.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> io = AtomicCheckpointIO()
        >>> folder = Path(tempfile.mkdtemp())
        >>> io.save_checkpoint({"step": torch.tensor(3)}, folder / "last.ckpt")
        >>> io.save_checkpoint({"step": torch.tensor(4)}, folder / "last.ckpt")
        >>> int(io.load_checkpoint(folder / "last.ckpt")["step"]), sorted(p.name for p in folder.iterdir())
        (4, ['last.ckpt', 'last.previous.ckpt'])
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
            if path.exists():  # a kill between the two renames leaves both in previous_path
                os.replace(path, previous_path(path))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def previous_path(path: str | Path) -> Path:
    """Where :class:`AtomicCheckpointIO` keeps the checkpoint a save replaced.

    Examples:
        >>> previous_path("run/checkpoints/last.ckpt").name
        'last.previous.ckpt'
    """
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def orphan_writes(folder: str | Path) -> list[Path]:
    """Temporary files of :class:`AtomicCheckpointIO` writes that a kill cut short."""
    folder = Path(folder)
    return sorted(folder.glob(".*.ckpt.*.tmp")) if folder.is_dir() else []


RUN_KEYS = ("state_dict", "loops", "fop_run")  # what a checkpoint of this library always holds


def newest_loadable(path: str | Path) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest of ``path`` and its :func:`previous_path` that loads and holds a run.

    Each candidate is read with ``torch.load(mmap=True, weights_only=True)``: the file's index and
    pickled structure are checked, its tensors only mapped (cheap even for a large replay buffer).

    Returns:
        (that file, its content, one line per newer file that did not load, saying why).

    Raises:
        FileNotFoundError: when neither file loads (the message says why for each).

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> AtomicCheckpointIO().save_checkpoint({k: {} for k in RUN_KEYS}, folder / "last.ckpt")
        >>> AtomicCheckpointIO().save_checkpoint({k: {} for k in RUN_KEYS}, folder / "last.ckpt")
        >>> _ = (folder / "last.ckpt").write_bytes(b"half a checkpoint")
        >>> found, content, skipped = newest_loadable(folder / "last.ckpt")
        >>> found.name, len(skipped)
        ('last.previous.ckpt', 1)
    """
    path = Path(path)
    skipped = []
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            skipped.append(f"{candidate} does not exist")
            continue
        if candidate.stat().st_size == 0:
            skipped.append(f"{candidate} does not load (it is empty)")
            continue
        if not zipfile.is_zipfile(candidate):  # torch.save writes a zip archive, its index last
            skipped.append(f"{candidate} does not load (no zip index: truncated, or not a torch checkpoint)")
            continue
        try:
            content = torch.load(candidate, map_location="cpu", weights_only=True, mmap=True)
            missing = [k for k in RUN_KEYS if not isinstance(content, dict) or k not in content]
            if missing:
                raise ValueError(f"it holds no {missing[0]!r} entry")
        except Exception as error:  # noqa: BLE001 - any failure to read makes the file unusable
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            skipped.append(f"{candidate} does not load ({first_line[:200]})")
            continue
        return candidate, content, skipped
    raise FileNotFoundError("; ".join(skipped))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class EnvFrameCheckpoint(ModelCheckpoint):
    """Saves ``<dirpath>/last.ckpt`` whenever the run's env-frame count crosses a multiple of
    ``every_frames``, at the end of training, and when a stop signal arrives.

    SIGINT (Ctrl-C) and SIGTERM (what SLURM and other schedulers send before they kill a job) are
    caught by a handler this callback installs for the training loop; it only notes the signal.
    The current training batch finishes, its checkpoint is written (the same one a periodic save
    writes, which ``resume`` continues exactly), the loggers are flushed, and
    ``trainer.should_stop`` ends the run; :attr:`stopped_by` then holds the signal. A second
    Ctrl-C interrupts at once, without a checkpoint. Under DDP the ranks agree on the stop at every
    batch end (one all-reduce), so a signal to one rank stops them all. (Lightning's own SIGTERM
    handler, which the callback replaces during training, runs a broadcast inside the handler under
    DDP; interleaved with the ranks' other collectives, it can hang the run.) Orphan temporary
    files of writes a kill cut short are removed at start-up.

    Outside the training loop a signal would still kill the process: while a run builds its env
    and modules, or writes its outputs after the last batch. :meth:`catching_stop_signals` keeps
    the handler over a whole run: a signal before the first training batch stops the run there
    (nothing trained, nothing saved), one after the last batch is noted in
    :attr:`signal_received` and changes nothing (the run is complete).

    Args:
        dirpath: folder of ``last.ckpt`` (the recipe: ``<run dir>/checkpoints``).
        every_frames: env frames between checkpoints (0: only at the end of training). Reads the
            module's ``env_frames``; a batch that crosses several multiples saves once.
        stop_signals: the signals that save and stop (SIGINT, SIGTERM; empty: neither). A
            SIGINT the process inherited as ignored (``nohup``, background jobs) stays ignored.
        started: ``time.perf_counter()`` when this part of the run started (default: now); the
            wall time :meth:`wall_time_s` counts from it, plus that of the parts before a resume.

    Examples:
        >>> cb = EnvFrameCheckpoint("/tmp/ckpts", every_frames=1000)
        >>> cb.every_frames, cb.save_last, cb.save_top_k, cb.stopped_by
        (1000, True, 0, None)
        >>> cb.on_load_checkpoint(None, None, {WALL_TIME_KEY: 60.0})  # a resume: 60 s before
        >>> 60.0 <= cb.wall_time_s() < 70.0
        True
    """

    def __init__(
        self,
        dirpath: str | Path,
        every_frames: int,
        stop_signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
        started: float | None = None,
    ) -> None:
        if every_frames < 0:
            raise ValueError(f"every_frames must be >= 0, got {every_frames}")
        # save_top_k=0: no history, only last.ckpt; every_n_epochs=1: also at the end of the
        # single epoch the recipe runs (the end of training)
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_epochs=1)
        self.every_frames = every_frames
        self.stop_signals = tuple(signal.Signals(s) for s in stop_signals)
        self.stopped_by: signal.Signals | None = None  # the signal that stopped the run, if one did
        self._frames_before_batch = 0
        self._received: int = 0  # signal number caught on this process (0: none)
        self._previous_handlers: dict[signal.Signals, Any] = {}
        self._held = False  # catching_stop_signals() holds the handlers beyond the training loop
        self._started = time.perf_counter() if started is None else started
        self._wall_time_before = 0.0  # seconds of the parts before a resume (up to their checkpoint)
        self._pending_row: dict[str, Any] | None = None

    def wall_time_s(self) -> float:
        """Seconds since this part started, plus those of the parts before it (each counted up to
        the checkpoint it was resumed from)."""
        return self._wall_time_before + time.perf_counter() - self._started

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[LOG_ROW_KEY] = self._pending_row
        checkpoint[WALL_TIME_KEY] = self.wall_time_s()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._wall_time_before = float(checkpoint.get(WALL_TIME_KEY, 0.0))

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero:  # before any save: no write of this run can be in flight
            for orphan in orphan_writes(self.dirpath):
                orphan.unlink(missing_ok=True)
                rank_zero_info(f"removed {orphan}, a checkpoint write cut short by a kill")

    @property
    def signal_received(self) -> signal.Signals | None:
        """The stop signal this process caught (None: none), also one that came too late to stop
        the run: after its last training batch."""
        return signal.Signals(self._received) if self._received else None

    @contextmanager
    def catching_stop_signals(self) -> Iterator[EnvFrameCheckpoint]:
        """Catches the stop signals from the block's start to its end, not only in the training
        loop: a signal before the first training batch stops the run before it trains (``fit``
        returns with :attr:`stopped_by` set and no checkpoint written), one after the last batch
        is only noted (:attr:`signal_received`). A second Ctrl-C still interrupts at once.

        Examples:
            >>> cb = EnvFrameCheckpoint("/tmp/ckpts", every_frames=1000)
            >>> with cb.catching_stop_signals():
            ...     signal.getsignal(signal.SIGTERM) == cb._on_signal
            True
            >>> signal.getsignal(signal.SIGTERM) == cb._on_signal
            False
        """
        self._received = 0
        self._install_handlers()
        self._held = True
        try:
            yield self
        finally:
            self._held = False
            self._restore_signals()

    def _install_handlers(self) -> None:
        """Puts :meth:`_on_signal` on the stop signals, also over the SIGTERM handler Lightning's
        ``fit`` wraps around it (whose ``SIGTERMException`` would end the loop before this
        callback saves). Nothing changes once a signal has arrived (a second Ctrl-C stops at once)."""
        if threading.current_thread() is not threading.main_thread() or self._received:
            return
        for signum in self.stop_signals:
            current = signal.getsignal(signum)
            if current == self._on_signal:
                continue
            if signum in self._previous_handlers:  # held: only wrapped since
                signal.signal(signum, self._on_signal)
            elif signum != signal.SIGINT or current is signal.default_int_handler:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def on_train_start(self, trainer, pl_module) -> None:
        self.stopped_by = None
        if not self._held:  # signals count from the start of the training loop
            self._received = 0
        self._install_handlers()
        if self._received:  # caught while the run was being built: stop before the first batch
            self.stopped_by = signal.Signals(self._received)
            trainer.should_stop = True

    def _on_signal(self, signum: int, frame) -> None:
        self._received = signum
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, self._previous_handlers.pop(signal.SIGINT))
        rank_zero_info(f"{signal.Signals(signum).name}: saving a checkpoint after this training batch, then "
                       "stopping" + (" (Ctrl-C again stops at once, without it)" if signum == signal.SIGINT else ""))

    def _restore_signals(self) -> None:
        """Puts the previous handlers back, unless :meth:`catching_stop_signals` holds them."""
        if self._held:
            return
        for signum, previous in self._previous_handlers.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous)
        self._previous_handlers = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_signals()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_signals()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._frames_before_batch = pl_module.env_frames

    def _stop_signal(self, trainer, pl_module) -> int:
        """The stop signal any rank received (0: none); one all-reduce per batch under DDP."""
        received = self._received
        if not received and signal.SIGTERM in self.stop_signals and trainer.received_sigterm:
            received = int(signal.SIGTERM)
        if trainer.world_size > 1:
            number = torch.tensor(float(received), device=pl_module.device)
            received = int(trainer.strategy.reduce(number, reduce_op="max").item())
        return received

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.every_frames
        crossed = bool(every) and pl_module.env_frames // every != self._frames_before_batch // every
        stop = self._stop_signal(trainer, pl_module) if self.stop_signals else 0
        if trainer.sanity_checking or trainer.fast_dev_run or not (crossed or stop):
            return
        for logger in trainer.loggers:  # the rows logged so far on disk, with the checkpoint
            logger.save()
        self._pending_row = pending_log_row(trainer)  # this batch's row: logged after this hook
        try:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._pending_row = None
        if stop:
            self.stopped_by = signal.Signals(stop)
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # ModelCheckpoint's own end-of-epoch save writes last.ckpt only beside a top-k one (none
        # here): save it directly, unless this step is saved already or a signal stopped the run
        # (its checkpoint is the batch's, from which a resume continues the epoch)
        if self.stopped_by is None and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def pending_log_row(trainer: L.Trainer) -> dict[str, Any] | None:
    """The training row Lightning will log once the ``on_train_batch_end`` hooks have run
    (``{"step": ..., "metrics": {...}}`` as the loggers receive it), or None when this batch logs
    no row (``trainer.log_every_n_steps``) or there is no logger.

    A checkpoint saved in ``on_train_batch_end`` stores it: a kill between that save and the row's
    write would otherwise lose the row, which the resumed run (starting at the next batch) never
    logs again. It reads the batch's logged values as Lightning's logger connector does
    (``ModelCheckpoint`` reads the same results for ``callback_metrics`` in this hook).
    """
    connector = trainer._logger_connector  # Lightning 2.5-2.6: what update_train_step_metrics logs next
    if not trainer.loggers or not connector.should_update_logs:
        return None
    metrics = convert_tensors_to_scalars(connector.metrics["log"])
    if not metrics:
        return None
    metrics.setdefault("epoch", trainer.current_epoch)  # as the connector's log_metrics adds it
    return {"step": trainer.fit_loop.epoch_loop._batches_that_stepped,
            "metrics": {k: float(v) for k, v in metrics.items()}}


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
                f"{trainer.world_size}: resume with a Trainer of the same devices and num_nodes"
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
