"""Which packed views belong to which object, and attention over them without padding.

Views stay packed, (N, L, D) for the N real views of all objects. Cross-view attention runs over all
tokens of an object's views together; objects are grouped by view count, so that each group is one
attention call on (objects, count * L) sequences, with no padding and no mask: a batch of objects with
different view counts costs what its real views cost, and gives the same result as each object alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

Attention = Callable[..., torch.Tensor]  # as F.scaled_dot_product_attention(q, k, v, attn_mask=...)


def attend(
    qkv: torch.Tensor,
    heads: int,
    attention: Attention,
    mask: torch.Tensor | None = None,
    query_every: int = 1,
) -> torch.Tensor:
    """Self-attention of sequences (S, T, 3D), queries, keys and values side by side as in_proj gives
    them, -> (S, T / query_every, D). query_every=L: only every L-th token asks (each view's CLS)."""
    s, t, three_d = qkv.shape
    d = three_d // 3
    q, k, v = qkv.view(s, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    out = attention(q[:, :, ::query_every], k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(s, -1, d)


class ViewGroups:
    """The objects of a batch of packed views: view counts, and the views of each view count."""

    def __init__(self, view_counts: list[int], device: torch.device) -> None:
        if not view_counts or min(view_counts) < 1:
            raise ValueError(f"every object needs at least one view, got view counts {view_counts}")
        self.counts = list(view_counts)
        self.num_objects = len(view_counts)
        self.uniform = min(view_counts) == max(view_counts)
        # from the Python list, not repeat_interleave on a tensor: no data-dependent shape (torch.compile)
        owners = [i for i, count in enumerate(view_counts) for _ in range(count)]
        self.object_of_view = torch.tensor(owners, device=device)
        self.by_count: list[tuple[int, torch.Tensor]] = []  # (count, its objects' packed views, object-major)
        if not self.uniform:  # from the Python list: no device round trip
            starts = [0, *itertools.accumulate(view_counts[:-1])]
            for count in sorted(set(view_counts)):
                firsts = [start for start, c in zip(starts, view_counts, strict=True) if c == count]
                rows = [first + i for first in firsts for i in range(count)]
                self.by_count.append((count, torch.tensor(rows, device=device)))

    def attend(self, qkv: torch.Tensor, heads: int, attention: Attention, query_every: int = 1) -> torch.Tensor:
        """Attention across each object's views: packed (N, L, 3D) -> (N, L / query_every, D)."""
        n, length, three_d = qkv.shape
        if self.uniform:
            sequences = qkv.reshape(self.num_objects, n // self.num_objects * length, three_d)
            return attend(sequences, heads, attention, None, query_every).reshape(n, length // query_every, -1)
        out = qkv.new_empty(n, length // query_every, three_d // 3)
        for count, rows in self.by_count:
            sequences = qkv[rows].view(-1, count * length, three_d)
            out[rows] = attend(sequences, heads, attention, None, query_every).view(len(rows), -1, three_d // 3)
        return out

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) per-view rows -> (B, C) per-object mean over that object's views."""
        total = x.new_zeros(self.num_objects, x.shape[-1]).index_add_(0, self.object_of_view, x)
        counts = torch.tensor(self.counts, device=x.device, dtype=x.dtype)
        return total / counts[:, None]
