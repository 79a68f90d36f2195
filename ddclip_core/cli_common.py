"""What every ``ddclip`` command shares: the model options, loading a model from them, and the
input folders/files of commands that encode views."""

from __future__ import annotations

import argparse
from pathlib import Path

from .images import IMAGE_SUFFIXES


def output_path(text: str) -> str:
    """argparse type: a path to write; an empty one would write into the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts, sizes, k), refused with the value otherwise."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def positive_int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 1 (view counts: "1,6,12")."""
    try:
        return [_int_at_least(part.strip(), 1) for part in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r} ({exc})") from None


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def add_model_args(parser: argparse.ArgumentParser, *, backend: bool = False) -> None:
    """The model options; ``backend``: also --backend, for the commands that only run inference."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--weights",
        "-w",
        metavar="PATH",
        help="weights: the published .ckpt, an OpenCLIP ViT-B-32 .bin/.safetensors, or a ddclip export folder. "
        "Default: $DDCLIP_WEIGHTS, else the downloaded published checkpoint, else random weights (with a warning)",
    )
    group.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default: auto)")
    group.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "bf16", "auto"],
        help="compute precision; auto: the fastest whose embeddings match fp32, measured here (default: fp32)",
    )
    group.add_argument(
        "--layers-threshold",
        type=int,
        metavar="K",
        help="first visual block with cross-view attention (default: from the checkpoint, else 6)",
    )
    group.add_argument("--arch", help="open_clip architecture when the file does not record one (default: ViT-B-32)")
    if backend:
        group.add_argument(
            "--backend",
            default="torch",
            choices=["torch", "onnxruntime"],
            help="onnxruntime: --weights is an ONNX export folder (ddclip weights export --onnx) (default: torch)",
        )
    group.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow arbitrary pickled objects in the checkpoint (trusted files only)",
    )


def load_from_args(args: argparse.Namespace):
    from .factory import load_model
    from .hub import default_weights

    if args.weights is not None and not args.weights.strip():
        raise ValueError("--weights is empty: give a weights file, or leave the option out for the default")
    weights = args.weights or default_weights()
    return load_model(
        weights,
        device=args.device,
        precision=args.precision,
        layers_threshold=args.layers_threshold,
        arch=args.arch,
        trust_pickle=args.trust_pickle,
        backend=getattr(args, "backend", "torch"),
    )


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
    return files


def objects_from_args(inputs: list[str], per_image: bool) -> tuple[list[list[Path]], list[str]]:
    folders = [Path(p) for p in inputs if Path(p).is_dir()]
    files = [Path(p) for p in inputs if not Path(p).is_dir()]
    for path in files:  # before the model loads: a typo is reported at once, not after seconds of loading
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
    objects = [image_files(folder) for folder in folders]
    names = [str(folder) for folder in folders]
    if per_image:
        objects += [[f] for f in files]
        names += [str(f) for f in files]
    elif files:
        objects.append(files)
        names.append(" + ".join(str(f) for f in files))
    return objects, names
