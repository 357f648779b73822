"""How far a candidate engine's outputs are from the FP32 reference, by task. Pure numpy, no model code.

- classification: top-1 agreement and top-5 containment of the reference's top-1 (near-ties reported apart,
  since a reference whose top two classes are almost equal can flip under any precision change);
- detection: boxes matched by IoU with a score tolerance, giving precision and recall against the reference
  boxes (boxes within the tolerance of the score threshold count as borderline, not as misses);
- generic: per output, cosine similarity and max/mean absolute error.

Every function takes the reference first and the candidate second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from agent.lazy import deferred

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

NEAR_TIE_MARGIN = 0.1  # reference top-1 minus top-2 probability below this: a near-tie


def finite_or_none(value: float) -> Optional[float]:
    """A float for JSON (which has no NaN/inf): None where it is not finite."""
    value = float(value)
    return value if math.isfinite(value) else None


# classification ---------------------------------------------------------------------------------------------


def to_probabilities(scores: np.ndarray) -> np.ndarray:
    """[N, C] logits or probabilities -> probabilities (softmax unless every row already is a distribution)."""
    values = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if values.size and np.all(values >= 0) and np.all(values <= 1) and np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
        return values
    shifted = values - np.max(np.where(np.isfinite(values), values, -np.inf), axis=1, keepdims=True)
    exp = np.exp(np.where(np.isfinite(shifted), shifted, -np.inf))
    total = exp.sum(axis=1, keepdims=True)
    return np.where(total > 0, exp / np.where(total > 0, total, 1.0), 0.0)


@dataclass
class ClassificationAgreement:
    count: int
    top1_agreement: float
    top5_containment: float  # reference top-1 inside the candidate's top-k (k=5, or C when fewer classes)
    top1_agreement_without_near_ties: float
    mean_prob_l1: float  # mean over frames of sum |p_ref - p_cand|, in 0..2
    disagreements: List[int] = field(default_factory=list)  # frame indices where top-1 differs
    near_ties: List[int] = field(default_factory=list)  # frames whose reference top-1/top-2 margin < NEAR_TIE_MARGIN

    def to_dict(self) -> Dict[str, Any]:
        return {
            "count": self.count,
            "top1_agreement": self.top1_agreement,
            "top5_containment": self.top5_containment,
            "top1_agreement_without_near_ties": self.top1_agreement_without_near_ties,
            "mean_prob_l1": finite_or_none(self.mean_prob_l1),
            "disagreements": list(self.disagreements),
            "near_tie_disagreements": [i for i in self.disagreements if i in self.near_ties],
        }


def classification_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 5, near_tie_margin: float = NEAR_TIE_MARGIN) -> ClassificationAgreement:
    """Agreement of two [N, C] score arrays (logits or probabilities)."""
    if len(reference) != len(candidate):
        raise ValueError(f"reference has {len(reference)} frames, candidate {len(candidate)}")
    ref = to_probabilities(reference)
    cand = to_probabilities(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"reference scores have shape {ref.shape}, candidate {cand.shape}")
    count = len(ref)
    if count == 0:
        return ClassificationAgreement(0, 1.0, 1.0, 1.0, 0.0)
    k = min(k, ref.shape[1])
    ref_top1 = np.argmax(ref, axis=1)
    cand_order = np.argsort(-cand, axis=1, kind="stable")
    cand_top1 = cand_order[:, 0]
    in_topk = np.array([ref_top1[i] in cand_order[i, :k] for i in range(count)])
    agree = ref_top1 == cand_top1
    if ref.shape[1] >= 2:
        top2 = np.sort(ref, axis=1)[:, -2:]
        near = (top2[:, 1] - top2[:, 0]) < near_tie_margin
    else:
        near = np.zeros(count, dtype=bool)
    clear = ~near
    without_ties = float(agree[clear].mean()) if clear.any() else 1.0
    return ClassificationAgreement(
        count=count,
        top1_agreement=float(agree.mean()),
        top5_containment=float(in_topk.mean()),
        top1_agreement_without_near_ties=without_ties,
        mean_prob_l1=float(np.abs(ref - cand).sum(axis=1).mean()),
        disagreements=[int(i) for i in np.nonzero(~agree)[0]],
        near_ties=[int(i) for i in np.nonzero(near)[0]],
    )


def label_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy against ground-truth class indices (frames labelled -1 are left out)."""
    labels = np.asarray(labels).reshape(-1)
    known = labels >= 0
    if not known.any():
        return float("nan")
    predicted = np.argmax(np.asarray(scores).reshape(len(scores), -1), axis=1)
    return float((predicted[known] == labels[known]).mean())


