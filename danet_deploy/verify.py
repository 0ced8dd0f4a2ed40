"""Evaluate backends on the same images: mIoU per backend and parity against the reference (first runner).

Images stream one at a time, so hundreds of images never sit in memory together. All backends run at
the same input size: the fixed size of a static-shape backend if any (the image is resized to it), else
the image's own size. Logits are resized back to the label size for scoring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig
from .data.datasets import Dataset
from .data.preprocess import resize_image
from .errors import BadInputError
from .metrics import confusion_matrix, mean_iou, per_class_iou
from .runners import Runner

REPORT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Thresholds:
    """What a backend must meet against the reference to pass."""

    max_abs_diff: float | None = 1e-3  # on logits; None: not checked (reduced precision)
    min_pixel_agreement: float = 0.9999  # fraction of pixels whose argmax label matches the reference
    max_miou_drop: float = 0.05  # mIoU points below the reference


# Per precision: FP32 must match to rounding; FP16 and INT8 are judged on labels and mIoU, which is what
# a user ships, because their logit errors are expected and a logit tolerance would fail them for nothing.
DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(max_abs_diff=1e-3, min_pixel_agreement=0.9999, max_miou_drop=0.05),
    "fp16": Thresholds(max_abs_diff=None, min_pixel_agreement=0.999, max_miou_drop=0.1),
    "int8": Thresholds(max_abs_diff=None, min_pixel_agreement=0.95, max_miou_drop=1.0),
}


def thresholds_with(overrides: list[str]) -> dict[str, Thresholds]:
    """Defaults with overrides like 'fp16.min_pixel_agreement=0.998' or 'int8.max_miou_drop=0.5'."""
    result = dict(DEFAULT_THRESHOLDS)
    fields = set(Thresholds.__dataclass_fields__)
    for item in overrides:
        key, _, value = item.partition("=")
        precision, _, name = key.strip().partition(".")
        if precision not in result or name not in fields or not value:
            raise BadInputError(
                f"--threshold {item!r}: expected PRECISION.FIELD=VALUE with PRECISION in {', '.join(result)} "
                f"and FIELD in {', '.join(sorted(fields))}"
            )
        try:
            number = None if value.strip().lower() == "none" else float(value)
        except ValueError:
            raise BadInputError(f"--threshold {item!r}: {value!r} is not a number") from None
        result[precision] = replace(result[precision], **{name: number})
    return result


@dataclass
class BackendResult:
    name: str
    precision: str
    miou: float | None  # percent; None without labels
    per_class_iou: dict[str, float | None]
    pixel_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    nonfinite_values: int
    passed: bool
    failures: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    backends: list[BackendResult]
    passed: bool
    reference: str
    images: int
    labeled: bool
    input_size: list[int] | None
    thresholds: dict[str, dict[str, float | None]]
    model: dict[str, Any]
    schema_version: int = REPORT_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class _Accumulator:
    def __init__(self, num_classes: int):
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.agree = 0
        self.pixels = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.values = 0
        self.nonfinite = 0


def common_input_size(runners: Sequence[Runner]) -> tuple[int, int] | None:
    sizes = {r.input_size for r in runners if r.input_size is not None}
    if len(sizes) > 1:
        raise BadInputError(f"backends have different fixed input sizes {sorted(sizes)}; export them at one size")
    return next(iter(sizes), None)


def _to_label_size(logits: np.ndarray, size: tuple[int, int], align_corners: bool) -> np.ndarray:
    if logits.shape[-2:] == size:
        return logits
    resized = F.interpolate(torch.from_numpy(logits), size=size, mode="bilinear", align_corners=align_corners)
    return resized.numpy()


def verify(
    dataset: Dataset,
    runners: Sequence[Runner],
    config: ModelConfig,
    thresholds: dict[str, Thresholds] | None = None,
    on_image: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Run every runner on every image; the first runner is the reference for parity.

    Each backend is judged by the thresholds of its precision (`runner.precision`, default fp32).
    """
    thresholds = thresholds or DEFAULT_THRESHOLDS
    if len(runners) < 1:
        raise BadInputError("verify needs at least one backend")
    if len(dataset) == 0:
        raise BadInputError(f"{dataset.root}: no images to evaluate")
    size = common_input_size(runners)
    n = config.num_classes
    acc = [_Accumulator(n) for _ in runners]
    labeled = dataset.labeled
    for index, sample in enumerate(dataset):
        image = resize_image(sample.image, size) if size else sample.image
        outputs = [r.infer(image) for r in runners]
        reference = outputs[0]
        if reference.shape[1] != n:
            raise BadInputError(f"{runners[0].name}: {reference.shape[1]} output classes, model config says {n}")
        ref_labels = reference.argmax(1)
        for a, out in zip(acc, outputs):
            finite = np.isfinite(out)
            a.nonfinite += int(out.size - finite.sum())
            diff = np.abs(np.where(finite, out, 0).astype(np.float64) - reference)
            a.max_abs = max(a.max_abs, float(diff.max()) if finite.all() else math.inf)
            a.sum_abs += float(diff.sum())
            a.values += diff.size
            labels = out.argmax(1)
            a.agree += int((labels == ref_labels).sum())
            a.pixels += labels.size
            if sample.label is not None:
                scored = _to_label_size(out, sample.label.shape, config.align_corners).argmax(1)[0]
                a.confusion += confusion_matrix(sample.label, scored, n, config.ignore_index)
        if on_image:
            on_image(index)

    results: list[BackendResult] = []
    ref_miou = mean_iou(acc[0].confusion) * 100 if labeled else None
    for i, (runner, a) in enumerate(zip(runners, acc)):
        miou = mean_iou(a.confusion) * 100 if labeled else None
        iou = per_class_iou(a.confusion) * 100
        agreement = a.agree / a.pixels
        precision = getattr(runner, "precision", "fp32")
        limits = thresholds.get(precision, thresholds["fp32"])
        failures = []
        if a.nonfinite:
            failures.append(f"{a.nonfinite} NaN/Inf logits")
        if i > 0:
            if limits.max_abs_diff is not None and not a.max_abs <= limits.max_abs_diff:
                failures.append(f"max abs diff {a.max_abs:.3g} > {limits.max_abs_diff:g}")
            if agreement < limits.min_pixel_agreement:
                failures.append(f"pixel agreement {agreement:.4%} < {limits.min_pixel_agreement:.4%}")
            if miou is not None and ref_miou is not None and ref_miou - miou > limits.max_miou_drop:
                failures.append(f"mIoU drop {ref_miou - miou:.2f} > {limits.max_miou_drop:g} points")
        results.append(
            BackendResult(
                name=runner.name,
                precision=precision,
                miou=round(miou, 4) if miou is not None else None,
                per_class_iou={
                    c: (round(float(v), 4) if np.isfinite(v) else None) for c, v in zip(config.class_names, iou)
                }
                if labeled
                else {},
                pixel_agreement=agreement,
                max_abs_diff=a.max_abs,
                mean_abs_diff=a.sum_abs / max(a.values, 1),
                nonfinite_values=a.nonfinite,
                passed=not failures,
                failures=failures,
            )
        )
    return VerifyReport(
        backends=results,
        passed=all(r.passed for r in results),
        reference=runners[0].name,
        images=len(dataset),
        labeled=labeled,
        input_size=list(size) if size else None,
        thresholds={k: asdict(v) for k, v in thresholds.items()},
        model={"arch": config.arch, "num_classes": n, "align_corners": config.align_corners},
    )
