"""Agreement metrics by task, on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from agent.gate.metrics import (
    Detections,
    classification_agreement,
    cosine_per_frame,
    detection_agreement,
    iou_matrix,
    label_accuracy,
    match_detections,
    output_agreement,
    to_probabilities,
)


def one_hot_logits(classes, num=10, margin=5.0):
    logits = np.zeros((len(classes), num), np.float32)
    logits[np.arange(len(classes)), classes] = margin
    return logits


def test_identical_scores_agree_fully():
    ref = one_hot_logits([1, 2, 3, 4])
    result = classification_agreement(ref, ref.copy())
    assert result.top1_agreement == 1.0
    assert result.top5_containment == 1.0
    assert result.disagreements == []
    assert result.mean_prob_l1 == pytest.approx(0.0, abs=1e-9)


def test_top1_disagreement_inside_top5_counts_for_containment_only():
    ref = one_hot_logits([1, 2, 3, 4])
    cand = ref.copy()
    cand[0, 7] = 6.0  # frame 0 now prefers class 7; class 1 still second
    result = classification_agreement(ref, cand)
    assert result.top1_agreement == 0.75
    assert result.top5_containment == 1.0
    assert result.disagreements == [0]


def test_reference_class_out_of_top5_fails_containment():
    ref = one_hot_logits([0])
    cand = np.arange(10, dtype=np.float32)[None, :]  # class 0 is the lowest
    assert classification_agreement(ref, cand).top5_containment == 0.0


def test_near_tie_disagreements_are_reported_apart():
    ref = np.array([[2.0, 1.98, -5.0], [5.0, 0.0, 0.0]], np.float32)  # frame 0: a near-tie
    cand = np.array([[1.98, 2.0, -5.0], [5.0, 0.0, 0.0]], np.float32)
    result = classification_agreement(ref, cand)
    assert result.top1_agreement == 0.5
    assert result.near_ties == [0]
    assert result.top1_agreement_without_near_ties == 1.0
    assert result.to_dict()["near_tie_disagreements"] == [0]


def test_probabilities_are_taken_as_they_are():
    probs = np.array([[0.7, 0.2, 0.1]])
    assert np.allclose(to_probabilities(probs), probs)
    assert np.allclose(to_probabilities(np.array([[0.0, 0.0]])), [[0.5, 0.5]])


def test_label_accuracy_ignores_unlabelled_frames():
    scores = one_hot_logits([1, 2, 3])
    assert label_accuracy(scores, np.array([1, 0, -1])) == 0.5


def test_mismatched_frame_counts_raise():
    with pytest.raises(ValueError):
        classification_agreement(one_hot_logits([1, 2]), one_hot_logits([1]))


def test_iou_of_boxes():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]])
    assert np.allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]])


def test_matching_needs_iou_and_close_scores():
    ref = Detections.of([[0, 0, 10, 10], [50, 50, 10, 10]], [0.9, 0.8])
    cand = Detections.of([[1, 0, 10, 10], [50, 50, 10, 10]], [0.88, 0.5])  # second: right place, score far off
    pairs = match_detections(ref, cand, iou_threshold=0.5, score_tolerance=0.1)
    assert [(r, c) for r, c, _ in pairs] == [(0, 0)]


def test_detection_precision_and_recall():
    refs = [Detections.of([[0, 0, 10, 10], [40, 40, 10, 10]], [0.9, 0.9]), Detections.of([[0, 0, 10, 10]], [0.9])]
    cands = [Detections.of([[0, 0, 10, 10]], [0.9]), Detections.of([[0, 0, 10, 10], [80, 80, 5, 5]], [0.9, 0.95])]
    result = detection_agreement(refs, cands, 0.5, 0.1, score_threshold=0.5)
    assert result.recall == pytest.approx(2 / 3)
    assert result.precision == pytest.approx(2 / 3)
    assert result.missed_frames == [0]
    assert result.mean_iou == pytest.approx(1.0)


def test_boxes_near_the_score_threshold_are_borderline_not_errors():
    refs = [Detections.of([[0, 0, 10, 10], [40, 40, 10, 10]], [0.9, 0.55])]
    # the candidate scores the second face 0.48: decoded at 0.4, it still matches within the tolerance
    cands = [Detections.of([[0, 0, 10, 10], [40, 40, 10, 10], [70, 70, 8, 8]], [0.9, 0.48, 0.56])]
    result = detection_agreement(refs, cands, 0.5, 0.1, score_threshold=0.5)
    assert result.recall == 1.0
    assert result.precision == 1.0  # the unmatched 0.56 box is within the band: borderline
    assert result.borderline == 1


def test_no_detections_at_all_is_a_recall_of_zero():
    refs = [Detections.of([[0, 0, 10, 10]], [0.9])]
    result = detection_agreement(refs, [Detections.empty()], score_threshold=0.5)
    assert result.recall == 0.0
    assert result.precision == 1.0


def test_cosine_and_errors_per_output():
    ref = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    cand = np.array([[1.0, 2.0, 3.5], [0.0, 0.0, 0.0]])
    result = output_agreement("out", ref, cand)
    assert result.max_abs_error == pytest.approx(0.5)
    assert result.cosine_min < 1.0
    assert cosine_per_frame(ref, cand)[1] == 1.0  # two all-zero frames agree


def test_non_finite_candidate_is_reported():
    ref = np.ones((2, 3))
    cand = ref.copy()
    cand[0, 0] = np.nan
    result = output_agreement("out", ref, cand)
    assert result.non_finite == 1
    assert result.to_dict()["max_abs_error"] is None  # JSON has no NaN/inf
