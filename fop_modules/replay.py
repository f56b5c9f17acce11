"""Compact replay: each step's data stored once, in the narrowest dtype that holds it exactly.

A TorchRL collector writes every step twice: the root of row t holds (o_t, s_t, masks, ...) and
``("next", ...)`` holds (o_{t+1}, s_{t+1}, ...), which is also the root of row t + 1 whenever
that row is the same env's next step. :class:`CompactTensorStorage` is a
:class:`~torchrl.data.LazyTensorStorage` that keeps only the root of every row and rebuilds
``("next", k)`` on reading:

1. **Successor rows.** A batch ``[num_envs, T]`` reshaped to ``[-1]`` is written env after env,
   so row t + 1 follows row t in storage (modulo the capacity: the round-robin writer wraps). On
   ``set`` a row is *linked* when its successor was written in the same call at the next slot
   and every ``("next", k)`` of the row is bit-equal to ``k`` of the successor (checked, not
   assumed). A linked row's ``("next", k)`` is read from slot ``(i + 1) % capacity``.
2. **Side store.** The other rows (an episode's last step, whose successor is the reset; the last
   step of each env in a collector batch; a row whose successor differs in any way) keep their
   ``("next", k)`` values in a small side table, one entry per such row, indexed by an int32 slot
   per row (-1: linked). Entries are freed when their row is overwritten; the table grows by a
   quarter when full. The round-robin writer overwrites a row before its successor, so a linked
   row never outlives its successor.
3. **Codecs.** Actions are stored as ``uint8`` and the one-hot last action ``[N, A]`` as the
   ``uint8`` index of its 1 (A where it is all zeros); both are rebuilt bit-exactly on reading
   (and checked to be representable on writing). Keys found only under ``"next"`` (reward, the
   done flags) are stored as they are.
4. **Dropped keys.** ``drop_keys`` (the GRU's carried ``"rnn_hidden"``) are not stored and read
   back as zeros. :func:`make_replay_buffer` drops it for sequence replay, whose slices the
   learner only uses from an episode's first step (:mod:`fop_modules.episodes`), where
   :class:`~fop_modules.recurrent.GRUEncoder` starts from a zero hidden state and never reads the
   stored one (the sample is otherwise bit-equal to the plain buffer's; ``tests/test_replay.py``
   checks both, and that the loss is unchanged).

Reading ``storage[:]`` (what TorchRL's samplers do to find trajectory boundaries) returns the
stored columns as they are, without rebuilding ``"next"`` (a decoded whole buffer would be the
2.6x copy this storage avoids); any other index returns decoded rows.

For SMAC's MMM (10 agents) this takes the buffer from 21,984 to 7,959 bytes per frame, side table
included: 0.96x one float32 copy of the authors' layout, down from 2.65x
(``benchmarks/replay_memory.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tensordict import NestedKey, TensorDict, TensorDictBase, is_tensor_collection
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import SliceSampler

from fop_modules.recurrent import HIDDEN_KEY

__all__ = ["CompactTensorStorage", "IntegerCodec", "OneHotCodec", "make_replay_buffer"]

SIDE_SLOT_KEY = "_side_slot"  # per stored row: its side-table entry, -1 when the successor holds "next"
SIDE_GROWTH = 1.25  # the side table grows by a quarter when it is full
SIDE_MIN_ROWS = 64
TRAJ_KEY = ("collector", "traj_ids")
_BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


@dataclass(frozen=True)
class IntegerCodec:
    """Integer values stored in a narrower integer dtype (actions in ``uint8``).

    Examples:
        >>> codec = IntegerCodec(torch.uint8)
        >>> codec.decode(codec.encode("a", torch.tensor([0, 7])), torch.Size([]), torch.int64)
        tensor([0, 7])
    """

    dtype: torch.dtype = torch.uint8

    @staticmethod
    def accepts(dtype: torch.dtype) -> bool:
        return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool

    def encode(self, key: NestedKey, value: torch.Tensor) -> torch.Tensor:
        info = torch.iinfo(self.dtype)
        if value.is_floating_point() or value.dtype == torch.bool:
            raise TypeError(f"IntegerCodec: {key!r} must hold integers, got {value.dtype}")
        if value.numel() and (value.min() < info.min or value.max() > info.max):
            raise ValueError(
                f"{key!r} holds values in [{int(value.min())}, {int(value.max())}], outside "
                f"{self.dtype}'s range: give CompactTensorStorage a wider codec for it"
            )
        return value.to(self.dtype)

    def decode(self, stored: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        return stored.to(dtype)


@dataclass(frozen=True)
class OneHotCodec:
    """One-hot (or all-zero) vectors ``[..., A]`` stored as the ``uint8`` index of their 1
    (``A`` for all zeros): the last action of :class:`~fop_modules.recurrent.LastAction`.

    Examples:
        >>> codec = OneHotCodec()
        >>> last = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        >>> codec.encode("a", last)
        tensor([1, 3], dtype=torch.uint8)
        >>> bool((codec.decode(codec.encode("a", last), last.shape[1:], last.dtype) == last).all())
        True
    """

    @staticmethod
    def accepts(dtype: torch.dtype) -> bool:
        return dtype.is_floating_point

    def encode(self, key: NestedKey, value: torch.Tensor) -> torch.Tensor:
        n = value.shape[-1]
        if n >= torch.iinfo(torch.uint8).max:
            raise ValueError(f"OneHotCodec: {key!r} has {n} classes, more than uint8 holds")
        index = torch.where(value.any(-1), value.argmax(-1), n).to(torch.uint8)
        rebuilt = self.decode(index, value.shape[-1:], value.dtype)
        if not torch.equal(_bits(rebuilt), _bits(value)):
            raise ValueError(f"{key!r} is not one-hot (or all zeros) in every row: store it without a codec")
        return index

    def decode(self, stored: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        n = shape[-1]
        return F.one_hot(stored.long(), n + 1)[..., :n].to(dtype)


DEFAULT_CODECS = {("agents", "action"): IntegerCodec(torch.uint8), ("agents", "last_action"): OneHotCodec()}


def _bits(x: torch.Tensor) -> torch.Tensor:
    """Floats as integers of the same width, so that comparisons are bitwise (-0.0 != 0.0)."""
    return x.view(_BITS[x.dtype]) if x.dtype in _BITS else x


def _rows_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[n] bool: row i of a is bit-equal to row i of b."""
    equal = _bits(a) == _bits(b)
    return equal.flatten(1).all(-1) if equal.ndim > 1 else equal


