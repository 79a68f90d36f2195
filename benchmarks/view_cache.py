"""View cache benchmark: a 12-view track re-encoded after 1, 2 and 4 new views, incremental (cached
per-view tokens) against the full encode of the same views, in the same run; and the memory it costs.

The arithmetic floor of an incremental re-encode after n new views is n/12 of the per-view half plus all
of the cross-view half (~0.58 of the full cost after 2 new views at threshold 6); both halves are timed
on their own here too, all in turns (a, b, c, ...) so that a shared machine's load hits each alike.

    .venv/bin/python benchmarks/view_cache.py                         # CPU fp32, ViT-B-32
    .venv/bin/python benchmarks/view_cache.py --device cuda --precision bf16 --batch 200
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from _timing import interleaved, rss_mb

from ddclip_core import load_model
from ddclip_core.view_cache import ViewTokenCache

NEW_VIEWS = (1, 2, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--storage", default="fp16", help="cache storage: fp32, fp16, bf16 (default: fp16)")
    parser.add_argument("--batch", type=int, default=1, help="tracks re-encoded together (default: 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(None, device=args.device, precision=args.precision)
    device = model.device
    rng = np.random.default_rng(0)
    tracks = [list(rng.integers(0, 256, (12, 224, 224, 3), dtype=np.uint8)) for _ in range(args.batch)]
    print(f"ViT-B-32 at threshold {model.layers_threshold} on {device} ({args.precision}), {args.batch} track(s) "
          f"x 12 views, cache storage {args.storage}, {torch.get_num_threads()} threads")  # fmt: skip

    all_views = [v for track in tracks for v in track]
    tokens = model.view_tokens(all_views)
    runs = {
        "full": lambda: model.encode_views(tracks, batch_size=args.batch),
        "per-view half": lambda: model.view_tokens(all_views),
        "cross-view half": lambda: model.embed_view_tokens(tokens, [12] * args.batch),
    }
    setups = {}
    for new in NEW_VIEWS:  # each timed from the same state: 12 - new views cached, then the grown track
        cache = ViewTokenCache(model, max_bytes=2**40, storage=args.storage)
        seen = [(str(i), list(range(12 - new)), t[: 12 - new]) for i, t in enumerate(tracks)]
        fresh = [np.ascontiguousarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(new)]
        grown = [(str(i), list(range(12)), [*t[: 12 - new], *fresh]) for i, t in enumerate(tracks)]
        setups[new] = lambda cache=cache, seen=seen: (cache.forget(), cache.encode(seen))
        runs[new] = lambda cache=cache, grown=grown: cache.encode(grown)
    times = interleaved(runs, device, args.repeats, setups=setups)
    full, per_view, cross = times["full"], times["per-view half"], times["cross-view half"]
    print(f"full encode {full * 1e3:8.1f} ms   (per-view half {per_view * 1e3:.1f} ms, cross-view half "
          f"{cross * 1e3:.1f} ms; all timed in turns)")  # fmt: skip
    for new in NEW_VIEWS:
        floor = (new / 12 * per_view + cross) / full
        print(f"after {new} new view(s): incremental {times[new] * 1e3:8.1f} ms = {times[new] / full:.2f} x full "
              f"(arithmetic floor {floor:.2f} x; goal after 2: <= 0.62 x)")  # fmt: skip

    per_view_bytes = tokens[0].numel() * {"fp32": 4, "fp16": 2, "bf16": 2}[args.storage]
    before = rss_mb()
    big = ViewTokenCache(model, max_bytes=2**40, storage=args.storage)
    for start in range(0, 200, 20):
        big.encode([(f"t{i}", list(range(12)), tracks[0]) for i in range(start, start + 20)])
    after = rss_mb()
    print(f"memory: {per_view_bytes / 1024:.0f} KiB per cached view ({args.storage}); 200 tracks x 12 views hold "
          f"{big.nbytes / 2**20:.0f} MiB of tokens, process RSS {before:.0f} -> {after:.0f} MiB "
          f"(the cache is {big.nbytes / 2**20 / after:.0%} of it)")  # fmt: skip


if __name__ == "__main__":
    main()
