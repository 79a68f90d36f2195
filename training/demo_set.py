"""The real small data set: every named object of pybullet_data (and robosuite), rendered, packed,
with captions from their names and frozen-CLIP targets.

Each object is rendered ``renders`` times with independent random cameras; the last render of every
object is the validation split, so validation asks for the category of renders never trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from ddclip_core import DuoduoCLIP

from .catalog import pybullet_objects, robosuite_assets, robosuite_objects
from .layout import DataFolder
from .pack import pack
from .render import MeshObject, RenderReport, RenderSettings, render_all
from .targets import compute_targets

log = logging.getLogger(__name__)


@dataclass
class DemoSetReport:
    objects: int
    renders: RenderReport
    packed: int
    categories: int
    data: Path


def demo_objects(robosuite: str | Path | None, cache: Path, only: list[str] | None = None) -> list[MeshObject]:
    objects = pybullet_objects()
    assets = robosuite_assets(robosuite, cache)
    if assets is not None:
        objects += robosuite_objects(assets)
    else:
        log.info("robosuite assets not found (pass a wheel from `pip download --no-deps robosuite`); skipped")
    if only:
        unknown = set(only) - {obj.uid for obj in objects}
        if unknown:
            raise ValueError(f"unknown demo objects {sorted(unknown)}; known: {sorted(o.uid for o in objects)}")
        objects = [obj for obj in objects if obj.uid in only]
    return objects


def captions_for(obj: MeshObject) -> list[str]:
    return [obj.name, f"a 3d model of {obj.name}", f"a {obj.category}", f"a rendering of a {obj.category}"]


def make_demo_set(
    out: Path,
    model: DuoduoCLIP,
    *,
    renders: int = 3,
    robosuite: str | Path | None = None,
    only: list[str] | None = None,
    workers: int = 2,
    seed: int = 0,
    progress: bool = True,
    gaussians: bool = False,
) -> DemoSetReport:
    """Render (resumable), pack and compute targets into ``out/data``; renders live in ``out/renders``.

    gaussians: also render depth and lift every object to Gaussians (``out/data/gaussians.h5``).
    """
    if renders < 2:
        raise ValueError("renders must be >= 2 (the last render of each object is held out)")
    objects = demo_objects(robosuite, out / "cache", only)
    variants, splits, captions = [], {}, {}
    for obj in objects:
        for r in range(renders):
            variant = replace(obj, uid=f"{obj.uid}-r{r}")
            variants.append(variant)
            splits[variant.uid] = "val" if r == renders - 1 else "train"
            captions[variant.uid] = captions_for(obj)
    settings = RenderSettings(seed=seed, depth=gaussians)
    report = render_all(variants, out / "renders", settings, workers=workers, progress=progress)
    if report.failed:
        log.warning("%d renders failed (see %s)", report.failed, out / "renders" / "failures.jsonl")
    packed = pack(out / "renders", out / "data", splits=splits, captions=captions, progress=progress)
    data = DataFolder(out / "data")
    compute_targets(data, model, progress=progress)
    if gaussians:
        from .gaussian_data import write_gaussians

        write_gaussians(data, out / "renders", progress=progress)
    return DemoSetReport(len(objects), report, packed, len(data.categories()), out / "data")
