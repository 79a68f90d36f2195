"""Which embeddings may be compared: one notion of weight identity for banks, memories and enrolled names.

A model answers to its fingerprint (``DuoduoCLIP.weights_id``) and to its aliases: a published
checkpoint is also ``published:<file stem>``, the id a bank imported from the released Objaverse
embeddings records, since those were made without the checkpoint at hand. Everything that stores
embeddings records the id of what made them, and everything that reads them back asks
``identity.accepts(recorded)``: never a string comparison of its own.

Embeddings fused with a second encoder (GS-CLIP point clouds) live in a space named by the fusion as
well: ``identity.fused("+gs:<id>@w0.5")`` accepts only what that same fusion made.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_serials: dict[int, tuple[weakref.ref, int]] = {}  # id -> (the tensor or module, weakly; its serial number)
_next_serial = itertools.count(1)
_serials_lock = threading.Lock()


def _serial(item: Any) -> int:
    """A number of this tensor's (or module's) own for as long as it lives. Its address is not one: a
    tensor made after another was freed can take the same address (and version 0), as replacing a
    parameter twice can."""
    entry = _serials.get(id(item))
    if entry is not None and entry[0]() is item:
        return entry[1]
    with _serials_lock:
        key = id(item)
        entry = _serials.get(key)
        if entry is not None and entry[0]() is item:  # another thread named it meanwhile
            return entry[1]
        serial = next(_next_serial)

        def drop(_: weakref.ref, key: int = key, serial: int = serial) -> None:
            if _serials.get(key, (None, None))[1] == serial:
                _serials.pop(key, None)

        _serials[key] = (weakref.ref(item, drop), serial)
        return serial


def tensors_state(tensors: Iterable[Any]) -> tuple:
    """Changes whenever one of ``tensors`` does: another tensor (loaded, assigned), new storage (moved to
    another device, ``.data`` assigned) or an in-place update (an optimizer step, load_state_dict), since
    version counters are part of it (fused optimizers count theirs: ``count_fused_optimizer_steps``). An edit
    through ``.data`` bypasses them, as it does autograd's checks. Cheap: no tensor is read."""
    return tuple((_serial(t), t.data_ptr(), t._version) for t in tensors)


def count_fused_optimizer_steps() -> None:
    """Make every optimizer step count as an in-place update of its parameters, once per process.

    Fused optimizers (``AdamW(fused=True)``, the fastest on GPUs) write the parameters in one kernel
    without bumping their version counters, so ``tensors_state`` would not see the step: packed towers,
    kept view tokens and ``weights_id`` would outlive the weights they came from. A step that did bump
    them is bumped once more, which changes nothing but the number."""
    global _steps_counted
    if _steps_counted:
        return
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def bump(optimizer: Any, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            params = [p for group in optimizer.param_groups for p in group["params"] if not p.is_inference()]
            if params:
                torch.autograd.graph.increment_version(params)

    register_optimizer_step_post_hook(bump)
    _steps_counted = True


_steps_counted = False


def submodules(module: Any) -> list[Any]:
    """``module`` and every module below it, each once, in ``modules()``'s order. One plain walk of the
    children: ``modules()`` builds every name on the way, which is most of the per-call cost of the checks
    made before each encode (~0.5 ms for ViT-B/32's image tower, against ~17 ms for one view in bf16)."""
    seen: set[int] = set()
    found, stack = [], [module]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        stack.extend(child for child in reversed(current._modules.values()) if child is not None)
    return found


def weights_state(module: Any) -> tuple:
    """What ``module`` computes with, in one walk: ``tensors_state`` of every parameter and buffer, and
    each module below it with its forward hooks. So it also changes when a module is replaced (an
    activation swapped for another, say) or gains or loses a hook, with the same tensors."""
    state = []
    for current in submodules(module):
        state.append((_serial(current), tuple(current._forward_hooks), tuple(current._forward_pre_hooks)))
        tensors = (*current._parameters.values(), *current._buffers.values())
        # tensors_state's entries, written out: a call per module costs 15 % of this walk (run per encode)
        state.extend((_serial(t), t.data_ptr(), t._version) for t in tensors if t is not None)
    return tuple(state)


class WeightsMismatchError(ValueError):
    """Embeddings, queries or files made by other weights (or another fusion) than the reader's."""


@dataclass(frozen=True)
class WeightsIdentity:
    """The id of the weights that make embeddings, and the other names the same weights go by."""

    id: str
    aliases: tuple[str, ...] = ()

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    def accepts(self, recorded: str | None) -> bool:
        """Whether embeddings recorded as made by ``recorded`` compare with ours (unknown: yes)."""
        return not recorded or recorded in self.ids

    def check(self, recorded: str | None, what: str, advice: str = "") -> None:
        """Raise WeightsMismatchError naming ``what`` unless ``accepts(recorded)``."""
        if not self.accepts(recorded):
            names = repr(self.id) + (f" (also known as {', '.join(map(repr, self.aliases))})" if self.aliases else "")
            raise WeightsMismatchError(
                f"{what} made with weights {recorded!r}, not {names}: embeddings of different weights are not "
                f"comparable.{' ' + advice if advice else ''}"
            )

    def check_recorded(self, recorded: str | None, held: int, what: str, things: str, advice: str = "") -> None:
        """Raise WeightsMismatchError when a file holds ``held`` > 0 ``things`` and records no weights:
        nothing tells whose embeddings they are, so they cannot be checked (adopting them as ours would
        mix spaces silently). An empty file may become the reader's."""
        if held and not recorded:
            raise WeightsMismatchError(
                f"{what} records no weights, so its {held} {things} cannot be checked against {self.id!r}."
                f"{' ' + advice if advice else ''}"
            )

    def fused(self, suffix: str) -> WeightsIdentity:
        """The identity of embeddings fused from ours and another encoder's, named by ``suffix``."""
        return WeightsIdentity(self.id + suffix, tuple(alias + suffix for alias in self.aliases))


def identity_of(source: Any) -> WeightsIdentity | None:
    """A WeightsIdentity from an identity, a weights id string, a model (``weights_id`` and
    ``weights_aliases``), or None (unknown)."""
    if source is None or isinstance(source, WeightsIdentity):
        return source
    if isinstance(source, str):
        return WeightsIdentity(source) if source else None
    if hasattr(source, "identity") and isinstance(source.identity, WeightsIdentity):
        return source.identity
    if hasattr(source, "weights_id"):
        return WeightsIdentity(source.weights_id, tuple(getattr(source, "weights_aliases", ())))
    raise TypeError(f"cannot tell the weights of a {type(source).__name__}")


def compatible(recorded: str | None, source: Any) -> bool:
    """Whether ``recorded`` (a stored weights id) compares with ``source`` (see identity_of)."""
    identity = identity_of(source)
    return identity is None or identity.accepts(recorded)
