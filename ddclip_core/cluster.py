"""Running work on a Ray cluster (``--ray``): joining it, the model every worker loads, tasks over
shards of objects, and batch inference over shards with Ray Data (an actor pool: one model per actor).

Ray is optional (``pip install 'ddclip-py[cluster]'``): nothing here imports it at module level, and
without ``--ray`` no command touches this module. Workers read and write the paths they are given, so
every node must see the same file system at the same paths (NFS, a cluster file system, or one machine).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

LOCAL = "local"  # --ray local: start a one-machine cluster inside this process
RETRIES = 3  # a task whose worker died (killed, out of memory, node lost) is run again this often
WAIT_BATCH = 256  # finished tasks taken per wait


def add_ray_argument(parser: Any) -> None:
    """``--ray [ADDRESS]`` (after the positional arguments, or as --ray=ADDRESS)."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="run on a Ray cluster: auto (the cluster of $RAY_ADDRESS; the default when ADDRESS is left out), "
        "HOST:PORT of the head node, or local (a one-machine cluster). Every node must see the same paths. "
        "Needs `pip install 'ddclip-py[cluster]'`; without --ray: this machine only, no Ray",
    )


def require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # a RuntimeError: the command line names it as is, not as a training dependency
        raise RuntimeError("--ray needs Ray: `pip install 'ddclip-py[cluster]'`") from exc
    return ray


def connect(address: str = "auto", *, num_cpus: int | None = None, object_store_mb: int | None = None) -> None:
    """Join the Ray cluster at ``address`` (unless this process already did).

    address: "auto" (the cluster of $RAY_ADDRESS, else one started on this machine with ``ray start``),
    "host:port" of a head node, "ray://host:10001" (Ray Client), or "local" to start a cluster in this
    process (num_cpus, object_store_mb apply then).
    """
    ray = require_ray()
    if ray.is_initialized():
        return
    if address == LOCAL:
        memory = None if object_store_mb is None else object_store_mb * 2**20
        ray.init(num_cpus=num_cpus, object_store_memory=memory, include_dashboard=False, log_to_driver=False)
        return
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        where = os.environ.get("RAY_ADDRESS") if address == "auto" else address
        raise ConnectionError(
            f"no Ray cluster at {where or 'this machine'!r} ({exc}); start one with `ray start --head`, "
            "set RAY_ADDRESS, or pass --ray local"
        ) from exc


def cluster_resources() -> tuple[int, int]:
    """(CPUs, GPUs) of the cluster joined."""
    resources = require_ray().cluster_resources()
    return int(resources.get("CPU", 0)), int(resources.get("GPU", 0))


@dataclass(frozen=True)
class ModelSpec:
    """How each worker loads the model: ``load_model``'s arguments, the weights a path every node sees."""

    weights: str
    device: str = "auto"
    precision: str = "fp32"
    layers_threshold: int | None = None
    arch: str | None = None
    trust_pickle: bool = False

    @classmethod
    def from_args(cls, args: Any) -> ModelSpec:
        from .hub import default_weights

        weights = args.weights or default_weights()
        if weights is None:
            raise ValueError(
                "--ray needs weights every worker can load (--weights or $DDCLIP_WEIGHTS): random weights "
                "would differ on every worker"
            )
        return cls(str(Path(weights).resolve()), args.device, args.precision, args.layers_threshold, args.arch,
                   args.trust_pickle)  # fmt: skip

    def load(self) -> Any:
        from .factory import load_model

        return load_model(self.weights, **{k: v for k, v in asdict(self).items() if k != "weights"})


def shards(count: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most ``size`` covering 0..count."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def run_tasks(
    function: Callable[..., Any],
    calls: Sequence[tuple],
    *,
    weights: Sequence[int] | None = None,
    desc: str = "",
    progress: bool = True,
    **options: Any,
) -> Iterator[tuple[int, Any]]:
    """Run ``function(*call)`` for every call as Ray tasks; yield (call index, result or exception) as
    they finish. A task whose worker dies is retried (``RETRIES``); one that still fails, or raises,
    yields its exception, so the caller decides what is fatal. weights: progress units per call."""
    ray = require_ray()
    remote = ray.remote(function).options(max_retries=RETRIES, **options)
    pending = {remote.remote(*call): i for i, call in enumerate(calls)}
    with tqdm(total=sum(weights) if weights else len(calls), desc=desc, unit="obj", disable=not progress) as bar:
        while pending:
            # Up to WAIT_BATCH finished at once: one wait per task over every pending ref was quadratic
            # in the driver (100 k tasks of an 800 k-object render).
            refs = list(pending)
            done, _ = ray.wait(refs, num_returns=1)
            more, _ = ray.wait(refs, num_returns=min(len(refs), WAIT_BATCH), timeout=0)
            for ref in dict.fromkeys([*done, *more]):
                index = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the caller decides what a failed task means
                    result = exc
                bar.update(weights[index] if weights else 1)
                yield index, result


def map_shards(
    tasks: Sequence[dict],
    actor: type,
    constructor: dict[str, Any],
    *,
    device: str | None = None,
    actors: int | None = None,
    gpus: bool | None = None,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """Ray Data batch inference over shards: ``actor(**constructor)`` is built once per actor (it loads
    the model there), then called with batches of one shard ``{"shard": [i], "task": [json]}`` and
    returns ``{"shard": [i], "result": [json], ...}``; yields each shard's row as it comes back.

    device: the model's device in the actors ("cpu" keeps them off the cluster's GPUs).
    gpus: one GPU per actor (None: when the cluster has GPUs and ``device`` is not "cpu").
    actors: pool size (default: one per GPU, else one per CPU, at most one per shard).
    """
    ray = require_ray()
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False
    cpus, gpu_count = cluster_resources()
    use_gpus = gpu_count > 0 and device != "cpu" if gpus is None else gpus  # a CPU model holds no GPU idle
    size = max(1, min(actors or (gpu_count if use_gpus else cpus), len(tasks)))
    items = [{"shard": i, "task": json.dumps(task)} for i, task in enumerate(tasks)]
    with warnings.catch_warnings():  # the retry bounds below have no named parameter yet (setup.py pins Ray)
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            actor,
            fn_constructor_kwargs=constructor,
            batch_size=1,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=size),
            num_gpus=1 if use_gpus else 0,
            num_cpus=1,
            # Ray Data restarts a pool actor and retries its task without end: a shard that always kills
            # its actor (out of memory, a crashing decoder) would never fail
            max_restarts=RETRIES,
            max_task_retries=RETRIES,
        )
    yield from dataset.iter_rows()
