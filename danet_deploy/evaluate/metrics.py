"""Segmentation metrics from a confusion matrix (rows: ground truth, columns: prediction)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(label: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """num_classes x num_classes counts; pixels labeled `ignore_index` (or out of range) are skipped."""
    if label.shape != pred.shape:
        raise ValueError(f"label shape {label.shape} != prediction shape {pred.shape}")
    label = label.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel()
    keep = (label != ignore_index) & (label >= 0) & (label < num_classes)
    index = label[keep] * num_classes + pred[keep]
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for classes absent from both ground truth and prediction."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean over classes that occur in the ground truth or the prediction (NaN-free classes)."""
    iou = per_class_iou(confusion)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
