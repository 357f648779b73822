"""The runner lifecycle every backend shares (after Polygraphy's BaseRunner).

Subclasses implement `_activate`, `_infer` and `_deactivate`; the public methods check state and inputs, so a
backend never sees a call it did not expect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from agent.errors import AgentError
from agent.lazy import deferred

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

log = logging.getLogger(__name__)

Dim = Union[int, str, None]


class RunnerError(AgentError):
    """A runner could not load its engine or run an inference."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Tuple[Dim, ...]  # a str or None marks a dynamic dimension
    dtype: str  # numpy dtype name, e.g. "float32"

    def accepts(self, array: np.ndarray) -> bool:
        if len(array.shape) != len(self.shape):
            return False
        return all(not isinstance(want, int) or want < 0 or want == got for want, got in zip(self.shape, array.shape))


class Runner:
    """activate() loads, infer() runs, deactivate() frees; usable as a context manager."""

    backend = "base"

    def __init__(self, name: str = "") -> None:
        self.name = name or self.backend
        self.is_active = False
        self.inputs: List[TensorSpec] = []
        self.outputs: List[TensorSpec] = []
        self.max_batch: Optional[int] = None  # the largest batch the engine takes; None: unknown or unbounded

    def activate(self) -> Runner:
        if self.is_active:
            return self
        self._activate()
        self.is_active = True
        return self

    def infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if not self.is_active:
            raise RunnerError(f"runner {self.name} is not active: call activate() first")
        for spec in self.inputs:
            if spec.name not in feed:
                raise RunnerError(f"runner {self.name}: input '{spec.name}' missing (got {sorted(feed)})")
            array = feed[spec.name]
            if not spec.accepts(array):
                raise RunnerError(f"runner {self.name}: input '{spec.name}' has shape {tuple(array.shape)}, expected {spec.shape}")
        return self._infer(feed)

    def deactivate(self) -> None:
        if not self.is_active:
            return
        try:
            self._deactivate()
        finally:
            self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def __del__(self) -> None:
        if getattr(self, "is_active", False):
            log.warning("runner %s was activated but never deactivated", getattr(self, "name", "?"))

    # backend work ---------------------------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    @property
    def input_names(self) -> Sequence[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> Sequence[str]:
        return [spec.name for spec in self.outputs]

    def first_input(self) -> TensorSpec:
        if not self.inputs:
            raise RunnerError(f"runner {self.name} has no inputs (not activated?)")
        return self.inputs[0]


def batch_size_of(spec: TensorSpec) -> Optional[int]:
    """The fixed batch of an input, or None if the batch dimension is dynamic."""
    first = spec.shape[0] if spec.shape else None
    return first if isinstance(first, int) and first > 0 else None
