"""Zero-shot labelling: label sets, prompt templates averaged per class, cached text embeddings."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from .atomic import write_atomically
from .hub import cache_dir
from .text_files import naming_file, read_text

TEMPLATE_SETS: dict[str, list[str]] = {
    "openai": [template("{}") for template in OPENAI_IMAGENET_TEMPLATES],  # CLIP's 80 ImageNet prompts
    "simple": [template("{}") for template in SIMPLE_IMAGENET_TEMPLATES],
    "none": ["{}"],
}
LVIS_FILES = ("lvis-annotations.json.gz", "lvis-annotations.json", "lvis.csv")


def _one_label_slot(template: str) -> bool:
    """Whether ``template.format(label)`` puts the label in exactly one place and nothing else fails."""
    try:
        return template.count("{}") == 1 and template.format("\0").count("\0") == 1
    except (ValueError, IndexError, KeyError):  # stray braces, {1}, {name}
        return False


def load_templates(spec: str | Sequence[str] = "openai") -> list[str]:
    """A named template set (openai, simple, none), a text file with one template per line, or a list."""
    if isinstance(spec, str):
        if spec in TEMPLATE_SETS:
            return list(TEMPLATE_SETS[spec])
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"template set {spec!r} is neither {', '.join(TEMPLATE_SETS)} nor a file")
        spec = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    templates = list(spec)
    bad = [t for t in templates if not _one_label_slot(t)]
    if not templates or bad:
        raise ValueError(f"templates must each contain '{{}}' once for the label; bad: {bad[:3] or 'empty list'}")
    return templates


def find_lvis() -> Path:
    """$DDCLIP_LVIS, else an LVIS file in the ddclip cache (see `ddclip weights download --name lvis`)."""
    env = os.environ.get("DDCLIP_LVIS")
    candidates = [Path(env)] if env else [cache_dir() / name for name in LVIS_FILES]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "the LVIS label set needs the Objaverse-LVIS categories: run `ddclip weights download --name lvis` "
        "(online), or set DDCLIP_LVIS to lvis-annotations.json.gz or an LVIS csv (class_idx,name,uid); looked for "
        + ", ".join(str(p) for p in candidates)
    )


def load_labels(spec: str | os.PathLike | Sequence[str]) -> list[str]:
    """Label names from "lvis", a .txt (one per line), a .csv with a ``name`` column (the LVIS csv:
    one label per class_idx, in class order), a JSON list or {label: [...]} (.json/.json.gz), or a list."""
    if isinstance(spec, (list, tuple)):
        labels = [str(s) for s in spec]
    else:
        path = find_lvis() if str(spec) == "lvis" else Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"label file not found: {path} (use 'lvis' or a .txt/.csv/.json file)")
        labels = _read_label_file(path)
    labels = [label.strip() for label in labels if label.strip()]
    if not labels:
        raise ValueError(f"no labels in {spec}")
    duplicates = sorted(label for label, count in Counter(labels).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate labels in {spec}: {duplicates[:5]}")
    return labels


def _read_label_file(path: Path) -> list[str]:
    name = path.name.lower()
    with naming_file(path):
        if name.endswith((".json", ".json.gz")):
            opener = gzip.open if name.endswith(".gz") else open
            try:
                with opener(path, "rt", encoding="utf-8-sig") as handle:
                    data = json.load(handle)
            except OSError as exc:  # a .gz that is not gzip
                raise ValueError(f"{path}: not readable ({exc})") from None
            if isinstance(data, list) and all(isinstance(x, str) for x in data):
                return data
            if isinstance(data, dict):  # LVIS annotations: label -> uids
                return sorted(data)
            raise ValueError(f"{path}: a label JSON must be a list of strings or an object keyed by label")
        if name.endswith(".csv"):
            with path.open(newline="", encoding="utf-8-sig") as handle:
                rows = list(csv.DictReader(handle))
            if not rows or "name" not in rows[0]:
                raise ValueError(f"{path}: a label csv needs a 'name' column")
            if "class_idx" in rows[0]:
                return _labels_by_class(path, rows)
            return list(dict.fromkeys(row["name"] or "" for row in rows))
        return read_text(path).splitlines()


def _labels_by_class(path: Path, rows: list[dict[str, str]]) -> list[str]:
    by_class: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        try:
            by_class[int(row["class_idx"])] = row["name"] or ""
        except (TypeError, ValueError):
            raise ValueError(f"{path}: line {line}: class_idx {row['class_idx']!r} is not an integer") from None
    return [by_class[i] for i in sorted(by_class)]


def prompt_name(label: str) -> str:
    """LVIS-style names to words: "baseball_bat" -> "baseball bat", "bow_(weapon)" -> "bow (weapon)"."""
    return label.replace("_", " ").strip()


class LabelSet:
    """Label names plus prompt templates; their text embeddings are computed once per weights and kept
    in memory, and cached on disk (written atomically, checked when read back)."""

    KEPT_IN_MEMORY = 4  # weights whose matrices stay in memory (a fine-tuning loop makes new ones each step)

    def __init__(self, labels: str | os.PathLike | Sequence[str], templates: str | Sequence[str] = "openai") -> None:
        self.labels = load_labels(labels)
        self.templates = load_templates(templates)
        self._in_memory: OrderedDict[str, np.ndarray] = OrderedDict()  # the last few weights' matrices

    def __len__(self) -> int:
        return len(self.labels)

    def cache_key(self, weights_id: str, precision: str = "fp32") -> str:
        """Names the matrix of these labels and templates made by these weights in this precision (16-bit
        text embeddings differ from fp32's in the fourth digit: fp32 runs must not read them)."""
        text = "\n".join([weights_id, precision, *self.templates, "--", *self.labels])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def embeddings(self, model: Any, *, cache: bool = True) -> np.ndarray:
        """(labels, dim) unit vectors: per label, the mean of its normalised template embeddings."""
        key = self.cache_key(model.weights_id, getattr(model, "text_precision", "fp32"))
        if key in self._in_memory:
            self._in_memory.move_to_end(key)
            return self._in_memory[key]
        path = cache_dir() / "labels" / f"{key}.npy"
        out = _read_cache(path, (len(self.labels), model.embed_dim)) if cache else None
        if out is None:
            out = np.empty((len(self.labels), model.embed_dim), dtype=np.float32)
            for i, label in enumerate(self.labels):
                prompts = [template.format(prompt_name(label)) for template in self.templates]
                mean = model.encode_text(prompts).mean(dim=0)
                out[i] = (mean / mean.norm()).cpu().numpy()
            if cache:
                write_atomically(path, lambda handle: np.save(handle, out))
        out.setflags(write=False)  # shared by every caller
        self._in_memory[key] = out
        while len(self._in_memory) > self.KEPT_IN_MEMORY:
            self._in_memory.popitem(last=False)
        return out

    def classify(self, model: Any, shape_embeddings: Any, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per shape embedding, the top-k labels and cosine scores."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        shapes = np.asarray(
            shape_embeddings.detach().cpu() if hasattr(shape_embeddings, "detach") else shape_embeddings
        )
        shapes = np.atleast_2d(shapes).astype(np.float32)
        scores = shapes @ self.embeddings(model).T
        top = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, len(self.labels))]
        return [[(self.labels[j], float(row[j])) for j in ranks] for row, ranks in zip(scores, top, strict=True)]


def _read_cache(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """A cached label matrix, or None when absent or unusable (truncated, wrong shape, not unit rows)."""
    if not path.is_file():
        return None
    try:
        cached = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if cached.shape != shape or cached.dtype != np.float32 or not np.isfinite(cached).all():
        return None
    if not np.allclose(np.linalg.norm(cached, axis=1), 1.0, atol=1e-3):
        return None
    return cached
