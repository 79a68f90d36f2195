"""Batched point-set operations of the Gaussian encoder, with padding masks, in plain torch.

Every discrete choice (which Gaussians become centres, which are neighbours) is made from
coordinates only, with element-wise arithmetic whose result does not depend on the batch it sits in,
and ties are broken by position in a canonical order. So the choices, and therefore the embedding,
are the same whatever the order of the Gaussians and whatever else is padded into the batch.
"""

from __future__ import annotations

import torch

_KNN_CHUNK_ELEMENTS = 1 << 20  # (B, centres, N) distances per block: 4 MB, measured 2x faster than 16 MB


def canonical_order(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each object's rows lexicographically by all feature columns, padding last.

    After this, the rows' input order no longer matters; position in the sorted order breaks ties.
    """
    # Padding sorts last on x = +inf (features are finite); its own order does not matter.
    x = features[..., 0].masked_fill(~mask, torch.inf)
    order = torch.argsort(x, dim=1, stable=True)
    x_sorted, valid_sorted = x.gather(1, order), mask.gather(1, order)
    # Ties in x between real rows (duplicates, depth-image columns) need the full lexicographic sort.
    if bool(((x_sorted[:, 1:] == x_sorted[:, :-1]) & valid_sorted[:, 1:]).any()):
        order = torch.arange(features.shape[1], device=features.device).expand(features.shape[:2])
        for column in reversed(range(features.shape[-1])):
            key = features[..., column].gather(1, order)
            order = order.gather(1, torch.argsort(key, dim=1, stable=True))
        order = order.gather(1, torch.argsort((~mask).gather(1, order).to(torch.uint8), dim=1, stable=True))
    return gather(features, order), mask.gather(1, order)


def gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, N, C), index (B, *S) -> (B, *S, C)."""
    batch, channels = values.shape[0], values.shape[-1]
    flat = index.reshape(batch, -1, 1).expand(-1, -1, channels)
    return values.gather(1, flat).reshape(*index.shape, channels)


def sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (B, S, 3), b (B, N, 3) -> (B, S, N), element-wise (no matmul, so batch-independent bits)."""
    d = None
    for i in range(3):
        diff = a[:, :, None, i] - b[:, None, :, i]
        d = diff * diff if d is None else d + diff * diff  # no fused multiply-add: see _sq_distance_to
    return d


def farthest_point_sample(xyz: torch.Tensor, mask: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, count) of farthest point sampling over valid points, and their validity.

    Starts from the point farthest from the bounding-box centre; argmax takes the first of equal
    values, i.e. the lexicographically smallest after ``canonical_order``. Objects with fewer than
    ``count`` valid points get every point once, then invalid filler entries.
    """
    xyz, batch = xyz.detach(), xyz.shape[0]  # a discrete choice: no gradient flows through it
    axes = [xyz[..., i].contiguous() for i in range(3)]
    low = torch.where(mask[..., None], xyz, torch.inf).amin(1)
    high = torch.where(mask[..., None], xyz, -torch.inf).amax(1)
    from_centre = _sq_distance_to(axes, ((low + high) / 2)[:, :, None])
    current = torch.where(mask, from_centre, -1.0).argmax(1, keepdim=True)
    # -1 marks padding and points already taken: min(-1, d >= 0) keeps the mark, argmax never picks it.
    nearest = torch.where(mask, torch.inf, -1.0)
    chosen = torch.empty(batch, count, dtype=torch.long, device=xyz.device)
    for i in range(count):
        chosen[:, i : i + 1] = current
        if i + 1 == count:
            break
        picked = torch.stack([axis.gather(1, current) for axis in axes], dim=1)  # (B, 3, 1)
        torch.minimum(nearest, _sq_distance_to(axes, picked), out=nearest)
        nearest.scatter_(1, current, -1.0)
        current = nearest.argmax(1, keepdim=True)
    valid = torch.arange(count, device=xyz.device)[None] < mask.sum(1, keepdim=True)
    return chosen, valid


def _sq_distance_to(axes: list[torch.Tensor], point: torch.Tensor) -> torch.Tensor:
    # Separate multiplies and adds, never fused ones (addcmul / FMA): those may round differently in
    # the vectorised body and the scalar tail of a kernel, which would make results depend on padding.
    d = axes[0] - point[:, 0]
    d = d * d
    for i in (1, 2):
        diff = axes[i] - point[:, i]
        d = d + diff * diff
    return d


def knn(query: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest valid points of xyz (B, N, 3) to each query (B, S, 3): indices (B, S, k), validity.

    Ranked by (distance, index) exactly, so that equal distances never depend on topk's internal
    tie handling: rows whose top k hold a tie are ranked again with the non-negative float32
    distance's bits (an order-preserving integer) packed above the index in one int64 key.
    Fewer than k valid points: the remainder is marked invalid.
    """
    query, xyz = query.detach(), xyz.detach()
    batch, num_query = query.shape[:2]
    num_points = xyz.shape[1]
    step = max(1, _KNN_CHUNK_ELEMENTS // max(1, batch * num_points))
    found, distances = [], []
    for start in range(0, num_query, step):
        d = sq_distances(query[:, start : start + step], xyz).masked_fill(~mask[:, None, :], torch.inf)
        values, index = torch.topk(d, k, dim=-1, largest=False, sorted=True)
        tied = (values[..., 1:] == values[..., :-1]).any(-1) | ((d <= values[..., -1:]).sum(-1) > k)
        if bool(tied.any()):
            rows = tied.nonzero(as_tuple=True)
            order = torch.arange(num_points, device=xyz.device, dtype=torch.int64)
            packed = (d[rows].view(torch.int32).to(torch.int64) << 32) | order
            index[rows] = torch.topk(packed, k, dim=-1, largest=False, sorted=True).values & 0xFFFFFFFF
        found.append(index)
        distances.append(values)
    return torch.cat(found, dim=1), torch.isfinite(torch.cat(distances, dim=1))


def masked_max(values: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over ``dim`` of the valid entries (valid has values' shape without the channel axis)."""
    return values.masked_fill(~valid[..., None], -torch.inf).amax(dim)


def masked_mean(values: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    weights = valid[..., None].to(values.dtype)
    return (values * weights).sum(dim) / weights.sum(dim).clamp_min(1.0)
