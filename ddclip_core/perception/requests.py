"""The engine's requests: language queries over what was seen and the bank, and enrolment of names.

Each raises RequestError with a message a user can act on; any other failure of the model is turned
into one too (named as such), so a service built on these answers ``success=false`` instead of dying.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from ..enrolled import PREFIX
from ..memory import MemoryFilter, SeenObject
from ..stamped import Stamp
from ..tracks import downsize
from .types import EnrollAnswer, QueryAnswer, QueryHit, QueryRequest, RequestError, Source
from .worker import EncodeJob

if TYPE_CHECKING:
    from .engine import Perception

MAX_RESULTS = 1000


def query(engine: Perception, request: QueryRequest) -> QueryAnswer:
    k = _check_k(request.k) or engine.settings.k_matches
    if not 0 <= int(request.sources) <= Source.BOTH:
        raise RequestError(f"unknown sources {int(request.sources)}: 1 = seen, 2 = bank, 3 = both")
    sources = Source(request.sources or Source.SEEN)
    where = memory_filter(engine, request)
    notes = []
    if sources & Source.BANK and engine.bank is None:
        if not sources & Source.SEEN:
            raise RequestError("no bank loaded (parameter 'bank'): ask the seen objects (sources = 1)")
        notes.append("no bank loaded (parameter 'bank'): answered from the seen objects only")
        sources = Source.SEEN
    vector = _query_vector(engine, request)
    hits: list[QueryHit] = []
    left_out = {"other frame": 0, "no pose": 0}
    if sources & Source.SEEN:
        with engine._lock:
            found, left_out = engine.memory.search(vector, k, where)
        hits.extend(_seen_hit(seen, score) for seen, score in found)
    if sources & Source.BANK:
        with engine._bank_lock:
            matches = engine.bank.search(vector, k)[0] if len(engine.bank) else []
        hits.extend(
            QueryHit("bank", m.score, id=m.id, name=m.name, category=str(m.metadata.get("category", "")))
            for m in matches
        )
    hits.sort(key=lambda hit: -hit.score)
    hits = hits[:k]
    if left_out.get("other frame"):
        with engine._lock:
            known = engine.memory.frames()
        frames = ", ".join(f for f in known if f != request.near_frame)
        count = left_out["other frame"]
        notes.append(f"{count} object(s) left out: posed in another frame ({frames}), which is not transformed")
    if left_out.get("no pose"):
        notes.append(f"{left_out['no pose']} object(s) left out: no pose known")
    answer = QueryAnswer(hits, "; ".join([f"{len(hits)} result(s)", *notes]))
    answer.left_out_other_frame, answer.left_out_no_pose = left_out.get("other frame", 0), left_out.get("no pose", 0)
    return answer


def _check_k(k: int) -> int:
    if k < 0 or k > MAX_RESULTS:
        raise RequestError(f"k must be in 0..{MAX_RESULTS} (0: the node's k_matches), got {k}")
    return k


def memory_filter(engine: Perception, request: QueryRequest) -> MemoryFilter:
    """The request's filters, checked: each problem is a RequestError naming it."""
    after, before = request.seen_after, request.seen_before
    if request.within_last_s < 0 or not math.isfinite(request.within_last_s):
        raise RequestError(f"within_last_s must be >= 0, got {request.within_last_s}")
    if request.within_last_s:
        since = Stamp.from_seconds(max(0.0, engine.clock().seconds - request.within_last_s))
        after = since if after is None else max(after, since)
    if after is not None and before is not None and after > before:
        raise RequestError(f"seen_after ({after.seconds:.3f}) is later than seen_before ({before.seconds:.3f})")
    if request.min_views < 0:
        raise RequestError(f"min_views must be >= 0, got {request.min_views}")
    centre = request.near
    if centre is not None or request.radius:
        if centre is None:
            raise RequestError("radius needs a point to be near (near, with its frame)")
        if not (math.isfinite(request.radius) and request.radius > 0) or not all(map(math.isfinite, centre)):
            raise RequestError(f"radius must be a positive number of metres, got {request.radius}")
        if not request.near_frame:
            raise RequestError("near needs the frame its point is given in (near.header.frame_id)")
        with engine._lock:  # the worker adds frames as it records
            known = engine.memory.frames()
        if known and request.near_frame not in known:
            listed = ", ".join(f"{frame} ({count})" for frame, count in known.items())
            raise RequestError(
                f"unknown frame {request.near_frame!r}: remembered poses are in {listed}; the node does not "
                "transform between frames"
            )
    exclude = (request.like_track_id,) if request.like_track_id else ()
    return MemoryFilter(after, before, request.near_frame, centre, request.radius, request.min_views,
                        request.name_contains.strip(), exclude)  # fmt: skip


