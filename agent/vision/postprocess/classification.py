"""Classification: softmax over the logits, top-k with labels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

from agent.lazy import deferred
from agent.vision.options import ClassificationConfig
from agent.vision.postprocess.base import (
    Classification,
    Findings,
    Postprocessor,
    label_of,
    load_labels,
    pick_output,
)
from agent.vision.preprocess import FrameGeometry

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

KEY = "classification"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=-1, keepdims=True)


def looks_like_probabilities(values: np.ndarray) -> bool:
    return bool(values.size and np.all(values >= 0.0) and np.all(values <= 1.0) and abs(float(np.sum(values)) - 1.0) < 1e-3)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first."""
    k = min(k, scores.size)
    best = np.argpartition(-scores, k - 1)[:k]
    return best[np.argsort(-scores[best], kind="stable")]


class ClassificationPostprocessor(Postprocessor):
    KEY = KEY

    def __init__(self, config: ClassificationConfig) -> None:
        super().__init__(config)
        self.labels: List[str] = load_labels(config.labels, config.short_labels)

    def frame(self, outputs: Dict[str, np.ndarray], geometry: FrameGeometry) -> Findings:
        config: ClassificationConfig = self.config
        values = pick_output(outputs, config.output, "classification").astype(np.float32).reshape(-1)
        if config.softmax == "yes" or (config.softmax == "auto" and not looks_like_probabilities(values)):
            values = softmax(values)
        found = []
        for index in top_k(values, config.top_k):
            score = float(values[index])
            if score < config.min_score:
                break
            label_index = int(index) - config.label_offset
            found.append(Classification(label_of(self.labels, label_index), label_index, score))
        return Findings(classes=found)


PLUGIN = (KEY, ClassificationConfig, ClassificationPostprocessor)
