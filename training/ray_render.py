"""``ddclip data render --ray``: rendering as Ray tasks over shards of objects.

The same renderer and files as ``render_all`` (``<out>/<uid>/views.png`` + ``meta.json``), so the
renders are the same bit for bit and a run resumes the same way: objects already done are skipped by
the driver, and again inside a task (a task re-run after its worker died skips what its first attempt
finished, so every object is rendered once). A task is retried when its worker dies; a shard that
still fails (a mesh that crashes the renderer itself) is split and its objects tried one by one, and
an object that fails alone goes to ``failures.jsonl``. Never fatal.

``renderer="egl"`` tasks ask for ``gpus_per_task`` GPUs when the cluster has GPUs. That GPU path has
never been run here (no GPU on the development machines).
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .render import MeshObject, RenderReport, RenderSettings, is_done, pending, record, render_job

SHARD_OBJECTS = 8  # objects per task: ~1 s of work at 12 views, so Ray's per-task cost is negligible


def render_shard(objects: list[MeshObject], out: Path, settings: RenderSettings) -> list[tuple[str, str | None]]:
    """Render each object of a shard not done yet (the Ray task): (uid, error or None) per object."""
    if settings.renderer == "egl" and "EGL_VISIBLE_DEVICES" not in os.environ:
        # (never run: no GPU here) Ray pins the task's GPU with CUDA_VISIBLE_DEVICES, which EGL ignores:
        # pybullet's plugin would take the first device on every task of a multi-GPU node
        import ray

        gpus = ray.get_gpu_ids()
        if gpus:
            os.environ["EGL_VISIBLE_DEVICES"] = str(gpus[0])
    results = []
    for obj in objects:
        if is_done(out, obj.uid, settings.depth):  # finished by an earlier attempt of this task
            results.append((obj.uid, None))
        else:
            results.append(render_job((obj, out, settings)))
    return results


def absolute_paths(obj: MeshObject) -> MeshObject:
    texture = None if obj.texture is None else Path(obj.texture).resolve()
    return replace(obj, path=Path(obj.path).resolve(), texture=texture)


def render_all_ray(
    objects: Sequence[MeshObject],
    out: Path,
    settings: RenderSettings | None = None,
    *,
    shard_objects: int = SHARD_OBJECTS,
    gpus_per_task: float = 0.25,
    progress: bool = True,
) -> RenderReport:
    """Render every object not yet done into ``out`` on the Ray cluster joined (``cluster.connect``)."""
    # Here, not at the top: the workers import this module for render_shard, and need no torch.
    from ddclip_core.cluster import cluster_resources, run_tasks

    settings = settings or RenderSettings()
    if shard_objects < 1:
        raise ValueError(f"shard_objects must be >= 1, got {shard_objects}")
    # Absolute: a worker's working directory is where its node started Ray, not the driver's.
    out = Path(out).resolve()
    objects = [absolute_paths(obj) for obj in objects]
    out.mkdir(parents=True, exist_ok=True)
    report = RenderReport()
    todo = pending(objects, out, settings, report)
    start = time.perf_counter()
    options = {"num_cpus": 1}
    if settings.renderer == "egl" and cluster_resources()[1] > 0:
        options["num_gpus"] = gpus_per_task
    batches = [todo[i : i + shard_objects] for i in range(0, len(todo), shard_objects)]
    seen: set[str] = set()
    while batches:
        calls = [(batch, out, settings) for batch in batches]
        weights = [len(batch) for batch in batches]
        retry = []
        for index, result in run_tasks(
            render_shard, calls, weights=weights, desc="render (ray)", progress=progress, **options
        ):
            batch = batches[index]
            if isinstance(result, Exception):
                left = [obj for obj in batch if not is_done(out, obj.uid, settings.depth)]
                for obj in batch:
                    if obj not in left and obj.uid not in seen:
                        seen.add(obj.uid)
                        record(report, out, obj.uid, None)
                if len(left) > 1:  # find the object that kills its worker: one task each
                    retry += [[obj] for obj in left]
                    continue
                result = [(obj.uid, _describe(result)) for obj in left]
            for uid, error in result:
                if uid not in seen:
                    seen.add(uid)
                    record(report, out, uid, error)
        batches = retry
    report.seconds = time.perf_counter() - start
    return report


def _describe(exc: Exception) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip() or type(exc).__name__
