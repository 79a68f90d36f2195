"""Encode each view once: the tokens of a view after the per-view blocks, kept while its object lives.

Blocks below ``layers_threshold`` (6 of 12 in the published model) see one view at a time, so their
output for a view never changes however the object's other views change. A re-encode after new views
then runs only the new views through those blocks (and preprocessing), and all of the object's views
through the cross-view blocks: after 2 new views of a 12-view object, ~0.58 of the full cost at
threshold 6.

``ViewTokenCache`` holds the tokens of many objects, keyed by (object, view key), bounded in bytes
(least recently used objects first) and kept on the model's device. ``ObjectViews`` is the one-object
handle for scripts that add views one at a time.

    views = ddclip_core.ObjectViews(model)
    views.add("mug_0.png"); views.add(second_view)
    embedding = views.embedding()            # equals model.encode_views(["mug_0.png", second_view])[0]
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .images import to_view

STORAGE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class CacheStats:
    hits: int = 0  # views whose tokens were reused
    misses: int = 0  # views run through the per-view blocks
    warmed: int = 0  # of those, ahead of their object's encode (``warm``)
    evicted_objects: int = 0  # objects dropped to stay within the byte bound
    invalidations: int = 0  # times every kept token was dropped: the model changed (``view_tokens_state``)


class ViewTokenCache:
    """Per-view tokens of many objects. Thread-safe; ``encode`` batches every object in one pass of each half."""

    def __init__(self, model, max_bytes: int = 512 * 2**20, storage: str = "fp32") -> None:
        if storage not in STORAGE:
            raise ValueError(f"storage must be one of {', '.join(STORAGE)}, got {storage!r}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.model, self.max_bytes, self.storage = model, max_bytes, STORAGE[storage]
        self._objects: OrderedDict[str, dict[int, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        # Objects forgotten while an encode or warm ran the model (lock released): it must not store them.
        self._forgets = 0  # calls of ``forget``
        self._running = 0  # encodes and warms running the model now
        self._forgotten_at: dict[str, int] = {}  # object -> the forget that dropped it, while any ran
        self._cleared_at = 0  # the last forget of everything, while any ran
        self._state = None  # the model's ``view_tokens_state`` the kept tokens came from
        self._dtype = torch.float32  # the type the model gives them in under that state (16 bit on autocast)
        self._view_bytes = 0  # one view's kept tokens (the last stored): how many views fit
        self._lock = threading.Lock()
        self.stats = CacheStats()

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def views(self) -> int:
        with self._lock:
            return sum(len(entries) for entries in self._objects.values())

    def encode(
        self,
        objects: Sequence[tuple[str, Sequence[int], Sequence[np.ndarray]]],
        *,
        normalize: bool = True,
        prune: bool = True,
    ) -> torch.Tensor:
        """(object id, view keys, views) per object -> (B, embed_dim): equal to ``encode_views`` of the views.

        A key names one view of its object for as long as the view is kept; views whose keys have tokens
        are not encoded again, and keys an object no longer lists are dropped (a view replaced by a more
        diverse one takes its tokens with it). ``prune=False`` keeps them: for a caller whose keys may be
        older than the cache's (a request encoding a track's views beside the encoder that warms them).
        """
        _check_objects(objects)
        missing, hits = [], {}
        with self._lock:
            self._check_model()
            for object_id, keys, views in objects:
                entries = self._objects.get(object_id, {})
                for key, view in zip(keys, views, strict=True):
                    if key in entries:  # taken now: a forget while the model runs cannot take them away
                        hits[(object_id, key)] = entries[key]
                    else:
                        missing.append((object_id, key, view))
            forgets = self._started()
        try:
            fresh = self.model.view_tokens([view for _, _, view in missing]) if missing else None
            found = {(object_id, key): fresh[i] for i, (object_id, key, _) in enumerate(missing)}
            # the type the model gave the kept ones in: an encode of hits alone runs the cross-view blocks
            # as one with a new view does (the same result whether or not a warm got there first)
            dtype = fresh.dtype if fresh is not None else self._dtype
            # this encode uses the fresh tokens as they are: it equals ``encode_views``
            packed = [
                hits[(o, k)].to(dtype) if (o, k) in hits else found[(o, k)] for o, keys, _ in objects for k in keys
            ]
        except BaseException:
            self._finished()
            raise
        with self._lock:
            self._running -= 1
            self.stats.misses += len(missing)
            self.stats.hits += len(hits)
            if fresh is not None and not self._forgotten_since(None, forgets):
                self._dtype = fresh.dtype
            for object_id, keys, _ in objects:
                if self._forgotten_since(object_id, forgets):
                    continue  # a forgotten object's tokens must not come back
                new = {key: _own(found[(object_id, key)], self.storage) for key in keys if (object_id, key) in found}
                self._store(object_id, keys, new, prune)
            self._evict([object_id for object_id, _, _ in objects])
            self._prune()
        tokens = torch.stack(packed)
        return self.model.embed_view_tokens(tokens, [len(keys) for _, keys, _ in objects], normalize=normalize)

    def warm(self, object_id: str, keys: Sequence[int], views: Sequence[np.ndarray]) -> int:
        """Run the views whose keys have no tokens yet through the per-view blocks now, ahead of the
        object's next ``encode`` (which then runs only the cross-view blocks on them); returns how many.
        Keys the object no longer lists are dropped, as ``encode`` does."""
        _check_objects([(object_id, keys, views)], allow_empty=True)
        with self._lock:
            self._check_model()
            entries = self._objects.get(object_id, {})
            missing = [(key, view) for key, view in zip(keys, views, strict=True) if key not in entries]
            if self._view_bytes and len(keys) * self._view_bytes > self.max_bytes:
                return 0  # its tokens would be dropped as soon as made: the encode runs them anyway
            if not missing:
                self._store(object_id, keys, {})
                self._evict([object_id])
                return 0
            forgets = self._started()
        try:
            fresh = self.model.view_tokens([view for _, view in missing])
        except BaseException:
            self._finished()
            raise
        with self._lock:
            self._running -= 1
            self.stats.misses += len(missing)
            kept = not self._forgotten_since(object_id, forgets)  # a forgotten object's tokens must not come back
            if kept:
                self._dtype = fresh.dtype
                self.stats.warmed += len(missing)
                new = {key: _own(fresh[i], self.storage) for i, (key, _) in enumerate(missing)}
                self._store(object_id, keys, new)
                self._evict([object_id])
            self._prune()
        return len(missing) if kept else 0

    def keep_only(self, object_id: str, keys: Sequence[int]) -> None:
        """Drop the object's tokens of views not in ``keys`` now, rather than at its next encode."""
        with self._lock:
            self._store(object_id, keys, {})

    def _store(self, object_id: str, keys: Sequence[int], new: dict[int, torch.Tensor], prune: bool = True) -> None:
        """The object's tokens of ``keys`` only (all it had, unless ``prune``), with ``new`` added; most
        recently used last (lock held; the caller evicts once it has stored every object it handles)."""
        if object_id not in self._objects and not new:
            return
        entries = self._objects.pop(object_id, {})
        listed = set(keys)
        kept = {key: tokens for key, tokens in entries.items() if key in listed or not prune}
        for key, tokens in new.items():
            kept.setdefault(key, tokens)
            self._view_bytes = tokens.nbytes
        self._bytes += _nbytes(kept) - _nbytes(entries)
        self._objects[object_id] = kept

    def _started(self) -> int:
        """An encode or warm starts running the model (lock held); returns the forget count to compare."""
        self._running += 1
        return self._forgets

    def _finished(self) -> None:
        with self._lock:
            self._running -= 1
            self._prune()

    def _forgotten_since(self, object_id: str | None, forgets: int) -> bool:
        """Whether a forget after ``forgets`` dropped this object (None: every object) (lock held)."""
        return self._cleared_at > forgets or (object_id is not None and self._forgotten_at.get(object_id, 0) > forgets)

    def _prune(self) -> None:
        if not self._running:  # no one left to ask: the record of forgotten objects is not needed
            self._forgotten_at.clear()

    def _check_model(self) -> None:
        """Drop every kept token if the model changed since they were computed: new or retrained weights,
        another precision, device or preprocessing give other tokens for the same view (lock held)."""
        state = self.model.view_tokens_state()
        if state == self._state:
            return
        if self._objects:
            self.stats.invalidations += 1
        self._forget(None)  # runs under the old state must not store their tokens either
        self._state, self._dtype, self._view_bytes = state, torch.float32, 0

    def forget(self, object_ids: Iterable[str] | None = None) -> None:
        """Drop these objects' tokens (all when None)."""
        object_ids = None if object_ids is None else list(object_ids)
        with self._lock:
            self._forget(object_ids)

    def _forget(self, object_ids: list[str] | None) -> None:
        """``forget`` with the lock held."""
        self._forgets += 1
        if self._running and object_ids is None:
            self._cleared_at = self._forgets
        elif self._running:
            self._forgotten_at.update(dict.fromkeys(object_ids, self._forgets))
        for object_id in list(self._objects) if object_ids is None else object_ids:
            entries = self._objects.pop(object_id, None)
            if entries is not None:
                self._bytes -= _nbytes(entries)

    def _evict(self, stored: list[str]) -> None:
        """After ``stored`` objects were stored: drop any of them larger than the bound on its own (it can
        never be kept: keeping it would flush every other first; the others were checked when stored), then
        the least recently used until the rest fit (lock held)."""
        for object_id in stored:
            if object_id in self._objects and _nbytes(self._objects[object_id]) > self.max_bytes:
                self._drop(object_id)
        while self._bytes > self.max_bytes and self._objects:
            self._drop(next(iter(self._objects)))

    def _drop(self, object_id: str) -> None:
        """Evict one object's tokens: none is stale, only too many (not ``_forget``) (lock held)."""
        self._bytes -= _nbytes(self._objects.pop(object_id))
        self.stats.evicted_objects += 1


