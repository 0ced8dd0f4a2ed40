"""mIoU from a confusion matrix, checked against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from danet_deploy.evaluate.metrics import confusion_matrix, mean_iou, per_class_iou


def test_hand_computed_three_classes_with_ignore() -> None:
    label = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(label, pred, 3)
    # class 0: tp 1, fp 1 (label 2 -> 0), fn 1 (-> 1): IoU 1/3; class 1: tp 2, fp 1: 2/3; class 2: tp 1, fn 1: 1/2
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_allclose(per_class_iou(cm), [1 / 3, 2 / 3, 1 / 2])
    assert mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_absent_class_is_excluded_but_false_positive_class_counts_as_zero() -> None:
    label = np.array([0, 0, 0, 0])
    pred = np.array([0, 0, 0, 2])
    iou = per_class_iou(confusion_matrix(label, pred, 3))
    assert iou[0] == pytest.approx(3 / 4)
    assert math.isnan(iou[1])  # neither in label nor prediction
    assert iou[2] == 0.0  # predicted but absent: counted as 0, as MMSegmentation does
    assert mean_iou(confusion_matrix(label, pred, 3)) == pytest.approx(3 / 8)


def test_perfect_prediction_and_accumulation() -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (10, 10))
    cm = confusion_matrix(label, label, 5) + confusion_matrix(label, label, 5)
    assert mean_iou(cm) == 1.0
    assert cm.sum() == 200


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