# detection --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detections:
    """The boxes of one frame: [K, 4] as (x, y, w, h) in any consistent coordinates, and [K] scores."""

    boxes: np.ndarray
    scores: np.ndarray

    @classmethod
    def of(cls, boxes: Any, scores: Any) -> Detections:
        box_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        score_array = np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(box_array) != len(score_array):
            raise ValueError(f"{len(box_array)} boxes but {len(score_array)} scores")
        return cls(box_array, score_array)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))

    def __len__(self) -> int:
        return len(self.scores)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [A,4] with every box in b [B,4], boxes as (x, y, w, h)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None, :]) - np.maximum(a[:, 0][:, None], b[:, 0][None, :]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None, :]) - np.maximum(a[:, 1][:, None], b[:, 1][None, :]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[:, 2], 0, None) * np.clip(a[:, 3], 0, None)
    area_b = np.clip(b[:, 2], 0, None) * np.clip(b[:, 3], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_detections(reference: Detections, candidate: Detections, iou_threshold: float = 0.5, score_tolerance: float = 0.1) -> List[Tuple[int, int, float]]:
    """Greedy one-to-one matching, best IoU first: pairs (ref index, candidate index, IoU) with IoU at least
    `iou_threshold` and scores within `score_tolerance`."""
    if len(reference) == 0 or len(candidate) == 0:
        return []
    ious = iou_matrix(reference.boxes, candidate.boxes)
    close = np.abs(reference.scores[:, None].astype(np.float64) - candidate.scores[None, :]) <= score_tolerance + 1e-9
    rows, cols = np.nonzero((ious >= iou_threshold) & close)
    order = np.argsort(-ious[rows, cols], kind="stable")
    used_ref, used_cand, pairs = set(), set(), []
    for index in order:
        r, c = int(rows[index]), int(cols[index])
        if r in used_ref or c in used_cand:
            continue
        used_ref.add(r)
        used_cand.add(c)
        pairs.append((r, c, float(ious[r, c])))
    return pairs


@dataclass
class DetectionAgreement:
    frames: int
    reference_boxes: int  # counted in recall (borderline misses left out)
    candidate_boxes: int  # counted in precision (at or above the score threshold, borderline extras left out)
    matched: int
    precision: float
    recall: float
    mean_iou: float
    mean_score_delta: float  # candidate minus reference, over matched pairs
    borderline: int  # unmatched boxes within the score tolerance of the threshold, counted on neither side
    missed_frames: List[int] = field(default_factory=list)  # frames with a reference box the candidate missed

    def to_dict(self) -> Dict[str, Any]:
        return {
            "frames": self.frames,
            "reference_boxes": self.reference_boxes,
            "candidate_boxes": self.candidate_boxes,
            "matched": self.matched,
            "precision": self.precision,
            "recall": self.recall,
            "mean_iou": finite_or_none(self.mean_iou),
            "mean_score_delta": finite_or_none(self.mean_score_delta),
            "borderline": self.borderline,
            "missed_frames": list(self.missed_frames),
        }


def detection_agreement(
    references: Sequence[Detections],
    candidates: Sequence[Detections],
    iou_threshold: float = 0.5,
    score_tolerance: float = 0.1,
    score_threshold: Optional[float] = None,
) -> DetectionAgreement:
    """Precision and recall of the candidate's boxes against the reference's, frame by frame.

    With `score_threshold` (the one the reference was decoded at), the candidate should be decoded at
    `score_threshold - score_tolerance`: a reference box the candidate scores just under the threshold still
    matches, candidate boxes under the threshold never count as extras, and unmatched boxes of either side
    within the tolerance of the threshold are borderline (left out of both ratios, counted apart)."""
    if len(references) != len(candidates):
        raise ValueError(f"reference has {len(references)} frames, candidate {len(candidates)}")
    ref_total = cand_total = matched = borderline = 0
    matched_for_precision = 0
    ious: List[float] = []
    deltas: List[float] = []
    missed_frames: List[int] = []
    for frame, (ref, cand) in enumerate(zip(references, candidates)):
        pairs = match_detections(ref, cand, iou_threshold, score_tolerance)
        ref_matched = {r for r, _, _ in pairs}
        cand_matched = {c for _, c, _ in pairs}
        matched += len(pairs)
        ious.extend(iou for _, _, iou in pairs)
        deltas.extend(float(cand.scores[c] - ref.scores[r]) for r, c, _ in pairs)
        frame_missed = False
        for r in range(len(ref)):
            if r in ref_matched:
                ref_total += 1
            elif score_threshold is not None and ref.scores[r] < score_threshold + score_tolerance:
                borderline += 1
            else:
                ref_total += 1
                frame_missed = True
        for c in range(len(cand)):
            above = score_threshold is None or cand.scores[c] >= score_threshold
            if c in cand_matched:
                if above:
                    cand_total += 1
                    matched_for_precision += 1
            elif not above:
                continue  # decoded only to rescue reference boxes near the threshold
            elif score_threshold is not None and cand.scores[c] < score_threshold + score_tolerance:
                borderline += 1
            else:
                cand_total += 1
        if frame_missed:
            missed_frames.append(frame)
    recall = matched / ref_total if ref_total else 1.0
    precision = matched_for_precision / cand_total if cand_total else 1.0
    return DetectionAgreement(
        frames=len(references),
        reference_boxes=ref_total,
        candidate_boxes=cand_total,
        matched=matched,
        precision=float(precision),
        recall=float(min(1.0, recall)),
        mean_iou=float(np.mean(ious)) if ious else float("nan"),
        mean_score_delta=float(np.mean(deltas)) if deltas else float("nan"),
        borderline=borderline,
        missed_frames=missed_frames,
    )


# generic ----------------------------------------------------------------------------------------------------


@dataclass
class OutputAgreement:
    name: str
    cosine_mean: float  # mean over frames of the per-frame cosine similarity
    cosine_min: float
    max_abs_error: float
    mean_abs_error: float
    reference_max_abs: float  # to judge max_abs_error against the output's own scale
    non_finite: int  # NaN/inf values in the candidate

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "cosine_mean": finite_or_none(self.cosine_mean),
            "cosine_min": finite_or_none(self.cosine_min),
            "max_abs_error": finite_or_none(self.max_abs_error),
            "mean_abs_error": finite_or_none(self.mean_abs_error),
            "reference_max_abs": finite_or_none(self.reference_max_abs),
            "non_finite": self.non_finite,
        }


