"""Query texts benchmark: a language query to the engine asked the first time (the text tower runs) and asked
again (its kept embedding answers), in the same run, over the same remembered objects.

The engine keeps the embeddings of the 256 most recently asked texts (``QueryTexts``). A first ask pays
the text tower (ViT-B-32: 77 tokens through 12 blocks) and the search; a repeat pays the search alone,
which is what a robot's task loop or a UI re-asking every second sees.

    .venv/bin/python benchmarks/query_texts.py                   # CPU fp32, ViT-B-32, 40 texts
    .venv/bin/python benchmarks/query_texts.py --device cuda --precision auto
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
from _timing import percentiles, sync

from ddclip_core import load_model
from ddclip_core.perception import Perception, PerceptionConfig, PerceptionSettings, QueryRequest

THINGS = ("mug", "chair", "sofa", "lamp", "book", "plant", "bottle", "shoe", "laptop", "ball")
COLOURS = ("red", "blue", "green", "white")


def remember(engine: Perception, objects: int, views: int) -> None:
    """``objects`` tracks of random views, encoded and in the engine's memory."""
    rng = np.random.default_rng(0)
    for track in range(objects):
        for view in range(views):
            image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
            engine.add_view(f"t{track}", image, ended=view == views - 1)
    deadline = time.monotonic() + 600
    while len(engine.memory) < objects:
        if time.monotonic() > deadline:
            raise SystemExit("the engine did not encode the tracks within 10 minutes")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--weights", help="weights file (default: random ViT-B-32; speed does not depend on values)")
    parser.add_argument("--objects", type=int, default=8, help="remembered objects the queries rank")
    parser.add_argument("--repeats", type=int, default=5, help="repeat asks of each text")
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.weights, device=args.device, precision=args.precision)
    engine = Perception(model, PerceptionConfig(), PerceptionSettings(min_views=2))
    engine.start()
    remember(engine, args.objects, views=2)
    texts = [f"a {colour} {thing}" for colour in COLOURS for thing in THINGS]
    engine.query(QueryRequest("warm up", k=5))  # the text tower's first pass allocates

    first, again = [], []
    for text in texts:  # each text first, then again: the same memory, the same search
        for times in [first] + [again] * args.repeats:
            sync(model.device)
            start = time.perf_counter()
            engine.query(QueryRequest(text, k=5))
            sync(model.device)
            times.append(time.perf_counter() - start)
    engine.close()

    def line(name: str, times: list[float]) -> str:
        p50, p99 = percentiles(times)
        return f"  {name:<28} p50 {p50 * 1e3:8.3f} ms  p99 {p99 * 1e3:8.3f} ms  ({len(times)} asks)"

    print(f"device {model.device}, precision {model.precision}; {len(texts)} texts over {args.objects} objects")
    print(line("first ask (text tower)", first))
    print(line("asked again (kept)", again))
    print(f"  a repeat costs {statistics.median(again) / statistics.median(first):.4f}x a first ask (p50)")


if __name__ == "__main__":
    main()
