"""16-bit and 8-bit engines from the fp32 graphs, with ONNX Runtime's own converters.

fp16: the image graphs in float16, inputs and outputs kept float32 (ONNX Runtime's float16 converter).
int8-dynamic: the image graphs' MatMul weights in int8 per output channel, activations quantised per call.
int8-static: MatMul weights and activations int8 (QDQ), activation ranges calibrated on rendered views: the
    per-view graph on their pixels, the cross-view graph on their fp32 tokens, one object (and subsets of
    its views) at a time.
The text graph stays fp32 in every engine: labels are encoded once, and ONNX Runtime 1.32 crashes building a
CPU session for the fp16 text graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from .graphs import PerViewGraph

IMAGE_GRAPHS = ("per_view.onnx", "cross_view.onnx")


def convert(model: Any, folder: Path, precision: str, calibration: list[list[np.ndarray]] | None) -> None:
    """Turn the fp32 graphs in ``folder`` into ``precision`` in place."""
    if precision == "fp16":
        import onnx_ir
        from onnxruntime.transformers.float16 import convert_float_to_float16

        for name in IMAGE_GRAPHS:  # an fp16 text graph crashes ONNX Runtime 1.32's CPU optimiser (segfault)
            graph = onnx_ir.from_proto(convert_float_to_float16(onnx.load(str(folder / name)), keep_io_types=True))
            graph.graph.sort()  # the converter appends its input casts after their users
            onnx.save(onnx_ir.to_proto(graph), str(folder / name))
        return
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    for name in IMAGE_GRAPHS:
        source = folder / f"fp32-{name}"
        (folder / name).rename(source)
        if precision == "int8-dynamic":
            quantize_dynamic(
                source, folder / name, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8
            )
        else:
            quantize_static(
                source,
                folder / name,
                _Calibration(model, name, calibration or example_objects()[0]),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        source.unlink()


class _Calibration:
    """onnxruntime.quantization's CalibrationDataReader over objects' views, for one image graph."""

    def __init__(self, model: Any, graph: str, objects: list[list[np.ndarray]]) -> None:
        if not objects or not all(objects):
            raise ValueError("calibration needs at least one object with at least one view")
        self._items = self._inputs(model, graph, objects)

    @staticmethod
    def _inputs(model: Any, graph: str, objects: list[list[np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        per_view = PerViewGraph(model.clip.visual, model.layers_threshold)
        for views in objects:
            pixels = model.preprocessor(list(views))
            if graph == "per_view.onnx":
                yield {"pixels": pixels.numpy()}
                continue
            with torch.inference_mode():
                tokens = per_view(pixels).numpy()
            for count in sorted({1, max(1, len(views) // 2), len(views)}):  # the view counts a robot sees
                yield {"tokens": tokens[None, :count], "view_mask": np.ones((1, count), bool)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def example_objects(views: int = 12) -> tuple[list[list[np.ndarray]], list[str]]:
    """The example objects shipped in ddclip_core/assets (12 renders of a real mesh each) and their labels."""
    from ..images import read_image, split_strip

    assets = resources.files("ddclip_core") / "assets"
    rows = [line.split("\t") for line in (assets / "examples.tsv").read_text().splitlines()[1:] if line.strip()]
    objects = [list(split_strip(read_image(assets / name), views, name)) for name, _ in rows]
    return objects, [label for _, label in rows]
