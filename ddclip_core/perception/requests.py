"""The engine's requests: language queries over what was seen and the bank, and enrolment of names.

Each raises RequestError with a message a user can act on; any other failure of the model is turned
into one too (named as such), so a service built on these answers ``success=false`` instead of dying.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..enrolled import PREFIX
from .types import EnrollAnswer, QueryAnswer, QueryHit, QueryRequest, RequestError, Source
from .worker import EncodeJob

if TYPE_CHECKING:
    from .engine import Perception

MAX_RESULTS = 1000


def query(engine: Perception, request: QueryRequest) -> QueryAnswer:
    text = request.text.strip() if isinstance(request.text, str) else ""
    if not text:
        raise RequestError("empty query text")
    if request.k < 0 or request.k > MAX_RESULTS:
        raise RequestError(f"k must be in 0..{MAX_RESULTS} (0: the node's k_matches), got {request.k}")
    k = request.k or engine.settings.k_matches
    if not 0 <= int(request.sources) <= Source.BOTH:
        raise RequestError(f"unknown sources {int(request.sources)}: 1 = seen, 2 = bank, 3 = both")
    sources = Source(request.sources or Source.SEEN)
    notes = []
    if sources & Source.BANK and engine.bank is None:
        if not sources & Source.SEEN:
            raise RequestError("no bank loaded (parameter 'bank'): ask the seen objects (sources = 1)")
        notes.append("no bank loaded (parameter 'bank'): answered from the seen objects only")
        sources = Source.SEEN
    vector = model_call(engine.model.encode_text, text, what="encoding the query text").cpu().numpy()
    hits: list[QueryHit] = []
    if sources & Source.SEEN:
        with engine._lock:
            found = engine.memory.search(vector, k)
        for seen, score in found:
            hits.append(
                QueryHit(
                    "seen",
                    score,
                    track_id=seen.track_id,
                    name=seen.name,
                    last_seen=seen.last_seen,
                    num_views=seen.num_views,
                    pose=seen.pose,
                )
            )
    if sources & Source.BANK:
        with engine._bank_lock:
            matches = engine.bank.search(vector, k)[0] if len(engine.bank) else []
        hits.extend(QueryHit("bank", m.score, id=m.id, name=m.name) for m in matches)
    hits.sort(key=lambda hit: -hit.score)
    hits = hits[:k]
    return QueryAnswer(hits, "; ".join([f"{len(hits)} result(s)", *notes]))


def enroll(engine: Perception, name: str, category: str, track_id: str, images: list[np.ndarray]) -> EnrollAnswer:
    name = name.strip()
    if not name:
        raise RequestError("empty name")
    if track_id:
        views, cloud = engine.views_of(track_id)
        if not views and cloud is None:
            raise RequestError(f"no views of track {track_id!r} (unknown, forgotten or expired)")
        job = EncodeJob(track_id, views, points=cloud)
    elif images:
        job = EncodeJob("", engine.prepare_images(images))
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