def _query_vector(engine: Perception, request: QueryRequest) -> np.ndarray:
    """The embedding to rank by: of the text, of the images (as a tracked object's views), or of a track."""
    text = request.text.strip() if isinstance(request.text, str) else ""
    given = [bool(text), bool(len(request.images)), bool(request.like_track_id)]
    if sum(given) != 1:
        raise RequestError(
            "empty query text" if not any(given) else "give one of: a text, images, or like_track_id, not several"
        )
    if text:
        return engine.query_texts.embedding(engine.model, text)
    if request.images:
        job = EncodeJob("", prepare_images(engine, list(request.images)))
        return model_call(engine._encode, [job], what="encoding the query images")
    with engine._lock:
        vector = engine.memory.embedding(request.like_track_id)
    if vector is None:
        raise RequestError(f"no remembered object {request.like_track_id!r} to look like")
    return vector


def _seen_hit(seen: SeenObject, score: float) -> QueryHit:
    return QueryHit(
        "seen",
        score,
        track_id=seen.track_id,
        name=seen.name,
        last_seen=seen.last_seen,
        num_views=seen.num_views,
        pose=seen.pose,
        first_seen=seen.first_seen,
        sightings=seen.sightings,
        names=list(seen.names),
    )


def enroll(engine: Perception, name: str, category: str, track_id: str, images: list[np.ndarray]) -> EnrollAnswer:
    name = name.strip()
    if not name:
        raise RequestError("empty name")
    if images and track_id:
        raise RequestError("give a track_id or images, not both")
    if track_id:
        views, keys, cloud = _views_of(engine, track_id)
        if not views and cloud is None:
            raise RequestError(f"no views of track {track_id!r} (unknown, forgotten or expired)")
        job = EncodeJob(track_id, views, points=cloud, keys=keys, request=True)  # cached tokens serve
    elif images:
        job = EncodeJob("", prepare_images(engine, images))
    else:
        raise RequestError("give a track_id or images")
    # The same encoder path as recognition (fusion included), so an enrolled object matches itself.
    embedding = model_call(engine._encode, [job], what="encoding the views to enrol")
    with engine._bank_lock:  # enrolling a name again replaces its views
        engine.bank = engine.enrolled.add(engine.bank, embedding, name, category)
    if track_id:
        with engine._lock:
            if track_id in engine.memory:
                engine.memory.name(track_id, name)
    what = f"{len(job.views)} view(s)" + (" and a point cloud" if job.points is not None else "")
    return EnrollAnswer(PREFIX + name, f"enrolled {name!r} from {what}")


class QueryTexts:
    """The embeddings of the latest query texts, most recently asked kept. A robot asks for the same
    things again and again (a task loop, a UI that re-asks every second), and the text tower's pass
    (ViT-B-32: 77 tokens through 12 blocks, tens of ms on CPU) depends on the text alone: the engine's
    model never changes."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._embeddings: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def embedding(self, model, text: str) -> np.ndarray:
        """(1, embed_dim) unit embedding of ``text``; RequestError when the model cannot encode it."""
        with self._lock:
            known = self._embeddings.get(text)
            if known is not None:
                self._embeddings.move_to_end(text)
                self.hits += 1
                return known.copy()  # the caller's to change
        vector = model_call(model.encode_text, text, what="encoding the query text").cpu().numpy()
        with self._lock:
            self._embeddings[text] = vector.copy()
            while len(self._embeddings) > self.size:
                self._embeddings.popitem(last=False)
        return vector


def model_call(function, *args, what: str):
    """Run a model call for a request; its failure becomes that request's error, not the caller's crash."""
    try:
        return function(*args)
    except RequestError:
        raise
    except (ValueError, TypeError) as exc:
        raise RequestError(f"{what}: {exc}") from exc
    except Exception as exc:  # out of memory, a device error: the request fails, the engine goes on
        raise RequestError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def prepare_images(engine: Perception, images: list[np.ndarray]) -> list[np.ndarray]:
    """Images given to enrol, bounded in number and downsized as tracked views are (so enrolment and
    recognition preprocess alike)."""
    engine.check_image_count(len(images))
    for i, image in enumerate(images):
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
            raise RequestError(f"image {i} is not an (H, W, 3) uint8 image")
        if 0 in image.shape:
            raise RequestError(f"image {i} has no pixels")
    return [downsize(image, engine.buffer.policy.max_side) for image in images]


def _views_of(
    engine: Perception, track_id: str
) -> tuple[list[np.ndarray], list[int] | None, tuple[np.ndarray, np.ndarray] | None]:
    """A tracked object's current views, their buffer keys and its cloud (enrolment by track id)."""
    with engine._lock:
        track = engine.buffer.get(track_id)
        views = list(track.views) if track is not None else []
        keys = list(track.keys) if track is not None and views else None
    return views, keys, engine.clouds.get(track_id) if engine.clouds is not None else None
