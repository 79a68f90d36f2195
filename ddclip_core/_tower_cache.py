"""A form of a tower derived from its weights (pre-packed for oneDNN, a 16-bit copy), made once and kept.

``TowerCache(form)`` keeps one at a time. ``form`` says where it applies (``available(device, precision)``
and ``supports(module)``), what it is derived from (``state(module)``: ``identity.weights_state``) and how
to make it (``build(module, precision)``). It is made again when that state changes: a new tensor, an
in-place update, a module replaced, a hook added. It is dropped as soon as it no longer applies (another
precision or device, say): a kept one costs a copy of the weights.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn


class TowerCache:
    def __init__(self, form: Any) -> None:
        self.form = form
        self._lock = threading.Lock()
        self._entry: tuple[tuple, Any] | None = None

    # A copied or unpickled model makes its own again: the lock and oneDNN tensors do not copy.
    def __deepcopy__(self, memo: dict) -> TowerCache:
        return TowerCache(self.form)

    def __getstate__(self) -> dict:
        return {"form": self.form}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["form"])

    def get(self, module: nn.Module, device: torch.device, precision: str) -> Any:
        """The derived form for this device and precision; None where it does not apply."""
        if not self.form.available(device, precision):
            self.clear()
            return None
        key = (precision, self.form.state(module))  # (the state names the tensors, hence their device)
        with self._lock:
            if self._entry is not None and self._entry[0] == key:
                return self._entry[1]
            self._entry = None  # free the old one first: it costs a copy of the weights
            if not self.form.supports(module):  # (hooks, another architecture: part of the state)
                self._entry = (key, None)
                return None
            with torch.inference_mode():
                self._entry = (key, self.form.build(module, precision))
            return self._entry[1]

    def clear(self) -> None:
        with self._lock:
            self._entry = None