def cosine_per_frame(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each frame's flattened values. Two all-zero frames agree (1); one does not (0)."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    cand = np.where(np.isfinite(cand), cand, 0.0)
    dot = (ref * cand).sum(axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    both_zero = (np.abs(ref).max(axis=1, initial=0.0) == 0) & (np.abs(cand).max(axis=1, initial=0.0) == 0)
    cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    return np.clip(np.where(both_zero, 1.0, cos), -1.0, 1.0)


def output_agreement(name: str, reference: np.ndarray, candidate: np.ndarray) -> OutputAgreement:
    reference = np.asarray(reference)
    candidate = np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"output {name}: reference shape {reference.shape}, candidate {candidate.shape}")
    if reference.size == 0:
        return OutputAgreement(name, 1.0, 1.0, 0.0, 0.0, 0.0, 0)
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    non_finite = int((~np.isfinite(cand)).sum())
    error = np.abs(ref - cand)
    cos = cosine_per_frame(ref, cand)
    return OutputAgreement(
        name=name,
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        max_abs_error=float(np.max(error)) if non_finite == 0 else float("inf"),
        mean_abs_error=float(np.mean(error)) if non_finite == 0 else float("inf"),
        reference_max_abs=float(np.max(np.abs(ref))),
        non_finite=non_finite,
    )
