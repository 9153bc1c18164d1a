"""The engine's batch state on the model's device: a KV cache that grows in place, plus the
per-row tensors a decode step feeds the model.

Rows are left padded to a shared right edge, ``width`` columns wide: a decode step writes
every row's new key and value at column ``width`` of preallocated buffers
(``(row capacity, heads, column capacity, head dim)`` per layer) instead of
concatenating a new cache, so a step's cost does not include copying the cache.
Capacities double when full. Rows that join are written into free rows (right aligned);
rows that leave are replaced by rows moved up from the end; the padding columns every
remaining row shares are dropped once they are a quarter of the width. Host-side
bookkeeping (row count, width, each row's used length) means none of this reads a tensor
back from the device.

The model sees the buffers through :class:`BufferLayer`, a ``transformers`` cache layer
whose ``update`` writes in place and returns views.
"""

from __future__ import annotations

from typing import Any

import torch


class KVBatch:
    """Rows, their KV cache and per-row tensors (mask, positions, slots, last token).

    Args:
        device: where every tensor lives (the model's device).
        num_layers: cache layers the model writes (``num_hidden_layers``).
        rows, cols: initial capacities (doubled when short).
    """

    def __init__(
        self, device: torch.device, num_layers: int, rows: int = 1, cols: int = 64
    ) -> None:
        self.device = device
        self.n = 0  # rows in use
        self.width = 0  # columns in use (shared right edge)
        self.lens: list[int] = []  # each row's used columns, counted from the right edge
        # per layer [keys, values], allocated at the layer's first write (its heads and dtype)
        self.layers: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]
        self._alloc_state(rows, cols)

    def _alloc_state(self, rows: int, cols: int) -> None:
        """(Re)allocate the per-row tensors, keeping what the first ``self.n`` rows hold."""
        old = getattr(self, "mask", None)
        mask = torch.zeros(rows, cols, dtype=torch.long, device=self.device)
        per_row = [torch.zeros(rows, dtype=torch.long, device=self.device) for _ in range(3)]
        if old is not None:
            mask[: self.n, : self.width] = old[: self.n, : self.width]
            for new, was in zip(per_row, (self.pos, self.slots, self.last), strict=True):
                new[: self.n] = was[: self.n]
        self.mask, (self.pos, self.slots, self.last) = mask, per_row
        self.layers = [[self._regrown(t, rows, cols) for t in kv] for kv in self.layers]

    def _regrown(self, t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        new = torch.zeros(rows, t.shape[1], cols, t.shape[3], dtype=t.dtype, device=t.device)
        new[: self.n, :, : self.width] = t[: self.n, :, : self.width]
        return new

    @property
    def row_capacity(self) -> int:
        """Rows the buffers hold before they are reallocated."""
        return self.mask.shape[0]

    @property
    def col_capacity(self) -> int:
        """Columns the buffers hold before they are reallocated."""
        return self.mask.shape[1]

    def reserve(self, rows: int, cols: int) -> None:
        """Make room for ``rows`` rows and ``cols`` columns, doubling what is short."""
        r, c = self.row_capacity, self.col_capacity
        if rows > r or cols > c:
            self._alloc_state(
                max(rows, 2 * r if rows > r else r), max(cols, 2 * c if cols > c else c)
            )

    # ---- what one forward pass sees ----------------------------------------------------------

    def cache(self) -> Any:
        """A ``transformers`` cache over the buffers for the next forward pass."""
        from transformers import DynamicCache

        cache = DynamicCache()
        layer = buffer_layer_class()
        cache.layers = [layer(self, i) for i in range(len(self.layers))]
        return cache

    def write(self, idx: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Write layer ``idx``'s new states at column ``width``; views up to the new edge."""
        if not self.layers[idx]:
            shape = (self.row_capacity, keys.shape[1], self.col_capacity, keys.shape[3])
            self.layers[idx] = [keys.new_zeros(shape), values.new_zeros(shape)]
        q = keys.shape[2]
        k_buf, v_buf = self.layers[idx]
        k_buf[: self.n, :, self.width : self.width + q] = keys
        v_buf[: self.n, :, self.width : self.width + q] = values
        end = self.width + q
        return k_buf[: self.n, :, :end], v_buf[: self.n, :, :end]

    def open_columns(self, mask: torch.Tensor) -> torch.Tensor:
        """Set the mask of the next ``mask.shape[1]`` columns; the mask the forward pass takes."""
        q = mask.shape[1]
        self.reserve(self.n, self.width + q)
        self.mask[: self.n, self.width : self.width + q] = mask
        return self.mask[: self.n, : self.width + q]

    def advance(self, q: int) -> None:
        """The forward pass wrote ``q`` columns, each row's own (a decode step)."""
        self.width += q
        self.lens = [n + q for n in self.lens]

    # ---- rows joining and leaving ------------------------------------------------------------

    def add_rows(self, count: int) -> None:
        """Start an empty batch of ``count`` rows (a prefill builds its cache this way)."""
        self.reserve(count, self.col_capacity)
        self.n, self.width, self.lens = count, 0, [0] * count

    def join(self, other: KVBatch, keep: list[int]) -> None:
        """Append rows ``keep`` of ``other`` (a finished prefill), right aligned with these."""
        j, width = len(keep), max(self.width, other.width)
        self.reserve(self.n + j, width + 1)
        if width > self.width:
            self._shift(width - self.width)
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        rows, start = slice(self.n, self.n + j), width - other.width
        self.mask[rows, :start] = 0
        self.mask[rows, start:width] = other.mask.index_select(0, idx)[:, : other.width]
        for i, theirs in enumerate(other.layers):
            if theirs and not self.layers[i]:
                self.layers[i] = [self._fresh_like(src) for src in theirs]
            for buf, src in zip(self.layers[i], theirs, strict=True):
                buf[rows, :, start:width] = src.index_select(0, idx)[:, :, : other.width]
        for mine, theirs in zip(
            (self.pos, self.slots, self.last), (other.pos, other.slots, other.last), strict=True
        ):
            mine[rows] = theirs.index_select(0, idx)
        self.lens += [other.lens[i] for i in keep]
        self.n += j

    def _fresh_like(self, src: torch.Tensor) -> torch.Tensor:
        shape = (self.row_capacity, src.shape[1], self.col_capacity, src.shape[3])
        return torch.zeros(shape, dtype=src.dtype, device=src.device)

    def _shift(self, d: int) -> None:
        """Move every row's columns ``d`` to the right (a longer prompt joins)."""
        w = self.width
        self.mask[: self.n, d : d + w] = self.mask[: self.n, :w].clone()
        self.mask[: self.n, :d] = 0
        for kv in self.layers:
            for buf in kv:
                buf[: self.n, :, d : d + w] = buf[: self.n, :, :w].clone()
        self.width = w + d

    def keep(self, keep: list[int]) -> list[int]:
        """Keep only rows ``keep`` (ascending); returns the new row order as old indices.

        Each leaving row's place is taken by a kept row from the end, so only the moved
        rows are copied.
        """
        n = len(keep)
        kept = set(keep)
        holes = [i for i in range(n) if i not in kept]
        movers = [i for i in keep if i >= n]
        order = list(range(n))
        if holes:
            to = torch.tensor(holes, dtype=torch.long, device=self.device)
            frm = torch.tensor(movers, dtype=torch.long, device=self.device)
            for t in (
                self.mask,
                self.pos,
                self.slots,
                self.last,
                *[b for kv in self.layers for b in kv],
            ):
                t.index_copy_(0, to, t.index_select(0, frm))
            for h, m in zip(holes, movers, strict=True):
                order[h] = m
        self.lens = [self.lens[i] for i in order]
        self.n = n
        self._trim()
        return order

    def _trim(self) -> None:
        """Drop leading columns that are padding for every row, once they are a quarter."""
        if not self.n:
            self.width = 0
            return
        start = self.width - max(self.lens)
        if start <= 0 or 4 * start < self.width:
            return
        w = self.width - start
        self.mask[: self.n, :w] = self.mask[: self.n, start : self.width].clone()
        for kv in self.layers:
            for buf in kv:
                buf[: self.n, :, :w] = buf[: self.n, :, start : self.width].clone()
        self.width = w


_LAYER_CLASS: list[type] = []


def buffer_layer_class() -> type:
    """A ``transformers`` ``DynamicLayer`` whose storage is a :class:`KVBatch` (made once).

    ``update`` writes the new states in place and returns views up to the new edge;
    ``get_seq_length`` is the batch's width, from which the model derives its cache
    positions and mask sizes.
    """
    if _LAYER_CLASS:
        return _LAYER_CLASS[0]
    from transformers.cache_utils import DynamicLayer

    class BufferLayer(DynamicLayer):
        """One model layer's view of a :class:`KVBatch`."""

        def __init__(self, batch: KVBatch, idx: int) -> None:
            super().__init__()
            self.batch, self.idx = batch, idx
            self.is_initialized = True
            self.device = batch.device

        def update(self, key_states, value_states, *args, **kwargs):
            self.keys, self.values = self.batch.write(self.idx, key_states, value_states)
            return self.keys, self.values

        def get_seq_length(self, *args, **kwargs) -> int:
            return self.batch.width

    _LAYER_CLASS.append(BufferLayer)
    return BufferLayer
