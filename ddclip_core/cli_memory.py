"""``ddclip memory info|list|query|export``: what a robot remembered, read after (or during) a run.

The database is opened read-only, so these run beside a node that writes it. Times are ROS times as the
node stored them (bag time for a replayed bag); ``--since S`` means the S seconds before the newest
sighting in the memory, the end of the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from typing import TYPE_CHECKING, Any

from .atomic import atomic_path
from .cli_common import add_model_args, load_from_args, non_negative_int, output_path, positive_int
from .memory_store import MemoryStore, database_path
from .stamped import Stamp

if TYPE_CHECKING:  # imported by the commands that run (the memory pulls in faiss): `ddclip --help` stays fast
    from .memory import MemoryFilter, ObjectMemory, SeenObject


def _open(args: argparse.Namespace) -> ObjectMemory:
    path = database_path(args.memory)
    store = MemoryStore(path, read_only=True)  # the dimension is recorded in the database
    dim = int(store.meta.get("dim", 0))
    store.close()
    from .memory import ObjectMemory  # after the cheap checks: a wrong path is reported before faiss loads

    return ObjectMemory(dim, max_objects=10_000_000, path=path, read_only=True)


def _filter(args: argparse.Namespace, memory: ObjectMemory) -> MemoryFilter:
    if args.since is not None and not (math.isfinite(args.since) and args.since > 0):
        raise ValueError(f"--since wants a number of seconds > 0, got {args.since}")
    if args.frame and not args.near:
        raise ValueError("--frame applies to --near: give both")
    newest = max((o.last_seen for o in memory.objects()), default=Stamp())
    after = Stamp.from_seconds(max(0.0, newest.seconds - args.since)) if args.since else None
    centre, radius = None, 0.0
    if args.near:
        try:
            parts = [float(v) for v in args.near.split(",")]
        except ValueError:
            parts = []
        if len(parts) != 4 or not all(map(math.isfinite, parts)) or parts[3] <= 0:
            raise ValueError(f"--near wants four finite numbers X,Y,Z,R with R > 0, got {args.near!r}")
        if not args.frame:
            raise ValueError("--near needs --frame (the frame X,Y,Z are given in)")
        centre, radius = tuple(parts[:3]), parts[3]
    from .memory import MemoryFilter

    return MemoryFilter(seen_after=after, frame=args.frame or "", centre=centre, radius=radius,
                        min_views=args.min_views, name_contains=args.name or "")  # fmt: skip


def _row(seen: SeenObject, score: float | None = None) -> dict[str, Any]:
    pose = seen.pose
    row = {
        "track_id": seen.track_id,
        "name": seen.name,
        "best": seen.names[0][0] if seen.names else "",
        "best_score": round(seen.names[0][1], 4) if seen.names else None,
        "first_seen": round(seen.first_seen.seconds, 3),
        "last_seen": round(seen.last_seen.seconds, 3),
        "views": seen.num_views,
        "sightings": seen.sightings,
        "frame": pose.frame_id if pose else "",
        "x": pose.position[0] if pose else None,
        "y": pose.position[1] if pose else None,
        "z": pose.position[2] if pose else None,
    }
    if score is not None:
        row = {"score": round(score, 4), **row}
    return row


def _print(rows: list[dict[str, Any]], as_json: bool, note: str = "") -> None:
    if as_json:
        print(json.dumps({"objects": rows, "note": note} if note else rows, indent=2))
        return
    for row in rows:
        where = f"{row['frame']} ({row['x']:.2f}, {row['y']:.2f}, {row['z']:.2f})" if row["frame"] else "-"
        score = f"{row['score']:7.3f}  " if "score" in row else ""
        label = row["name"] or row["best"] or "?"
        print(f"{score}{row['track_id']:<20} {label[:28]:<28} {row['last_seen']:>14.3f} {row['views']:>3} views "
              f"{row['sightings']:>4} sightings  {where}")  # fmt: skip
    if note:
        print(note)


def cmd_info(args: argparse.Namespace) -> int:
    memory = _open(args)
    objects = memory.objects()
    stamps = [o.last_seen.seconds for o in objects]
    print(f"memory     {memory.store.path}")
    print(f"weights    {memory.weights_id}")
    print(f"objects    {len(objects)} ({sum(o.sightings for o in objects)} sightings)")
    if stamps:
        span = f"{min(stamps):.3f} .. {max(stamps):.3f}"
        print(f"seen       {span} (ROS time; {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(max(stamps)))} local)")
    print("frames     " + (", ".join(f"{f} ({n})" for f, n in memory.frames().items()) or "none"))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    memory = _open(args)
    where = _filter(args, memory)
    objects = memory.matching(where)
    objects.sort(key=lambda o: o.last_seen, reverse=True)
    _print([_row(o) for o in objects[: args.limit]], args.json)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    memory = _open(args)
    model = load_from_args(args)
    model.identity.check(memory.weights_id, f"{memory.store.path}: the object memory was", "Pass its --weights.")
    found, left_out = memory.search(model.encode_text(args.text).cpu().numpy(), args.k, _filter(args, memory))
    note = "; ".join(f"{n} left out: {why}" for why, n in left_out.items() if n)
    _print([_row(seen, score) for seen, score in found], args.json, note)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    memory = _open(args)
    objects = memory.objects()
    rows = [{**_row(o), **({"sightings_json": _sightings(memory, o)} if args.sightings else {})} for o in objects]
    out = str(args.out)
    if out.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic_path(out) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
    elif out.endswith(".csv"):
        with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["track_id"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        raise ValueError(f"export to .csv or .parquet, not {out!r}")
    print(f"wrote {out}: {len(rows)} objects")
    return 0


def _sightings(memory: ObjectMemory, seen: SeenObject) -> str:
    return json.dumps([
        {"stamp": s["stamp"].seconds, "views": s["num_views"], "names": s["names"],
         "pose": s["pose"].to_dict() if s["pose"] else None}
        for s in memory.sightings(seen.track_id)
    ])  # fmt: skip


def register(commands: Any) -> None:
    memory = commands.add_parser("memory", help="read a node's object memory: info, list, query, export")
    actions = memory.add_subparsers(dest="memory_command", metavar="ACTION", required=True)

    def add(name: str, help_text: str, func: Any, filters: bool = True) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, description=help_text + ". " + __doc__.split("\n\n")[1])
        parser.add_argument("memory", help="the node's memory_path folder, or its memory.db")
        if filters:
            parser.add_argument(
                "--since", type=float, metavar="S", help="seen in the S seconds before the newest sighting"
            )
            parser.add_argument("--near", metavar="X,Y,Z,R", help="posed within R metres of X,Y,Z (needs --frame)")
            parser.add_argument("--frame", help="the frame of --near")
            parser.add_argument("--min-views", type=non_negative_int, default=0, help="at least this many views")
            parser.add_argument("--name", help="text in the enrolled name, a best match or the track id")
            parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(func=func)
        return parser

    add("info", "size, weights, time span and frames of a memory", cmd_info, filters=False)
    listing = add("list", "remembered objects, most recently seen first", cmd_list)
    listing.add_argument("--limit", type=positive_int, default=50, help="objects at most (default: 50)")
    query = add("query", "remembered objects ranked against a text (needs the weights the memory was made with)",
                cmd_query)  # fmt: skip
    query.add_argument("text", help='what to look for, e.g. "red mug"')
    query.add_argument("-k", type=positive_int, default=10, help="results (default: 10)")
    add_model_args(query, backend=True)
    export = add("export", "every object (and with --sightings its history) to CSV or Parquet", cmd_export, False)
    export.add_argument("out", type=output_path, help="out.csv or out.parquet")
    export.add_argument("--sightings", action="store_true", help="add each object's sightings as a JSON column")