def _key(key: NestedKey) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)


@dataclass
class _Layout:
    """Where each key of the written data lives: template order, shapes and dtypes per row."""

    template: dict[tuple[str, ...], tuple[torch.Size, torch.dtype]]  # every leaf, in data order
    dropped: set[tuple[str, ...]]  # root and next keys not stored
    shared: list[tuple[str, ...]]  # root keys whose ("next", k) is rebuilt from the successor
    stored: list[tuple[str, ...]]  # keys stored per row: root keys and next-only keys

    @classmethod
    def of(cls, template: dict, drop_keys: Sequence[tuple[str, ...]]) -> "_Layout":
        dropped = {k for d in drop_keys for k in (d, ("next", *d)) if k in template}
        roots = [k for k in template if k[0] != "next" and k not in dropped]
        shared = [k for k in roots if template.get(("next", *k)) == template[k]]
        rebuilt = {("next", *k) for k in shared}
        stored = [k for k in template if k not in dropped and k not in rebuilt]
        return cls(template, dropped, shared, stored)

    @staticmethod
    def template_of(data: TensorDictBase) -> dict:
        return {_key(k): (v.shape[1:], v.dtype) for k, v in data.items(True, True)}

    def state(self) -> list:
        return [[list(k), list(shape), str(dtype).removeprefix("torch.")] for k, (shape, dtype) in self.template.items()]

    @staticmethod
    def template_from_state(state: list) -> dict:
        return {tuple(k): (torch.Size(shape), getattr(torch, dtype)) for k, shape, dtype in state}


