"""``ddclip bank ...``, ``ddclip search`` and ``ddclip classify``: the retrieval half of the CLI."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_common import load_from_args, objects_from_args, output_path, positive_int
from .cluster import add_ray_argument

if TYPE_CHECKING:  # the commands import the bank (faiss, pyarrow) when they run: `ddclip --help` stays fast
    from .bank import EmbeddingBank, Match


def _index_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index",
        default="flat",
        choices=["flat", "hnsw", "ivfpq"],
        help="search index: flat = exact (default); hnsw / ivfpq = approximate, for large banks (recall is reported)",
    )
    parser.add_argument(
        "--index-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="index parameter, repeatable: hnsw m, ef_construction, ef_search; ivfpq nlist, pq_m, nprobe, rerank",
    )


def _build_index(bank: EmbeddingBank, args: argparse.Namespace) -> None:
    if args.index == "flat" and not args.index_param:
        bank.build_index("flat")
        return
    params = {}
    for item in args.index_param:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--index-param takes KEY=VALUE, got {item!r}")
        try:
            params[key] = int(value)
        except ValueError:
            raise ValueError(f"--index-param {item!r}: the value must be an integer") from None
    report = bank.build_index(args.index, **params)
    recall = f", recall@10 vs exact {report['recall@10']:.3f}" if "recall@10" in report else ""
    print(
        f"index {args.index} {json.dumps({k: v for k, v in report.items() if k not in ('kind', 'recall@10')})}{recall}"
    )


def cmd_import_objaverse(args: argparse.Namespace) -> int:
    from .bank import EmbeddingBank

    start = time.perf_counter()
    bank = EmbeddingBank.from_objaverse(
        args.h5, args.uid_map, names=args.names, captions=args.captions, weights_id=args.weights_id
    )
    _build_index(bank, args)
    bank.save(args.out)
    print(f"wrote {args.out}: {len(bank)} objects x {bank.dim} ({time.perf_counter() - start:.1f} s)")
    return 0


def cmd_bank_build(args: argparse.Namespace) -> int:
    options = {"num_views": args.views, "batch_size": args.batch_size, "progress": not args.quiet}
    if args.ray:
        from .bank_ray import build_bank_ray
        from .cluster import ModelSpec, connect

        spec = ModelSpec.from_args(args)
        connect(args.ray)
        bank = build_bank_ray(spec, args.folder, **options)
    else:
        from .bank_build import build_bank

        bank = build_bank(load_from_args(args), args.folder, **options)
    _build_index(bank, args)
    bank.save(args.out)
    print(f"wrote {args.out}: {len(bank)} objects x {bank.dim}, weights {bank.weights_id}")
    return 0


def cmd_bank_index(args: argparse.Namespace) -> int:
    from .bank import EmbeddingBank

    bank = EmbeddingBank.load(args.bank, mmap=False)
    _build_index(bank, args)
    bank.save(args.bank)
    return 0


def cmd_bank_info(args: argparse.Namespace) -> int:
    from .bank import EmbeddingBank

    bank = EmbeddingBank.load(args.bank)
    manifest = json.loads((Path(args.bank) / "bank.json").read_text())
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    print(f"bank       {args.bank}")
    print(f"objects    {len(bank)} x {bank.dim}")
    print(f"weights    {bank.weights_id}")
    print(f"index      {json.dumps(bank.index_spec)}")
    print(f"fields     {', '.join(manifest.get('fields', []))}")
    sources = bank.field_counts("source")
    print("sources    " + ", ".join(f"{name} ({count})" for name, count in sorted(sources.items())))
    return 0


def _print_matches(title: str, matches: list[Match]) -> None:
    print(title)
    print(f"  {'#':>3} {'score':>7}  {'name':<28} {'category':<20} id")
    for rank, match in enumerate(matches, 1):
        category = match.metadata.get("category", "")
        print(f"  {rank:>3} {match.score:7.3f}  {match.name[:28]:<28} {category[:20]:<20} {match.id}")


def cmd_search(args: argparse.Namespace) -> int:
    from . import retrieval
    from .bank import EmbeddingBank

    given = [bool(args.text), bool(args.views), bool(args.like), bool(args.mix)]
    if sum(given) != 1:
        raise ValueError("give exactly one query: TEXT, --views IMAGES..., --like ID or --mix A B")
    bank = EmbeddingBank.load(args.bank)
    model = None
    if args.text or args.views or (args.mix and any(c not in bank for c in args.mix)):
        model = load_from_args(args)
    if args.text:
        title, query = f"text: {args.text!r}", args.text
        matches = retrieval.search_text(bank, model, args.text, args.k)[0]
    elif args.views:
        title = f"views: {len(args.views) * (args.num_views or 1)} view(s)"
        query = _first_view(args.views[0], args.num_views)
        views = [Path(v) for v in args.views]
        matches = retrieval.search_views(bank, model, views, args.k, num_views=args.num_views)[0]
    elif args.like:
        title, query = f"like: {args.like}", f"objects like {args.like}"
        matches = retrieval.similar(bank, args.like, args.k)
    else:
        title, query = f"mix: {args.mix[0]} + {args.mix[1]}", f"{args.mix[0]} + {args.mix[1]}"
        matches = retrieval.mix(bank, args.mix[0], args.mix[1], args.k, model=model)
    if args.json:
        print(json.dumps({"query": title, "matches": [m.to_dict() for m in matches]}, indent=2))
    else:
        _print_matches(title, matches)
    if args.sheet:
        from .sheet import contact_sheet

        print(f"contact sheet: {contact_sheet(query, matches, args.sheet)}")
    return 0


def _first_view(path: str, num_views: int | None) -> Any:
    from .images import read_image, split_strip

    view = read_image(path)
    return split_strip(view, num_views, path)[0] if num_views else view


def cmd_classify(args: argparse.Namespace) -> int:
    from .labels import LabelSet

    objects, names = objects_from_args(args.images, args.per_image)
    labels = LabelSet(args.labels, templates=args.templates)
    model = load_from_args(args)
    embeddings = model.encode_views(objects, num_views=args.views)
    results = labels.classify(model, embeddings, k=args.k)
    if args.json:
        out = [
            {"object": n, "labels": [{"label": lab, "score": round(s, 6)} for lab, s in r]}
            for n, r in zip(names, results, strict=True)
        ]
        print(json.dumps(out, indent=2))
        return 0
    print(f"{len(labels)} labels, {len(labels.templates)} prompt template(s) each")
    for name, result in zip(names, results, strict=True):
        print(name)
        for rank, (label, score) in enumerate(result, 1):
            print(f"  {rank:>3} {score:7.3f}  {label}")
    return 0


def register(commands: Any, add_model_args: Any) -> None:
    """Add the bank, search and classify commands to the ddclip parser."""
    bank = commands.add_parser("bank", help="build, import, index and inspect embedding banks")
    actions = bank.add_subparsers(dest="bank_command", metavar="ACTION", required=True)

    imp = actions.add_parser(
        "import-objaverse",
        help="make a bank from the published Objaverse embeddings",
        description="Make a bank from shape_emb_objaverse.h5 (dataset shape_feat) and "
        "shape_emb_objaverse_model_to_idx.json as released, optionally joined with names by uid.",
    )
    imp.add_argument("h5", help="shape_emb_objaverse.h5")
    imp.add_argument("uid_map", help="shape_emb_objaverse_model_to_idx.json (uid -> row)")
    imp.add_argument(
        "--names",
        metavar="TABLE",
        help="categories by uid: lvis-annotations.json.gz, or a csv/parquet with a uid column (lvis.csv)",
    )
    imp.add_argument(
        "--captions", metavar="CSV", help="captions by uid: Cap3D_automated_Objaverse_full.csv (uid,caption rows)"
    )
    imp.add_argument(
        "--weights-id", help="id of the weights that made the embeddings (default: the published checkpoint)"
    )
    imp.add_argument("--out", "-o", type=output_path, required=True, metavar="BANK", help="output bank folder")
    _index_args(imp)
    imp.set_defaults(func=cmd_import_objaverse)

    build = actions.add_parser(
        "build",
        help="embed a folder of objects into a new bank",
        description="Embed every object of FOLDER: each sub-folder is one object (its images are the views), each "
        "image directly in FOLDER is one object (a strip of F views with --views F). An optional FOLDER/metadata.csv "
        "with an id column adds fields such as name and category.",
    )
    build.add_argument("folder", help="folder of objects")
    build.add_argument("--out", "-o", type=output_path, required=True, metavar="BANK", help="output bank folder")
    build.add_argument(
        "--views", type=positive_int, metavar="F", help="images are strips of F views stacked vertically"
    )
    build.add_argument("--batch-size", type=positive_int, default=16, help="objects per forward pass (default: 16)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    _index_args(build)
    add_model_args(build, backend=True)
    add_ray_argument(build)
    build.set_defaults(func=cmd_bank_build)

    index = actions.add_parser("index", help="(re)build the search index of a saved bank")
    index.add_argument("bank", help="bank folder")
    _index_args(index)
    index.set_defaults(func=cmd_bank_index)

    info = actions.add_parser("info", help="size, weights, index and fields of a bank")
    info.add_argument("bank", help="bank folder")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.set_defaults(func=cmd_bank_info)

    search = commands.add_parser(
        "search",
        help="find objects in a bank by text, views, similarity or concept mixing",
        description="Exactly one query: TEXT, --views IMAGES..., --like ID (objects similar to a bank object) or "
        "--mix A B (objects most similar to both A and B: maximise the smaller similarity; A/B are bank ids or texts).",
    )
    search.add_argument("bank", help="bank folder")
    search.add_argument("text", nargs="?", help='text query, e.g. "a white couch"')
    search.add_argument("--views", nargs="+", metavar="IMAGE", help="views of one object as the query")
    search.add_argument("--num-views", type=positive_int, metavar="F", help="each --views image is a strip of F views")
    search.add_argument("--like", metavar="ID", help="objects similar to this bank object")
    search.add_argument("--mix", nargs=2, metavar=("A", "B"), help="concept mixing of two bank ids or texts")
    search.add_argument("-k", type=positive_int, default=10, help="number of results (default: 10)")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--sheet", metavar="PNG", help="also write a contact sheet of the query and its matches")
    add_model_args(search, backend=True)
    search.set_defaults(func=cmd_search)

    classify = commands.add_parser(
        "classify",
        help="zero-shot labels for views of objects",
        description="Rank labels for objects by cosine similarity to prompt-averaged label embeddings (cached on "
        "disk per weights + templates). Images given together are one object's views; each folder is one object.",
    )
    classify.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="views of one object, or folders")
    classify.add_argument(
        "--labels", required=True, help="'lvis' (the 1,156 Objaverse-LVIS categories) or a .txt/.csv/.json file"
    )
    classify.add_argument(
        "--templates", default="openai", help="prompt templates: openai (80, default), simple (7), none, or a file"
    )
    classify.add_argument("-k", type=positive_int, default=5, help="labels per object (default: 5)")
    classify.add_argument("--views", type=positive_int, metavar="F", help="each image is a strip of F views")
    classify.add_argument("--per-image", action="store_true", help="each image file is its own object")
    classify.add_argument("--json", action="store_true", help="print JSON")
    add_model_args(classify, backend=True)
    classify.set_defaults(func=cmd_classify)
