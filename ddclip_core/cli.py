"""The library's half of the ``ddclip`` command line: encode views and texts, manage weight files.

The command itself is composed in ``ddclip_cli`` (these commands and the training ones); this module
never imports the training code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_atomically
from .cli_bank import register as register_bank
from .cli_common import add_model_args, image_files, load_from_args, objects_from_args, output_path, positive_int
from .cli_memory import register as register_memory
from .hub import PUBLISHED


def _npy_path(out: str) -> str:
    """Where np.save writes ``out``: it appends .npy to any other name."""
    return out if out.endswith(".npy") else f"{out}.npy"


def cmd_encode(args: argparse.Namespace) -> int:
    objects, names = objects_from_args(args.images, args.per_image)
    model = load_from_args(args).set_preprocessing(crop=args.crop, resize=args.resize)
    embeddings = model.encode_views(objects, num_views=args.views, batch_size=args.batch_size)
    array = embeddings.cpu().numpy().astype(np.float32)
    out = _npy_path(args.out)
    write_atomically(out, lambda handle: np.save(handle, array))  # a reader never sees half of it
    views = [len(o) * (args.views or 1) for o in objects]
    print(f"wrote {out}: {array.shape[0]} object(s) x {array.shape[1]} ({model.weights_source or 'random weights'})")
    for name, count in zip(names, views, strict=True):
        print(f"  {count:3d} view(s)  {name}")
    return 0


def cmd_text(args: argparse.Namespace) -> int:
    model = load_from_args(args)
    array = model.encode_text(args.texts).cpu().numpy().astype(np.float32)
    out = _npy_path(args.out)
    write_atomically(out, lambda handle: np.save(handle, array))  # a reader never sees half of it
    print(f"wrote {out}: {array.shape[0]} text(s) x {array.shape[1]}")
    return 0


def cmd_weights_download(args: argparse.Namespace) -> int:
    from .hub import download, download_all

    if args.name == "all":
        for line in download_all(args.dir):
            print(line)
    else:
        print(download(args.name, args.dir))
    return 0


def cmd_weights_info(args: argparse.Namespace) -> int:
    from .weights import describe

    info = describe(args.path, trust_pickle=args.trust_pickle)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key in ("path", "format", "arch", "layers_threshold", "tensors", "parameters", "visual_blocks"):
            print(f"{key:17s} {info[key]}")
    return 0


def cmd_weights_export(args: argparse.Namespace) -> int:
    from .weights import save_export

    if not args.onnx and (args.onnx_precision != "fp32" or args.calibration):
        raise ValueError("--onnx-precision and --calibration apply to an ONNX export: add --onnx")
    if args.calibration and args.onnx_precision != "int8-static":
        raise ValueError("--calibration applies to --onnx-precision int8-static (no other engine is calibrated)")
    args.weights = args.source
    model = load_from_args(args)
    if args.onnx:
        from .onnx.export import export_onnx

        calibration = _calibration_views(Path(args.calibration)) if args.calibration else None
        folder = export_onnx(model, args.out, precision=args.onnx_precision, calibration=calibration)
        check = json.loads((folder / "config.json").read_text())["check"]
        print(f"exported {args.source} -> {folder} as ONNX {args.onnx_precision} (weights id {model.weights_id})")
        views, text = check["views_min_cosine"], check["text_min_cosine"]
        print(f"  vs PyTorch fp32: views cosine >= {views:.6f}, text >= {text:.6f}")
        return 0
    folder = save_export(model, args.out)
    print(f"exported {args.source} -> {folder} (weights id {model.weights_id})")
    return 0


def _calibration_views(folder: Path) -> list[list[np.ndarray]]:
    from .images import read_image

    if not folder.is_dir():
        raise FileNotFoundError(f"--calibration {folder}: no such folder")
    objects = [[read_image(path) for path in image_files(sub)] for sub in sorted(folder.iterdir()) if sub.is_dir()]
    if not objects:
        raise ValueError(f"--calibration {folder}: no object folders in it (one folder of views per object)")
    return objects


def cmd_demo(args: argparse.Namespace) -> int:
    from importlib import resources

    import torch

    from .images import read_image, split_strip

    assets = resources.files("ddclip_core") / "assets"
    rows = [line.split("\t") for line in (assets / "examples.tsv").read_text().splitlines()[1:] if line.strip()]
    labels = [label for _, label in rows]
    objects = [split_strip(read_image(assets / name), args.views, name) for name, _ in rows]
    model = load_from_args(args)
    if model.weights_source is None:
        print("NOTE: no real weights found, so the model is RANDOMLY INITIALISED and the ranking below is")
        print("      meaningless. Get the published weights with `ddclip weights download` (or --weights PATH).\n")
    texts = model.encode_text(labels)
    scores = {
        1: model.encode_views([views[:1] for views in objects]) @ texts.T,
        args.views: model.encode_views(objects) @ texts.T,
    }
    print(f"weights: {model.weights_source or 'random'} ({model.weights_id})")
    print(f"{len(objects)} example objects ranked against: {', '.join(labels)}\n")
    print(f"{'object':<16}" + "".join(f"{f'best label, {n} view(s)':<32}" for n in scores))
    for i, label in enumerate(labels):
        cells = []
        for table in scores.values():
            best = int(table[i].argmax())
            cells.append(f"{'ok' if best == i else 'xx'} {labels[best]} ({table[i, best]:.3f})")
        print(f"{label:<16}" + "".join(f"{cell:<32}" for cell in cells))
    truth = torch.arange(len(labels), device=texts.device)
    hits = {n: int((table.argmax(1) == truth).sum()) for n, table in scores.items()}
    summary = ", ".join(f"{hit}/{len(labels)} with {n} view(s)" for n, hit in hits.items())
    print(f"\ntop-1: {summary}")
    return 0


def register(commands: Any) -> None:
    """Add the library's commands (encode, text, demo, bank, search, classify, weights) to ``ddclip``."""

    encode = commands.add_parser(
        "encode",
        help="embed views of objects into a .npy of shape (objects, 512)",
        description="Embed views of objects. Image files given together are the views of ONE object; "
        "each folder given is one object made of the images in it. Output: float32 .npy (objects, 512), "
        "L2-normalised, objects in the order: folders, then files.",
    )
    encode.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE_OR_FOLDER",
        help="image files (views of one object) or folders (one object each)",
    )
    encode.add_argument(
        "--views",
        type=positive_int,
        metavar="F",
        help="each image is a strip of F views stacked vertically (e.g. 12 for the published couch.jpg)",
    )
    encode.add_argument("--per-image", action="store_true", help="treat each image file as a separate object")
    encode.add_argument("--out", "-o", type=output_path, required=True, metavar="FILE.npy", help="output .npy file")
    encode.add_argument(
        "--crop",
        default="center",
        choices=["center", "random"],
        help="crop 208 px at the centre (deterministic, default) or at random (published)",
    )
    encode.add_argument(
        "--resize",
        default="stretch",
        choices=["stretch", "pad"],
        help="non-square views: stretch to a square (published, default) or pad with white",
    )
    encode.add_argument("--batch-size", type=positive_int, default=32, help="objects per forward pass (default: 32)")
    add_model_args(encode, backend=True)
    encode.set_defaults(func=cmd_encode)

    text = commands.add_parser(
        "text",
        help="embed texts into a .npy of shape (texts, 512)",
        description="Embed texts with the CLIP text tower (L2-normalised).",
    )
    text.add_argument("texts", nargs="+", metavar="TEXT", help='one or more texts, e.g. "a white couch"')
    text.add_argument("--out", "-o", type=output_path, required=True, metavar="FILE.npy", help="output .npy file")
    add_model_args(text, backend=True)
    text.set_defaults(func=cmd_text)

    demo = commands.add_parser(
        "demo",
        help="embed the shipped example objects and name each from a list of labels",
        description="Embed the example objects shipped in ddclip_core/assets (12 rendered views of real meshes "
        "each) with one view and with all views, and rank their labels by cosine similarity.",
    )
    demo.add_argument("--views", type=positive_int, default=12, help="views in each example strip (default: 12)")
    add_model_args(demo)
    demo.set_defaults(func=cmd_demo)

    register_bank(commands, add_model_args)
    register_memory(commands)

    weights = commands.add_parser("weights", help="download, inspect or export weight files")
    weight_commands = weights.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    download = weight_commands.add_parser(
        "download", help="download published weights (and with --name all the Objaverse bank) from Hugging Face"
    )
    download.add_argument(
        "--name",
        default="duoduoclip",
        choices=["all", *PUBLISHED],
        help="what to download: all = the three published checkpoints, the released Objaverse embeddings, LVIS "
        "categories and Cap3D captions, joined into the bank objaverse_bank (what the node's real path needs); "
        "or one file: the published Duoduo CLIP checkpoint (default), its MVImgNet / MVPNet versions, the OpenCLIP "
        "ViT-B-32 weights (training start), the LVIS categories (label set 'lvis'), ...",
    )
    download.add_argument("--dir", metavar="FOLDER", help="target folder (default: $DDCLIP_CACHE or ~/.cache/ddclip)")
    download.set_defaults(func=cmd_weights_download)
    info = weight_commands.add_parser("info", help="show the format and architecture of a weight file")
    info.add_argument("path", help="weight file or export folder")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument(
        "--trust-pickle", action="store_true", help="allow arbitrary pickled objects (trusted files only)"
    )
    info.set_defaults(func=cmd_weights_info)
    export = weight_commands.add_parser(
        "export", help="convert any supported weight file to a ddclip export (safetensors + config.json)"
    )
    export.add_argument("source", help="weight file to convert")
    export.add_argument("out", type=output_path, help="output folder")
    export.add_argument(
        "--onnx",
        action="store_true",
        help="write ONNX graphs (per-view part, cross-view part, text) + config.json for backend onnxruntime",
    )
    export.add_argument(
        "--onnx-precision",
        default="fp32",
        choices=["fp32", "fp16", "int8-dynamic", "int8-static"],
        help="with --onnx: engine precision (fp16 is meant for CUDA/TensorRT; int8 for CPUs; default fp32)",
    )
    export.add_argument(
        "--calibration",
        metavar="FOLDER",
        help="with --onnx-precision int8-static: a folder of folders, each the views of one object "
        "(default: the shipped example renders)",
    )
    add_model_args(export)
    export.set_defaults(func=cmd_weights_export)
