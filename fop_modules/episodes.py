"""Whole-episode replay for recurrent agents: every replayed step sees the history it acted on.

A GRU agent acts on its whole episode so far. A replayed slice that starts in the middle of an
episode starts its GRU from a zero hidden state and trains the agent on a history it never had.
With TorchRL's :class:`~torchrl.data.replay_buffers.samplers.SliceSampler`, which cuts slices out
of contiguous runs of one trajectory id in storage, that happens whenever an episode is stored in
pieces, and a collector writes every episode that spans two collector batches in pieces: its
steps of the second batch land after the other envs' steps of the first one (SMAX's 101-step
battles span two or three 50-step batches).

The authors replay whole episodes (PyMARL's episode buffer). Two parts make ours do the same:

- :class:`EpisodeAssembler` sits between the collector and ``buffer.extend``. It holds each
  trajectory's steps until its episode ends and then releases the whole episode, so each episode
  is written contiguously and a slice of at least the episode's length starts at its first step.
- :func:`mask_partial_episodes` drops, from a sampled batch of slices, every slice whose first
  step is not an episode's first step (``"is_init"`` as :class:`~torchrl.envs.InitTracker`
  wrote it). What remains of an episode whose head the round-robin writer has overwritten, and
  every slice of a ``slice_len`` shorter than the episodes, is such a slice.

With both, every replayed step's recurrent state, recomputed from the episode's first step with
the current parameters, equals the one the agent acted with when those parameters acted
(``tests/test_episodes.py``).
"""

from __future__ import annotations

import torch
from tensordict import NestedKey, TensorDictBase

from fop_modules.recurrent import IS_INIT_KEY  # InitTracker: True at an episode's first step
from fop_modules.replay import TRAJ_KEY  # a TorchRL collector's trajectory id of each step

__all__ = ["EpisodeAssembler", "mask_partial_episodes"]

DONE_KEY = ("next", "done")
SLICE_MASK_KEY = ("collector", "mask")  # SliceSampler(pad_output=True): real (not padded) steps


class EpisodeAssembler:
    """Holds each trajectory's steps across collector batches; releases whole episodes.

    Call it on every collected batch (``[*E, T]``, time last, as TorchRL collectors give it, or
    a flat ``[T]``) and write what it returns to the replay buffer. Episodes come out contiguous,
    each from its first step to its last, in the order they end; an episode still running at the
    end of a batch waits for the next batch (at most one unfinished episode per env is held).

    Args:
        traj_key: the trajectory id of each step (TorchRL collectors write it).
        done_key: the step's done flag (an episode ends after its done step).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> def batch(ids, dones):  # one env, 3 steps per collector batch
        ...     return TensorDict({("collector", "traj_ids"): torch.tensor([ids]),
        ...                        ("next", "done"): torch.tensor([dones]).unsqueeze(-1)}, [1, 3])
        >>> assembler = EpisodeAssembler()
        >>> assembler(batch([0, 0, 0], [False, False, False])) is None  # episode 0 runs on
        True
        >>> out = assembler(batch([0, 1, 1], [True, False, False]))  # episode 0 ends: 4 steps
        >>> out["collector", "traj_ids"].tolist(), assembler.held_frames
        ([0, 0, 0, 0], 2)
    """

    def __init__(self, traj_key: NestedKey = TRAJ_KEY, done_key: NestedKey = DONE_KEY) -> None:
        self.traj_key, self.done_key = traj_key, done_key
        self._held: dict[int, list[TensorDictBase]] = {}  # trajectory id -> its steps so far

    @property
    def held_frames(self) -> int:
        """Steps of unfinished episodes held back (not yet in the buffer)."""
        return sum(piece.numel() for pieces in self._held.values() for piece in pieces)

    def reset(self) -> None:
        """Forgets the unfinished episodes (their envs restart them, e.g. after a resume)."""
        self._held.clear()

    def __call__(self, batch: TensorDictBase) -> TensorDictBase | None:
        """The episodes that end in ``batch``, whole and one after another ([M]), or None."""
        if batch.batch_dims == 0:
            raise ValueError("EpisodeAssembler needs a batch of steps ([*E, T], time last, or [T])")
        rows = batch.reshape(-1, batch.shape[-1])  # [E, T]: one env's steps per row
        traj, done = rows.get(self.traj_key), rows.get(self.done_key)
        traj, done = traj.reshape(rows.shape), done.reshape(rows.shape)
        finished = []
        for env in range(rows.shape[0]):
            # runs of one trajectory id along time: an episode, or the part of it in this batch
            change = (traj[env, 1:] != traj[env, :-1]).nonzero().squeeze(-1) + 1
            bounds = [0, *change.tolist(), rows.shape[1]]
            for start, stop in zip(bounds[:-1], bounds[1:]):
                trajectory = int(traj[env, start])
                self._held.setdefault(trajectory, []).append(rows[env, start:stop])
                if done[env, stop - 1]:
                    finished.append(torch.cat(self._held.pop(trajectory)))
        return torch.cat(finished) if finished else None


def mask_partial_episodes(slices: TensorDictBase) -> TensorDictBase:
    """Marks every step of a slice that does not start an episode as padding, in place.

    Args:
        slices: a ``[B, T]`` batch of slices (time last) with ``"is_init"`` as the env wrote it
            (a :class:`~torchrl.data.replay_buffers.samplers.SliceSampler` built without
            ``init_key``, which would overwrite it) and the sampler's ``("collector", "mask")``
            (every step real where it is absent: no slice was padded).

    Returns:
        ``slices``, whose mask is now False on every step of the slices that start mid-episode.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> slices = TensorDict({"is_init": torch.tensor([[[True], [False]], [[False], [False]]]),
        ...                      ("collector", "mask"): torch.ones(2, 2, dtype=torch.bool)}, [2, 2])
        >>> mask_partial_episodes(slices)["collector", "mask"].tolist()
        [[True, True], [False, False]]
    """
    if slices.batch_dims != 2:
        raise ValueError(f"mask_partial_episodes needs [B, T] slices, got batch {list(slices.batch_size)}")
    starts = slices.get(IS_INIT_KEY)[:, 0].reshape(-1, 1)  # [B, 1]
    mask = slices.get(SLICE_MASK_KEY, None)  # absent when no slice needed padding
    mask = torch.ones(slices.batch_size, dtype=torch.bool, device=starts.device) if mask is None else mask
    slices.set(SLICE_MASK_KEY, mask & starts)
    return slices