def _nbytes(entries: dict[int, torch.Tensor]) -> int:
    return sum(t.nbytes for t in entries.values())


def _check_objects(objects: Sequence[tuple[str, Sequence[int], Sequence]], allow_empty: bool = False) -> None:
    """ValueError unless each object comes once, with one view per key and no key twice: a key names one
    view, and a repeated one would give both views the tokens of one."""
    seen = set()
    for object_id, keys, views in objects:
        if len(keys) != len(views) or (len(views) == 0 and not allow_empty):
            raise ValueError(f"object {object_id!r}: {len(keys)} keys for {len(views)} views")
        if len(set(keys)) != len(keys):
            raise ValueError(f"object {object_id!r}: a view key appears twice in {list(keys)}")
        if object_id in seen:
            raise ValueError(f"object {object_id!r} is listed twice in one call")
        seen.add(object_id)


def _own(tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A copy of one view's tokens in the storage type: a slice of the batch (what ``.to`` returns when the
    type is already right) would keep the whole batch's memory alive while the cache counts one view.
    A view whose tokens fp16 cannot hold (beyond 65504: some weights' outlier features might be) is kept
    in its own type instead, rather than as infinities that would make its object's embedding NaN."""
    kept = tokens.to(dtype, copy=True)
    if dtype == torch.float16 and not bool(torch.isfinite(kept).all()) and bool(torch.isfinite(tokens).all()):
        return tokens.clone()
    return kept


class ObjectViews:
    """One object whose views come one at a time; each view runs through the per-view blocks once.

    storage: the type the kept tokens are stored in; "fp32" (the default) keeps embeddings equal to
    ``encode_views`` of the same views to fp32 rounding, "fp16" / "bf16" halve the memory (the node's
    default is fp16)."""

    def __init__(self, model, storage: str = "fp32") -> None:
        self._cache = ViewTokenCache(model, max_bytes=2**62, storage=storage)
        self._views: dict[int, np.ndarray] = {}
        self._keys = itertools.count()

    def __len__(self) -> int:
        return len(self._views)

    def add(self, view) -> int:
        """Add one view: a path, PIL image or (H, W, 3) array (uint8, or float RGB in [0, 1]), as
        ``encode_views`` takes them; returns its key (to ``remove`` it later). The view is read and
        checked now; its tokens are computed at the next ``embedding``."""
        checked = to_view(view, f"view {len(self._views)}")
        # a caller's array is copied: a camera loop that reuses its frame buffer must not change a view
        # whose tokens are computed later
        key = next(self._keys)
        self._views[key] = checked.copy() if checked is view else checked
        return key

    def remove(self, key: int) -> None:
        """Remove a view; its kept tokens go now (``nbytes`` drops at once)."""
        if key not in self._views:
            raise KeyError(f"no view with key {key}")
        del self._views[key]
        self._cache.keep_only("object", list(self._views))

    def embedding(self, *, normalize: bool = True) -> torch.Tensor:
        """(embed_dim,) of all current views; only views added since the last call are encoded."""
        if not self._views:
            raise ValueError("no views to embed")
        keys = list(self._views)
        return self._cache.encode([("object", keys, [self._views[k] for k in keys])], normalize=normalize)[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the kept tokens."""
        return self._cache.nbytes

    @property
    def stats(self) -> CacheStats:
        """Views reused (``hits``) and run through the per-view blocks (``misses``) so far."""
        return self._cache.stats