class CompactTensorStorage(LazyTensorStorage):
    """A :class:`~torchrl.data.LazyTensorStorage` that stores ``("next", k)`` only where the
    next row does not hold it, narrows actions and drops ``drop_keys`` (see the module docstring).

    Reading any index returns what a ``LazyTensorStorage`` would have returned, bit for bit, except
    for ``drop_keys`` (zeros). One-dimensional storages only; rows must be written by TorchRL's
    round-robin writer (``extend``), which the successor rule relies on.

    Args:
        max_size: capacity in rows (frames).
        drop_keys: root keys not stored, neither at the root nor under ``"next"``; read as zeros.
        codecs: ``key -> codec`` for root keys (and their ``"next"`` copies); None: integer
            actions as ``uint8`` and float one-hot last actions as ``uint8`` indices, where the
            data has them (continuous actions stay as they are).
        device: where the rows live.

    Examples:
        >>> from torchrl.data import TensorDictReplayBuffer
        >>> obs = torch.arange(5.0).unsqueeze(-1)  # one env, o_0 .. o_4
        >>> steps = TensorDict({"observation": obs[:4], ("next", "observation"): obs[1:],
        ...                     ("next", "reward"): torch.ones(4, 1)}, [4])
        >>> buffer = TensorDictReplayBuffer(storage=CompactTensorStorage(10), batch_size=2)
        >>> _ = buffer.extend(steps)
        >>> buffer[:4]["next", "observation"].squeeze(-1).tolist()
        [1.0, 2.0, 3.0, 4.0]
        >>> buffer.storage.side_rows  # only the last row keeps its own "next" observation
        1
    """

    def __init__(
        self,
        max_size: int,
        *,
        drop_keys: Sequence[NestedKey] = (),
        codecs: dict[NestedKey, Any] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(max_size, device=device)
        self.drop_keys = [_key(k) for k in drop_keys]
        self._default_codecs = codecs is None
        self.codecs = {_key(k): c for k, c in (DEFAULT_CODECS if codecs is None else codecs).items()}
        self._layout: _Layout | None = None
        self._side: TensorDictBase | None = None  # [S] encoded ("next", k) of unlinked rows
        self._side_used: torch.Tensor | None = None  # [S] bool

    # ------------------------------------------------------------------ writing
    def set(self, cursor, data: TensorDictBase, *, set_cursor: bool = True) -> None:
        if not is_tensor_collection(data):
            raise TypeError(f"CompactTensorStorage stores tensordicts, got {type(data).__name__}")
        cursor = torch.as_tensor(cursor, dtype=torch.long)
        if cursor.ndim == 0:
            cursor, data = cursor.reshape(1), data.unsqueeze(0)
        if data.batch_dims != 1 or cursor.shape != data.shape:
            raise ValueError(
                f"CompactTensorStorage writes rows [n] at n slots, got data {list(data.shape)} "
                f"and cursor {list(cursor.shape)}"
            )
        if len(cursor) > self.max_size:
            raise ValueError(f"cannot write {len(cursor)} rows into a storage of {self.max_size}")
        template = _Layout.template_of(data)
        if self._layout is None:
            self._set_layout(template)
        elif template != self._layout.template:
            raise ValueError(
                "CompactTensorStorage: the written keys, shapes or dtypes differ from the first "
                f"write's: {sorted(set(template.items()) ^ set(self._layout.template.items()), key=str)}"
            )
        linked = self._linked(cursor, data)
        if self.initialized:  # rows about to be overwritten give back their side entries
            self._free(cursor[cursor < len(self)])
        rows = TensorDict({k: self._encode(k, data.get(k)) for k in self._layout.stored}, data.shape)
        side = TensorDict({k: self._encode(k, data.get(("next", *k))[~linked]) for k in self._layout.shared},
                          [int((~linked).sum())])
        rows.set(SIDE_SLOT_KEY, torch.full(data.shape, -1, dtype=torch.int32))
        rows.get(SIDE_SLOT_KEY)[~linked] = self._allocate(side).to(data.device)
        super().set(cursor, rows.to(self.device), set_cursor=set_cursor)

    def _set_layout(self, template: dict) -> None:
        self._layout = _Layout.of(template, self.drop_keys)
        if self._default_codecs:  # e.g. no uint8 codec for continuous actions
            self.codecs = {k: c for k, c in self.codecs.items() if k in template and c.accepts(template[k][1])}

    def _linked(self, cursor: torch.Tensor, data: TensorDictBase) -> torch.Tensor:
        """[n] bool: the row's next step is the following row, written at the following slot."""
        linked = cursor[1:] == (cursor[:-1] + 1) % self.max_size
        for k in self._layout.shared:
            linked &= _rows_equal(data.get(("next", *k))[:-1], data.get(k)[1:])
        return torch.cat([linked, torch.zeros(1, dtype=torch.bool)])

    def _codec(self, key: tuple[str, ...]):
        """The codec of ``key``: a rebuilt ``("next", k)`` uses its root key's."""
        root = key[1:] if key[0] == "next" and key[1:] in self._layout.shared else key
        return self.codecs.get(root)

    def _encode(self, key: tuple[str, ...], value: torch.Tensor) -> torch.Tensor:
        codec = self._codec(key)
        return value if codec is None else codec.encode(key, value)

    def _decode(self, key: tuple[str, ...], stored: torch.Tensor) -> torch.Tensor:
        codec = self._codec(key)
        return stored if codec is None else codec.decode(stored, *self._layout.template[key])

    def _free(self, slots_of: torch.Tensor) -> None:
        old = self._storage.get(SIDE_SLOT_KEY)[slots_of]
        self._side_used[old[old >= 0].long()] = False

    def _allocate(self, entries: TensorDictBase) -> torch.Tensor:
        """Writes ``entries`` into free side slots (growing the table if needed); their slots."""
        need = entries.shape[0]
        if self._side is None:
            size = max(SIDE_MIN_ROWS, need)
            self._side = torch.empty_like(entries.to(self.device)[:1].expand(size)).clone()
            self._side_used = torch.zeros(size, dtype=torch.bool, device=self.device)
        free = (~self._side_used).nonzero().squeeze(-1)
        if free.numel() < need:
            size = self._side.shape[0]
            grown = max(size + need - free.numel(), math.ceil(size * SIDE_GROWTH))
            extra = torch.empty_like(self._side[:1].expand(grown - size)).clone()
            self._side = torch.cat([self._side, extra])
            self._side_used = torch.cat([self._side_used, torch.zeros(grown - size, dtype=torch.bool,
                                                                      device=self.device)])
            free = (~self._side_used).nonzero().squeeze(-1)
        slots = free[:need]
        if need:
            self._side[slots] = entries.to(self.device)
            self._side_used[slots] = True
        return slots.to(torch.int32)

    # ------------------------------------------------------------------ reading
    def get(self, index) -> TensorDictBase:
        if not self.initialized:
            raise RuntimeError("Cannot get elements out of a non-initialized storage.")
        if isinstance(index, slice) and index == slice(None):
            return self._storage[: len(self)]  # stored columns, for the samplers' boundary search
        if isinstance(index, tuple):
            if len(index) != 1:
                raise IndexError(f"CompactTensorStorage is one-dimensional, got an index of {len(index)} dims")
            index = index[0]
        if isinstance(index, slice):
            positions = torch.arange(len(self), device=self.device)[index]
        else:
            positions = torch.as_tensor(index, device=self.device)
            positions = positions.nonzero().squeeze(-1) if positions.dtype == torch.bool else positions.long()
        flat = positions.reshape(-1)
        flat = torch.where(flat < 0, flat + len(self), flat)
        if flat.numel() and not (0 <= int(flat.min()) and int(flat.max()) < len(self)):
            raise IndexError(f"index out of the {len(self)} stored rows")
        rows = self._rows(flat)
        return rows.reshape(positions.shape)

    def _rows(self, positions: torch.Tensor) -> TensorDictBase:
        """Decoded rows [n] at ``positions``, keys in the written order."""
        layout = self._layout
        stored = self._storage[positions]
        slots = stored.get(SIDE_SLOT_KEY)
        linked = slots < 0
        # linked rows read their successor's slot; the others (few) are then filled from the side table
        source = torch.where(linked, (positions + 1) % self.max_size, positions)
        unlinked = (~linked).nonzero().squeeze(-1)
        unlinked_slots = slots[unlinked].long()
        out = TensorDict({}, positions.shape, device=self.device)
        for key, (shape, dtype) in layout.template.items():
            if key in layout.dropped:
                value = torch.zeros((*positions.shape, *shape), dtype=dtype, device=self.device)
            elif key[0] == "next" and key[1:] in layout.shared:
                encoded = self._storage.get(key[1:])[source]
                encoded[unlinked] = self._side.get(key[1:])[unlinked_slots]
                value = self._decode(key, encoded)
            else:
                value = self._decode(key, stored.get(key))
            out.set(key, value)
        return out

    # ------------------------------------------------------------------ bookkeeping
    @property
    def side_rows(self) -> int:
        """Rows whose ``"next"`` values live in the side table (not in their successor)."""
        return 0 if self._side_used is None else int(self._side_used.sum())

    def nbytes(self) -> dict[str, int]:
        """Allocated bytes: ``rows`` (capacity x per-row columns) and ``side`` (the side table)."""
        def size(td):
            return 0 if td is None else sum(v.nbytes for v in td.values(True, True))
        side = size(self._side) + (0 if self._side_used is None else self._side_used.nbytes)
        return {"rows": size(self._storage) if self.initialized else 0, "side": side}

    def _empty(self) -> None:
        super()._empty()
        if self._side_used is not None:
            self._side_used.zero_()

    def state_dict(self) -> dict[str, Any]:
        """The filled rows, the side table and the layout (not the unfilled capacity)."""
        filled = len(self)
        return {
            "layout": None if self._layout is None else self._layout.state(),
            "rows": self._storage[:filled].clone().state_dict() if filled else None,
            "side": None if self._side is None else self._side.clone().state_dict(),
            "side_used": None if self._side_used is None else self._side_used.clone(),
            "_len": filled,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict["layout"] is None:
            self._layout, self._side, self._side_used, self._len = None, None, None, 0
            return
        self._set_layout(_Layout.template_from_state(state_dict["layout"]))
        rows = TensorDict()
        rows.load_state_dict(state_dict["rows"], strict=False)
        if not self.initialized:
            self._init(rows[0])
        self._storage[: rows.shape[0]] = rows.to(self.device)
        side = TensorDict()
        side.load_state_dict(state_dict["side"], strict=False)
        self._side = side.to(self.device).clone()
        self._side_used = state_dict["side_used"].to(self.device).clone()
        self._len = state_dict["_len"]
        self._bump_mutation_revision()


def make_replay_buffer(
    capacity: int, batch_size: int, sequence_length: int | None = None, *, compact: bool = True
) -> TensorDictReplayBuffer:
    """The learner's replay buffer: transitions (``sequence_length=None``) or slices of up to
    ``sequence_length`` steps within one trajectory (TorchRL's :class:`SliceSampler`: a slice never
    crosses an episode or a run of the trajectory stored apart; shorter ones are padded and masked by
    ``("collector", "mask")``, each slice's last step is marked truncated).

    For recurrent agents write whole episodes (:class:`~fop_modules.episodes.EpisodeAssembler`)
    with ``sequence_length`` at least the longest episode: every slice then starts at an episode's
    first step, marked ``"is_init"`` by the env's ``InitTracker`` (the sampler keeps that flag), and
    :func:`~fop_modules.episodes.mask_partial_episodes` masks the rare slice that does not.

    Sequence replay uses a :class:`CompactTensorStorage` (``compact=False``: TorchRL's plain
    ``LazyTensorStorage``) that also drops the GRU's carried ``"rnn_hidden"``: a slice from an
    episode's start needs no stored hidden state. Transition replay keeps the plain storage.

    Examples:
        >>> buffer = make_replay_buffer(1000, batch_size=4, sequence_length=8)
        >>> type(buffer.storage).__name__, buffer.sampler.slice_len
        ('CompactTensorStorage', 8)
    """
    if sequence_length is None:
        return TensorDictReplayBuffer(storage=LazyTensorStorage(capacity), batch_size=batch_size)
    storage = (CompactTensorStorage(capacity, drop_keys=[HIDDEN_KEY]) if compact
               else LazyTensorStorage(capacity))
    sampler = SliceSampler(
        slice_len=sequence_length,
        traj_key=TRAJ_KEY,
        init_key=None,  # keep the env's episode starts (the default "is_init" marks every slice start)
        strict_length=False,
        pad_output=True,
    )
    return TensorDictReplayBuffer(storage=storage, sampler=sampler, batch_size=batch_size * sequence_length)
