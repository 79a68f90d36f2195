"""Writing a model as ONNX graphs: per-view part, cross-view part, text side, and the config.json beside them.

    export_onnx(model, "engine/")                       # fp32
    export_onnx(model, "engine-int8/", precision="int8-dynamic")

A folder holds one engine of one precision. The config records the weights id of the PyTorch model the
graphs were made from, the threshold, the preprocessing and the sha256 of each graph; each graph also
carries the weights id and its part in its metadata, so a graph from another export is told apart. Before
the folder is put in place, the engine runs on ONNX Runtime's CPU provider against the PyTorch model on a
mixed batch (1, 2 and 3 views): fp32 must agree to 1e-4, the drift of the other precisions is recorded.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from .backend import OnnxRuntimeCLIP
from .files import CONFIG, FORMAT, FORMAT_VERSION, GRAPHS, PRECISIONS, OnnxExportError, file_sha256, is_onnx_export
from .graphs import CrossViewGraph, PerViewGraph, TextGraph
from .precision import convert

OPSET = 23  # the first with ONNX's own Attention operator (scaled dot-product attention)
FP32_TOLERANCE = 1e-4  # max abs error on unit embeddings between the fp32 engine and PyTorch fp32


def export_onnx(
    model: Any,
    folder: str | Path,
    *,
    precision: str = "fp32",
    calibration: list[list[np.ndarray]] | None = None,
    reuse: str | Path | None = None,
) -> Path:
    """Write ``model`` (a PyTorch DuoduoCLIP) as an ONNX engine folder; returns the folder.

    precision: fp32; fp16 (graphs in 16 bit, inputs and outputs fp32; meant for CUDA / TensorRT); int8-dynamic
        (weights int8, activations quantised per call, for CPUs); int8-static (weights and activations int8,
        activation ranges from ``calibration``: objects, each a list of (H, W, 3) uint8 views; default the
        shipped example renders). Text stays fp32 in every engine: labels are encoded once.
    reuse: an fp32 ONNX export of the same model whose graphs are converted instead of running the exporter
        again (it takes a minute for ViT-B-32); it is checked like any engine before use.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not is_onnx_export(folder):
        raise FileExistsError(f"{folder} exists and is not an ONNX export: refusing to replace it")
    if model.device.type != "cpu" or model.precision != "fp32":  # export and reference both run fp32 on the CPU
        model = copy.deepcopy(model).cpu().set_precision("fp32")
    if model.preprocessor.crop != "center":  # the engine crops the centre; a random reference cannot match
        model = copy.deepcopy(model).set_preprocessing(crop="center", resize=model.preprocessor.resize)
    model.eval()
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        if reuse is None:
            _export_fp32(model, work)
        else:
            _copy_fp32(Path(reuse), model.weights_id, work)
        if precision != "fp32":
            convert(model, work, precision, calibration)
        for part, name in GRAPHS.items():
            _stamp(work / name, model.weights_id, part, precision)
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "weights_id": model.weights_id,
            "weights_aliases": list(model.weights_aliases),
            "weights_source": model.weights_source,
            "precision": precision,
            "resize": model.preprocessor.resize,  # "pad" letterboxes, in the engine as in the model
            "opset": OPSET,
            "model": model.config.to_dict(),
            "graphs": {part: {"file": name, "sha256": file_sha256(work / name)} for part, name in GRAPHS.items()},
        }
        (work / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        config["check"] = check_against_torch(model, work, precision)
        (work / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _put_in_place(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return folder


def _export_fp32(model: Any, folder: Path) -> None:
    visual, threshold = model.clip.visual, model.layers_threshold
    size = model.config.preprocess.image_size
    dim = torch.export.Dim
    pixels = torch.zeros(3, 3, size, size)
    with torch.no_grad():
        tokens = PerViewGraph(visual, threshold)(pixels[:1])
    objects, views = dim("objects"), dim("views")
    texts = model.tokenizer(["a photo", "a photo of a chair"])
    jobs = [
        (PerViewGraph(visual, threshold), (pixels,), ["pixels"], ["tokens"], {"pixels": {0: dim("views_total")}}),
        (
            CrossViewGraph(visual, threshold),
            (tokens[None].expand(2, 3, -1, -1).contiguous(), torch.ones(2, 3, dtype=torch.bool)),
            ["tokens", "view_mask"],
            ["embeddings"],
            {"tokens": {0: objects, 1: views}, "view_mask": {0: objects, 1: views}},
        ),
        (TextGraph(model.clip), (texts,), ["text"], ["embeddings"], {"text": {0: dim("texts")}}),
    ]
    for (module, args, inputs, outputs, dynamic), name in zip(jobs, GRAPHS.values(), strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's progress and deprecation chatter
            program = torch.onnx.export(
                module,
                args,
                input_names=inputs,
                output_names=outputs,
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=dynamic,
                external_data=False,
                verbose=False,
            )
        program.save(str(folder / name), external_data=False)
        onnx.checker.check_model(str(folder / name), full_check=True)


def _copy_fp32(source: Path, weights_id: str, work: Path) -> None:
    engine = OnnxRuntimeCLIP(source, providers=["CPUExecutionProvider"])  # checks every graph
    if engine.precision != "fp32" or engine.weights_id != weights_id:
        raise OnnxExportError(
            f"{source} holds a {engine.precision} engine of weights {engine.weights_id}; reuse needs an fp32 "
            f"engine of {weights_id}"
        )
    for name in GRAPHS.values():
        shutil.copyfile(engine.folder / name, work / name)


def _stamp(path: Path, weights_id: str, part: str, precision: str) -> None:
    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in (("ddclip.weights_id", weights_id), ("ddclip.part", part), ("ddclip.precision", precision)):
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path))


def check_against_torch(model: Any, folder: Path, precision: str) -> dict[str, float]:
    """Run the engine in ``folder`` on ONNX Runtime's CPU provider and compare with the PyTorch model on a
    mixed batch; fp32 must agree to FP32_TOLERANCE. Returns the max abs error and min cosine on unit vectors."""
    rng = np.random.default_rng(0)
    size = model.config.preprocess.image_size
    objects = [list(rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)) for count in (1, 2, 3)]
    objects.append(list(rng.integers(0, 256, (2, size, size // 2, 3), dtype=np.uint8)))  # not square: resize
    texts = ["a chair", "a red mug on a table"]
    engine = OnnxRuntimeCLIP(folder, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        pairs = [
            (model.encode_views(objects), engine.encode_views(objects)),
            (model.encode_text(texts), engine.encode_text(texts)),
        ]
    errors = [float((ref.cpu() - got).abs().max()) for ref, got in pairs]
    cosines = [float((ref.cpu() * got).sum(-1).min()) for ref, got in pairs]
    if precision == "fp32" and max(errors) > FP32_TOLERANCE:
        raise OnnxExportError(
            f"the exported fp32 engine differs from the PyTorch model by {max(errors):.2e} (> {FP32_TOLERANCE}) "
            "on unit embeddings: the export is wrong, refusing to write it"
        )
    return {
        "views_max_abs_error": errors[0],
        "views_min_cosine": cosines[0],
        "text_max_abs_error": errors[1],
        "text_min_cosine": cosines[1],
    }


def _put_in_place(work: Path, folder: Path) -> None:
    """Replace ``folder`` by ``work`` with renames, so a reader never sees a half-written engine."""
    for path in work.iterdir():  # on disk before the rename makes them visible
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    descriptor = os.open(work, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    work.rename(folder)
    folder.chmod(0o755)  # mkdtemp made it private
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
