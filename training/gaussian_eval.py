"""Zero-shot evaluation of GS-CLIP next to the multi-view encoder, on the same objects.

GS-CLIP's table layout: top-1 per class, one column each, then the mean over classes (and, here,
the overall top-1 over objects). Rows: the Gaussian encoder on gaussians.h5, Duoduo CLIP on all
views of the same objects, optionally the two fused (ddclip_core.fusion, one row per Gaussian weight:
does adding the Gaussian embedding help the multi-view one?), and plain CLIP (the frozen per-view
targets, averaged) when present.
Every row ranks the same class prompts, embedded by the Duoduo model's text tower (frozen CLIP).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from ddclip_core import DuoduoCLIP, LabelSet
from ddclip_core.fusion import fuse_embeddings
from ddclip_core.gaussians import GSCLIPEncoder
from ddclip_core.gaussians.preprocess import draw_subset
from ddclip_core.text_space import check_text_space

from .gaussian_data import GAUSSIANS, read_gaussians_h5
from .layout import IMAGE_TARGETS, IMAGES, DataError, DataFolder

log = logging.getLogger(__name__)


@dataclass
class GaussianZeroShot:
    classes: list[str]
    counts: dict[str, int]  # objects per class
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> class / mean / overall -> top-1
    sources: dict[str, str] = field(default_factory=dict)  # model -> weights id

    def to_json(self) -> dict:
        return {"classes": self.classes, "objects_per_class": self.counts, "top1": self.rows, "sources": self.sources}

    def markdown(self) -> str:
        header = ["model", *self.classes, "mean (classes)", "overall"]
        lines = [
            f"Zero-shot top-1 (%) over {len(self.classes)} classes, {sum(self.counts.values())} objects "
            f"(chance {100 / max(1, len(self.classes)):.1f}%).",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            "| objects | "
            + " | ".join(str(self.counts[c]) for c in self.classes)
            + f" | | {sum(self.counts.values())} |",
        ]
        for name, top1 in self.rows.items():
            cells = [f"{top1[c]:.1f}" for c in self.classes] + [f"{top1['mean']:.1f}", f"{top1['overall']:.1f}"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def per_class_top1(embeddings: torch.Tensor, text: torch.Tensor, target: torch.Tensor, classes: list[str]) -> dict:
    hits = ((F.normalize(embeddings.float(), dim=-1) @ text.T).argmax(1) == target).float()
    out = {name: float(hits[target == i].mean() * 100) for i, name in enumerate(classes)}
    out["mean"] = float(np.mean([out[name] for name in classes]))
    out["overall"] = float(hits.mean() * 100)
    return out


def _gaussian_embeddings(
    encoder: GSCLIPEncoder, data: DataFolder, rows: np.ndarray, batch: int, partial_views: int = 0
) -> torch.Tensor:
    """Embeddings of the objects' full clouds, or with ``partial_views`` of their partial clouds from
    that many views (``gaussians.h5``'s partial_features)."""
    read_gaussians_h5(data)
    with h5py.File(data.path(GAUSSIANS), "r") as f:
        if not partial_views:
            counts = f["counts"][:]
            objects = [f["features"][row, : counts[row]].astype(np.float32) for row in rows]
        else:
            made = [int(v) for v in f.attrs.get("partial_views", [])]
            if partial_views not in made:
                raise DataError(f"{data.path(GAUSSIANS)} has no partial clouds of {partial_views} views "
                                f"(it has: {made or 'none'}; `ddclip data gaussians` makes 1 and 3)")  # fmt: skip
            k, counts = made.index(partial_views), f["partial_counts"][:]
            objects = [f["partial_features"][row, k, : counts[row, k]].astype(np.float32) for row in rows]
    objects = [draw_subset(features, encoder.config.cloud.draw_points) for features in objects]  # as trained
    return encoder.eval().encode(objects, batch_size=batch).cpu()


def _multiview_embeddings(model: DuoduoCLIP, data: DataFolder, rows: np.ndarray, batch: int) -> torch.Tensor:
    out = []
    with h5py.File(data.path(IMAGES), "r") as f:
        for start in range(0, len(rows), batch):
            views = [f["imgs"][row].transpose(0, 2, 3, 1) for row in rows[start : start + batch]]
            out.append(model.encode_views(views).cpu())
    return torch.cat(out)


def evaluate_gaussians(
    encoder: GSCLIPEncoder,
    data: DataFolder,
    model: DuoduoCLIP,
    *,
    split: str | None = "val",
    templates: str = "openai",
    multiview: bool = True,
    fusion_weights: Sequence[float] = (),
    batch_size: int = 16,
    partial_views: int = 0,
) -> GaussianZeroShot:
    """Zero-shot top-1 per class of the Gaussian encoder, Duoduo CLIP (all views) and plain CLIP.

    fusion_weights: Gaussian weights in [0, 1] for rows of fused embeddings (needs ``multiview``).
    partial_views: 0 for the full clouds, else the partial clouds made from that many views.
    """
    if fusion_weights and not multiview:
        raise ValueError("fusion rows need the multi-view embeddings: drop --no-multiview or --fusion-weights")
    for weight in fusion_weights:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"fusion weight {weight} is outside [0, 1] (the Gaussian embedding's share)")
    candidates = range(data.num_objects) if split is None else data.rows(split)
    rows = np.array([r for r in candidates if data.objects[r].category], dtype=np.int64)
    if len(rows) == 0:
        raise DataError(f"{data.root}: no objects with a category to evaluate (split {split!r})")
    names = [data.objects[r].category for r in rows]
    classes = sorted(set(names))
    target = torch.tensor([classes.index(n) for n in names])
    text = torch.tensor(LabelSet(classes, templates=templates).embeddings(model, cache=False)).float()
    if text.shape[1] != encoder.embed_dim:
        raise ValueError(f"the GS encoder embeds into {encoder.embed_dim} dims, the text tower into {text.shape[1]}")
    if not check_text_space(encoder.text_space, model, f"the GS encoder {encoder.weights_id}", "Evaluate it with -w "
                            "naming the view model whose text tower made its targets."):  # fmt: skip
        log.warning("the GS encoder %s does not record the CLIP text space it was trained against: its rows are "
                    "scored by %s's text tower on trust", encoder.weights_id, model.weights_id)  # fmt: skip
    result = GaussianZeroShot(classes, {c: names.count(c) for c in classes})
    gs = _gaussian_embeddings(encoder, data, rows, batch_size, partial_views)
    gs_name = "GS-CLIP (Gaussians)" if not partial_views else f"GS-CLIP ({partial_views}-view partial clouds)"
    result.rows[gs_name] = per_class_top1(gs, text, target, classes)
    result.sources[gs_name] = encoder.weights_id
    if multiview:
        name = f"Duoduo CLIP ({data.num_views} views)"
        mv = _multiview_embeddings(model, data, rows, batch_size)
        result.rows[name] = per_class_top1(mv, text, target, classes)
        result.sources[name] = model.weights_id
        for weight in fusion_weights:
            fused_name = f"fused, Gaussian weight {weight:g}"
            result.rows[fused_name] = per_class_top1(fuse_embeddings(mv, gs, weight), text, target, classes)
            result.sources[fused_name] = f"{model.weights_id} + {encoder.weights_id}"
    if data.path(IMAGE_TARGETS).is_file():
        with h5py.File(data.path(IMAGE_TARGETS), "r") as f:
            plain = torch.from_numpy(np.stack([f["img_feat"][r].astype(np.float32).mean(0) for r in rows]))
            source = str(f.attrs.get("weights_id", "unknown weights"))
        name = f"plain CLIP ({data.num_views}-view mean)"
        result.rows[name] = per_class_top1(plain, text, target, classes)
        result.sources[name] = source
    return result


def write_gaussian_report(result: GaussianZeroShot, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gaussians_zero_shot.json").write_text(json.dumps(result.to_json(), indent=1))
    (out / "gaussians_zero_shot.md").write_text(result.markdown())
    return [out / "gaussians_zero_shot.json", out / "gaussians_zero_shot.md"]
