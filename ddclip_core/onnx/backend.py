"""An exported engine on ONNX Runtime, behind the inference API of DuoduoCLIP.

``OnnxRuntimeCLIP`` answers ``encode_views``, ``encode_text``, ``view_tokens``, ``embed_view_tokens``,
``weights_id`` / ``identity``, ``embed_dim``, ``preprocessor`` and ``device`` as the PyTorch model does,
so the perception engine, its view cache, banks and label sets take either. Preprocessing is the same
code (``ddclip_core.preprocess``), on the CPU; results are float32 torch tensors on the CPU.

Loading checks every graph before use: a valid ONNX model (onnx.checker), made by ddclip for the weights
and the part config.json names, byte for byte the file the export wrote (sha256). Anything else is an
OnnxExportError naming the file and the problem.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from .._tokenizer import tokenizer_for
from ..config import DuoduoConfig
from ..encode_inputs import all_finite, check_preprocessed, checked_texts, view_batches, view_counts
from ..identity import WeightsIdentity
from ..preprocess import CropMode, Preprocessor, ResizeMode
from .files import CONFIG, FORMAT, FORMAT_VERSION, GRAPHS, OnnxExportError, file_sha256
from .providers import PREFERENCE, Provider, ShapeLimits, own_profile, resolve_providers, with_profile

log = logging.getLogger(__name__)


class OnnxRuntimeCLIP:
    """An ONNX export folder (``ddclip weights export SRC OUT --onnx``) run by ONNX Runtime."""

    def __init__(
        self,
        folder: str | Path,
        *,
        providers: list[Provider] | None = None,
        device: str = "auto",
        threads: int = 0,
        shape_limits: ShapeLimits | None = None,
    ) -> None:
        """shape_limits: with the TensorRT provider, the largest input of each graph per call (default
        ``ShapeLimits()``): its engines are built once for that range, and larger calls are split. Without
        TensorRT there are none: the other providers take any size."""
        import onnxruntime as ort

        self.folder = _export_folder(Path(folder).expanduser())
        self.export = _read_config(self.folder)
        try:
            self.config = DuoduoConfig.from_dict(self.export["model"])
        except (ValueError, TypeError, KeyError) as exc:
            raise OnnxExportError(f"{self.folder / CONFIG}: invalid model config: {exc}") from exc
        self.precision: str = self.export["precision"]
        self.precision_reason = "fixed when the ONNX engine was exported"  # what the node logs beside it
        self.weights_id: str = self.export["weights_id"]
        self.weights_aliases: tuple[str, ...] = tuple(self.export.get("weights_aliases", ()))
        source = self.export.get("weights_source")
        # None keeps telling users (and the node) that the engine was made from random weights.
        self.weights_source = f"{self.folder} (ONNX {self.precision}, from {source})" if source else None
        resize = self.export.get("resize", "stretch")  # exports before it was recorded: stretch
        if resize not in ("stretch", "pad"):
            raise OnnxExportError(f"{self.folder / CONFIG}: resize must be 'stretch' or 'pad', got {resize!r}")
        self.preprocessor = Preprocessor(self.config.preprocess, resize=resize)
        self._tokenizer: Any = None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.providers = resolve_providers(providers, str(device), self.folder, self.precision)
        tensorrt = any(name == PREFERENCE[0] for name, _ in self.providers)
        self.shape_limits = (shape_limits or ShapeLimits()) if tensorrt else None
        self._sessions = {}
        for part in GRAPHS:
            path, inputs = _checked_graph(self.folder, self.export, part)
            self._sessions[part] = self._session(ort, path, options, inputs)
        tokens = self._sessions["per_view"].get_outputs()[0].shape
        self._token_shape = (int(tokens[1]), int(tokens[2]))
        log.info("ONNX engine %s (%s) on %s", self.folder, self.precision, [name for name, _ in self.providers])

    def _session(self, ort: Any, path: Path, options: Any, inputs: dict[str, list[int | str]]) -> Any:
        """A graph's session; with TensorRT, with the graph's explicit profile first. Where TensorRT takes
        only parts of a graph (ops it lacks, as int8-dynamic's DynamicQuantizeLinear), ONNX Runtime wants
        profiles for those parts' own inputs, which ddclip cannot name: such a graph opens without one and
        builds its engines as sizes come, with a warning (never run: no TensorRT here)."""
        limits = self.shape_limits
        if limits is None:
            return ort.InferenceSession(str(path), options, providers=self.providers)
        if any(name == PREFERENCE[0] and own_profile(options) for name, options in self.providers):
            note = "%s: your own TensorRT profile is kept; calls are split by %s: its max shapes must hold them"
            log.warning(note, path, limits)
        profiled = self.providers if self.precision == "int8-dynamic" else with_profile(self.providers, inputs, limits)
        if profiled != self.providers:
            try:
                return ort.InferenceSession(str(path), options, providers=profiled)
            except Exception as exc:  # onnxruntime raises its own Fail/EPFail types
                log.warning("%s: TensorRT refused its explicit profile (%s); opening it without one", path, exc)
        return ort.InferenceSession(str(path), options, providers=self.providers)

    # ------------------------------------------------------------------ what DuoduoCLIP also answers
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # where results and preprocessing live, whatever provider runs the graphs

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def num_blocks(self) -> int:
        return self.config.num_blocks

    @property
    def layers_threshold(self) -> int:
        return self.config.layers_threshold

    @property
    def identity(self) -> WeightsIdentity:
        return WeightsIdentity(self.weights_id, self.weights_aliases)

    @property
    def active_providers(self) -> list[str]:
        return self._sessions["per_view"].get_providers()

    def set_preprocessing(self, crop: CropMode = "center", resize: ResizeMode = "stretch") -> OnnxRuntimeCLIP:
        self.preprocessor = Preprocessor(self.config.preprocess, crop=crop, resize=resize)
        return self

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = tokenizer_for(self.config)
        return self._tokenizer

    # ------------------------------------------------------------------ inference API
    def encode_views(
        self,
        views: Any,
        *,
        normalize: bool = True,
        num_views: int | None = None,
        view_mask: torch.Tensor | None = None,
        batch_size: int = 32,
    ) -> torch.Tensor:
        """As DuoduoCLIP.encode_views (same inputs, same batching of mixed view counts); no autograd."""
        if isinstance(views, torch.Tensor):
            pixels, counts = self._packed_tensor(views, view_mask)
            return _finish(self._embed(pixels, counts), normalize)
        out = [
            self._embed(self.preprocessor(flat).numpy(), counts)
            for flat, counts in view_batches(views, num_views, view_mask, batch_size)
        ]
        return _finish(np.concatenate(out), normalize)

    def view_tokens(self, views: list[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 views -> their tokens after the per-view blocks (N, L, width), as DuoduoCLIP's."""
        return torch.from_numpy(self._per_view(self.preprocessor(views).numpy()))

    def view_tokens_state(self) -> tuple:
        """As DuoduoCLIP's: here only the preprocessing can change (the graphs' weights are fixed)."""
        return (self.preprocessor.key,)

    def embed_view_tokens(
        self, tokens: torch.Tensor, view_counts: list[int], *, normalize: bool = True
    ) -> torch.Tensor:
        """Tokens of ``view_tokens`` (N, L, width), packed object after object -> (B, embed_dim)."""
        array = tokens.detach().to("cpu", torch.float32).numpy()
        return _finish(self._cross_view(array, view_counts), normalize)

    # every engine keeps the fp32 text graph (``precision.convert``): its labels are fp32's, whatever the engine
    text_precision = "fp32"

    def encode_text(self, texts: str | list[str], *, normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Text(s) -> (N, embed_dim) CLIP text embeddings, as DuoduoCLIP.encode_text."""
        texts = checked_texts(texts)
        session = self._sessions["text"]
        if self.shape_limits is not None:
            batch_size = min(batch_size, self.shape_limits.texts_per_call)
        out = [
            session.run(None, {"text": self.tokenizer(list(texts[start : start + batch_size])).numpy()})[0]
            for start in range(0, len(texts), batch_size)
        ]
        return _finish(np.concatenate(out), normalize)

    # ------------------------------------------------------------------ the two image graphs
    def _embed(self, pixels: np.ndarray, counts: list[int]) -> np.ndarray:
        return self._cross_view(self._per_view(pixels), counts)

    @property
    def _one_at_a_time(self) -> bool:
        """Dynamic int8 sets one activation scale per input tensor: batched, a view's result would depend
        on the other views (and padding) of the call. Each view and object then runs alone."""
        return self.precision == "int8-dynamic"

    def _per_view(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, np.float32)
        limits = self.shape_limits
        most = 1 if self._one_at_a_time else len(pixels) if limits is None else limits.views_per_call
        if len(pixels) > most:
            return np.concatenate([self._per_view(pixels[i : i + most]) for i in range(0, len(pixels), most)])
        return self._sessions["per_view"].run(None, {"pixels": pixels})[0]

    def _cross_view(self, tokens: np.ndarray, counts: list[int]) -> np.ndarray:
        """Packed tokens of len(counts) objects -> objects side by side, padded to the largest count, masked."""
        if not counts or min(counts) < 1:
            raise ValueError(f"every object needs at least one view, got view counts {counts}")
        if tokens.ndim != 3 or tokens.shape[1:] != self._token_shape:
            raise ValueError(
                f"tokens must have shape (N, {self._token_shape[0]}, {self._token_shape[1]}), got {tokens.shape}"
            )
        if tokens.shape[0] != sum(counts):
            raise ValueError(f"{tokens.shape[0]} views given but view counts {counts} sum to {sum(counts)}")
        limits = self.shape_limits
        if limits is not None and max(counts) > limits.views_per_object:
            raise ValueError(
                f"an object of {max(counts)} views: this engine takes at most {limits.views_per_object} views of "
                "one object (its TensorRT profile: load it with load_model(..., shape_limits=ShapeLimits("
                "views_per_object=N)); the node sets it from max_views and max_enroll_images at start)"
            )
        per_call = 1 if self._one_at_a_time else len(counts) if limits is None else limits.objects_per_call
        if len(counts) > per_call:
            starts = np.cumsum([0, *counts])
            ends = [min(first + per_call, len(counts)) for first in range(0, len(counts), per_call)]
            pieces = itertools.pairwise([0, *ends])  # objects [first, end) per call
            return np.concatenate([self._cross_view(tokens[starts[i] : starts[j]], counts[i:j]) for i, j in pieces])
        most = max(counts)
        if min(counts) == most:
            padded, mask = tokens.reshape(len(counts), most, *tokens.shape[1:]), np.ones((len(counts), most), bool)
        else:
            padded = np.zeros((len(counts), most, *tokens.shape[1:]), np.float32)
            mask = np.zeros((len(counts), most), bool)
            start = 0
            for index, count in enumerate(counts):
                padded[index, :count], mask[index, :count] = tokens[start : start + count], True
                start += count
        feed = {"tokens": np.ascontiguousarray(padded, np.float32), "view_mask": mask}
        return self._sessions["cross_view"].run(None, feed)[0]

    def _packed_tensor(self, pixels: torch.Tensor, view_mask: torch.Tensor | None) -> tuple[np.ndarray, list[int]]:
        check_preprocessed(pixels, self.config.preprocess.image_size)
        if not all_finite(pixels):
            raise ValueError("preprocessed views contain NaN or infinity")
        batch, frames = pixels.shape[:2]
        pixels = pixels.detach().to("cpu", torch.float32)
        if view_mask is None:
            return pixels.flatten(0, 1).numpy(), [frames] * batch
        view_mask, counts = view_counts(view_mask, batch, frames, pixels.device)
        return pixels[view_mask].numpy(), counts

    def __repr__(self) -> str:
        return (
            f"OnnxRuntimeCLIP({self.folder}, precision={self.precision}, weights={self.weights_id}, "
            f"providers={[name for name, _ in self.providers]})"
        )


def _finish(embeddings: np.ndarray, normalize: bool) -> torch.Tensor:
    out = torch.from_numpy(np.asarray(embeddings, np.float32))
    return F.normalize(out, dim=-1) if normalize else out


def _export_folder(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"ONNX export not found: {path}")
    folder = path if path.is_dir() else path.parent
    if not (folder / CONFIG).is_file():
        raise OnnxExportError(
            f"{folder} is not an ONNX export (no {CONFIG}); make one with `ddclip weights export SRC OUT --onnx`"
        )
    return folder


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OnnxExportError(f"{path}: unreadable config: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise OnnxExportError(
            f"{path}: not the config of an ONNX export (format {found!r}, expected {FORMAT!r}); a ddclip safetensors "
            "export runs with the torch backend"
        )
    if config.get("format_version") != FORMAT_VERSION:
        found = config.get("format_version")
        raise OnnxExportError(f"{path}: format version {found!r}, this ddclip reads {FORMAT_VERSION!r}")
    missing = [key for key in ("weights_id", "precision", "model", "graphs") if key not in config]
    missing += [f"graphs.{part}" for part in GRAPHS if part not in config.get("graphs", {})]
    if missing:
        raise OnnxExportError(f"{path}: missing {', '.join(missing)}")
    return config


def _checked_graph(folder: Path, config: dict[str, Any], part: str) -> tuple[Path, dict[str, list[int | str]]]:
    """The graph's file, checked, and its inputs: name -> dims (a size, or a dynamic axis's name)."""
    entry = config["graphs"][part]
    path = folder / entry["file"]
    if not path.is_file():
        raise OnnxExportError(f"{path}: missing ({CONFIG} lists it as the {part} graph)")
    try:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
    except Exception as exc:  # protobuf and the checker raise many types: all mean unusable
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxExportError(f"{path}: not a valid ONNX model (truncated or corrupt?): {reason}") from exc
    meta = {prop.key: prop.value for prop in graph.metadata_props}
    if "ddclip.weights_id" not in meta:
        raise OnnxExportError(f"{path}: not an ONNX graph exported by ddclip (no ddclip metadata)")
    recorded = (meta["ddclip.weights_id"], meta.get("ddclip.part"), meta.get("ddclip.precision"))
    expected = (config["weights_id"], part, config["precision"])
    if recorded != expected:
        raise OnnxExportError(
            f"{path} does not match {CONFIG}: the graph is the {recorded[1]} part of weights {recorded[0]} in "
            f"{recorded[2]}, the config expects the {part} part of {expected[0]} in {expected[2]}"
        )
    if file_sha256(path) != entry.get("sha256"):
        raise OnnxExportError(f"{path} does not match {CONFIG}: its sha256 differs from the one recorded at export")
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    return path, dims


def open_engine(
    weights: str | Path | None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    layers_threshold: int | None = None,
    arch: str | None = None,
    providers: list[Provider] | None = None,
    shape_limits: ShapeLimits | None = None,
) -> OnnxRuntimeCLIP:
    """``load_model(..., backend="onnxruntime")``: an ONNX export folder, its settings checked against the call."""
    if weights is None:
        raise OnnxExportError(
            "the onnxruntime backend runs an ONNX export: pass its folder as weights "
            "(make one with `ddclip weights export SRC OUT --onnx`)"
        )
    engine = OnnxRuntimeCLIP(weights, providers=providers, device=str(device), shape_limits=shape_limits)
    # An engine's precision is fixed when it is exported; fp32 (the default) and auto take what it is.
    if precision not in ("fp32", "auto", engine.precision):
        raise ValueError(
            f"{engine.folder} is a {engine.precision} engine; its precision is fixed at export, not {precision!r} "
            "(export another with `ddclip weights export SRC OUT --onnx --onnx-precision ...`)"
        )
    asked = {"layers_threshold": layers_threshold, "arch": arch}
    for name, value in asked.items():
        if value is not None and value != getattr(engine.config, name):
            raise ValueError(
                f"{engine.folder} was exported with {name}={getattr(engine.config, name)!r}, not {value!r}"
            )
    return engine
