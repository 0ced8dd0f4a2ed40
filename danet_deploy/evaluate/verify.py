"""Evaluate backends on the same images: mIoU per backend and parity against the reference (first runner).

Images stream one at a time, so hundreds of images never sit in memory together. All backends run at
the same input size: the fixed size of a static-shape backend if any (the image is resized to it), else
the image's own size. Logits are resized back to the label size for scoring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from danet_deploy.artifact import Precision, precision_label
from danet_deploy.config import ModelConfig
from danet_deploy.data.datasets import Dataset, LabelRules
from danet_deploy.data.preprocess import resize_image
from danet_deploy.errors import BadInputError
from danet_deploy.evaluate.metrics import confusion_matrix, mean_iou, per_class_iou
from danet_deploy.evaluate.protocols import EvalProtocol, predict, resize_logits
from danet_deploy.runners.base import Runner, activated

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


# Valid range per field: (low, high, None allowed). Pixel agreement is a fraction; the others are >= 0.
THRESHOLD_RANGES = {
    "max_abs_diff": (0.0, math.inf, True),
    "min_pixel_agreement": (0.0, 1.0, False),
    "max_miou_drop": (0.0, 100.0, False),
}


def thresholds_with(overrides: list[str], file: str | None = None) -> dict[str, Thresholds]:
    """Defaults, then a JSON file ({"fp16": {"min_pixel_agreement": 0.998}}), then overrides like
    'fp16.min_pixel_agreement=0.998' or 'int8.max_miou_drop=0.5'. A bad entry is a one-line BadInputError
    naming where it came from (the file or the --threshold option); NaN and out-of-range values included."""
    items = [(f"{file}: {item}", item) for item in _file_overrides(file)] if file else []
    items += [(f"--threshold {item!r}", item) for item in overrides]
    result = dict(DEFAULT_THRESHOLDS)
    fields = set(Thresholds.__dataclass_fields__)
    for where, item in items:
        key, _, value = item.partition("=")
        precision, _, name = key.strip().partition(".")
        if precision not in result or name not in fields or not value:
            raise BadInputError(
                f"{where}: expected PRECISION.FIELD=VALUE with PRECISION in {', '.join(result)} "
                f"and FIELD in {', '.join(sorted(fields))}"
            )
        try:
            number = None if value.strip().lower() == "none" else float(value)
        except ValueError:
            raise BadInputError(f"{where}: {value!r} is not a number") from None
        low, high, nullable = THRESHOLD_RANGES[name]
        if number is None and not nullable:
            raise BadInputError(f"{where}: {name} must be a number")
        if number is not None and not (math.isfinite(number) and low <= number <= high):
            raise BadInputError(f"{where}: {name} must be between {low:g} and {high:g}, got {value.strip()}")
        result[precision] = replace(result[precision], **{name: number})
    return result


def _file_overrides(file: str) -> list[str]:
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(file).read_text())
    except OSError as exc:
        raise BadInputError(f"{file}: cannot read thresholds file ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{file}: not a valid JSON thresholds file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise BadInputError(f'{file}: expected {{"fp16": {{"min_pixel_agreement": 0.998}}, ...}}')
    return [f"{precision}.{name}={value}" for precision, values in data.items() for name, value in values.items()]


@dataclass
class BackendResult:
    name: str
    precision: str
    miou: float | None  # percent; None without labels
    per_class_iou: dict[str, float | None]
    pixel_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    p99_abs_diff: float  # upper edge of a log-spaced histogram bin (streamed over all logits)
    cosine: float  # of all logits against the reference
    nonfinite_values: int
    passed: bool
    failures: list[str] = field(default_factory=list)
    miou_delta: float | None = None  # points vs the reference
    per_class_iou_delta: dict[str, float | None] = field(default_factory=dict)
    worst_images: list[dict[str, Any]] = field(default_factory=list)  # lowest pixel agreement first
    quantized_for: str | None = None  # INT8: "tensorrt" or "onnxruntime" (who the Q/DQ placement is for)
    evaluated: str = "as written"  # how the backend evaluated the model (e.g. attention in query blocks, exact)

    @property
    def precision_label(self) -> str:
        return precision_label(self.precision, self.quantized_for)


@dataclass
class VerifyReport:
    backends: list[BackendResult]
    passed: bool
    reference: str
    images: int
    labeled: bool
    input_size: list[int] | None
    protocol: str
    thresholds: dict[str, dict[str, float | None]]
    model: dict[str, Any]
    # What the label check found (images left out, unknown mask values counted as ignored) and its notes,
    # which every report shows next to the mIoU they qualify.
    label_check: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
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


# Log-spaced bins for a streaming p99 of |logit difference| (1e-9 .. 1e4, 10 bins per decade).
_DIFF_BINS = np.concatenate([[0.0], np.logspace(-9, 4, 131), [np.inf]])


class _Accumulator:
    def __init__(self, num_classes: int):
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.agree = 0
        self.pixels = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.values = 0
        self.nonfinite = 0
        self.diff_histogram = np.zeros(len(_DIFF_BINS) - 1, np.int64)
        self.dot = self.norm_a = self.norm_b = 0.0
        self.per_image: list[tuple[str, float]] = []  # (image, pixel agreement)

    def add(self, out: np.ndarray, reference: np.ndarray, ref_labels: np.ndarray, name: str) -> np.ndarray:
        finite = np.isfinite(out)
        self.nonfinite += int(out.size - np.count_nonzero(finite))
        if not finite.all():
            self.max_abs = math.inf
        # One class plane at a time in float64: whole 1024x2048 logits in float64 would take 300 MiB per copy.
        for c in range(out.shape[1]):
            clean = np.where(finite[:, c], out[:, c], 0).astype(np.float64)
            ref = reference[:, c].astype(np.float64)
            diff = np.abs(clean - ref)
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.sum_abs += float(diff.sum())
            self.diff_histogram += np.histogram(diff, _DIFF_BINS)[0]
            self.dot += float((clean * ref).sum())
            self.norm_a += float((clean * clean).sum())
            self.norm_b += float((ref * ref).sum())
        del finite
        self.values += out.size
        labels = out.argmax(1)
        agree = int((labels == ref_labels).sum())
        self.agree += agree
        self.pixels += labels.size
        self.per_image.append((name, agree / labels.size))
        return labels

    def p99(self) -> float:
        cumulative = np.cumsum(self.diff_histogram)
        index = int(np.searchsorted(cumulative, 0.99 * cumulative[-1]))
        return float(_DIFF_BINS[min(index + 1, len(_DIFF_BINS) - 1)])  # upper edge of the bin

    def cosine(self) -> float:
        denominator = math.sqrt(self.norm_a * self.norm_b)
        return self.dot / denominator if denominator else 1.0


def common_input_size(fixed_sizes: Iterable[tuple[int, int] | None]) -> tuple[int, int] | None:
    """The one fixed (H, W) among backends (None entries: any size works); differing sizes are an error."""
    sizes = {size for size in fixed_sizes if size is not None}
    if len(sizes) > 1:
        raise BadInputError(f"backends have different fixed input sizes {sorted(sizes)}; export them at one size")
    return next(iter(sizes), None)


def verify(
    dataset: Dataset,
    runners: Sequence[Runner],
    config: ModelConfig | None = None,
    thresholds: dict[str, Thresholds] | None = None,
    on_image: Callable[[int], None] | None = None,
    protocol: EvalProtocol = EvalProtocol(),
    worst: int = 3,
    *,
    ignore_unknown_labels: bool = False,
    allow_unlabeled: bool = False,
) -> VerifyReport:
    """Run every runner on every image under one protocol; the first runner is the reference for parity.

    Runners not active yet are activated for the run and deactivated after it. `config` (classes,
    align_corners, ignore index) defaults to the reference runner's. Each backend is judged by the thresholds
    of its precision. Images stream one at a time; per image only each backend's pixel agreement is kept
    (for the worst images).

    The data set is checked first unless the caller did (`Dataset.checked` with the model's label rules):
    mask values that are neither a class id nor the ignore index, and a partly labeled set, are errors unless
    `ignore_unknown_labels` / `allow_unlabeled` opt in; the report says what the opt-ins changed.
    """
    thresholds = thresholds or DEFAULT_THRESHOLDS
    if len(runners) < 1:
        raise BadInputError("verify needs at least one backend")
    if len(dataset) == 0:
        raise BadInputError(f"{dataset.root}: no images to evaluate")
    size = common_input_size(r.input_spec.static_size for r in runners)
    if protocol.crop is not None and size is not None and size != (protocol.crop, protocol.crop):
        crop = f"{protocol.crop}x{protocol.crop}"
        raise BadInputError(
            f"sliding window {crop} needs backends of that size; a backend is fixed at "
            f"{size[0]}x{size[1]} (export it with --input-size {crop})"
        )
    if protocol.crop is None and size is not None and protocol.scales != (1.0,):
        raise BadInputError(
            f"--scales runs each image at several sizes; a backend is fixed at {size[0]}x{size[1]} "
            "(export it with --dynamic)"
        )
    resize_to = size if protocol.crop is None else None
    with activated(runners):
        config = config or runners[0].config  # a checkpoint runner knows its config once activated
        rules = LabelRules(config.num_classes, config.ignore_index, ignore_unknown_labels)
        if dataset.label_check is None or dataset.rules != rules:
            dataset = dataset.checked(rules, allow_unlabeled)
        acc = _evaluate(dataset, runners, config, protocol, resize_to, on_image)
    n = config.num_classes
    labeled = dataset.labeled

    results: list[BackendResult] = []
    ref_miou = mean_iou(acc[0].confusion) * 100 if labeled else None
    ref_iou = per_class_iou(acc[0].confusion) * 100
    for i, (runner, a) in enumerate(zip(runners, acc)):
        miou = mean_iou(a.confusion) * 100 if labeled else None
        iou = per_class_iou(a.confusion) * 100
        agreement = a.agree / a.pixels
        precision = Precision(runner.precision).value
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
        per_class = {c: _round(v) for c, v in zip(config.class_names, iou)} if labeled else {}
        deltas = {c: _round(v - r) for c, v, r in zip(config.class_names, iou, ref_iou)} if labeled else {}
        worst_first = sorted(a.per_image, key=lambda item: item[1])[:worst] if i > 0 else []
        results.append(
            BackendResult(
                name=runner.name,
                precision=precision,
                miou=_round(miou),
                per_class_iou=per_class,
                pixel_agreement=agreement,
                max_abs_diff=a.max_abs,
                mean_abs_diff=a.sum_abs / max(a.values, 1),
                p99_abs_diff=a.p99(),
                cosine=a.cosine(),
                nonfinite_values=a.nonfinite,
                passed=not failures,
                failures=failures,
                miou_delta=_round(miou - ref_miou) if miou is not None and ref_miou is not None else None,
                per_class_iou_delta=deltas,
                worst_images=[{"image": name, "pixel_agreement": value} for name, value in worst_first],
                quantized_for=runner.quantized_for,
                evaluated=runner.evaluated,
            )
        )
    return VerifyReport(
        backends=results,
        passed=all(r.passed for r in results),
        reference=runners[0].name,
        images=len(dataset),
        labeled=labeled,
        input_size=list(size) if size else None,
        protocol=protocol.name,
        thresholds={k: asdict(v) for k, v in thresholds.items()},
        model={"arch": config.arch, "variant": config.variant, "num_classes": n, "align_corners": config.align_corners},
        label_check=asdict(dataset.label_check) if dataset.label_check else None,
        notes=dataset.label_check.notes() if dataset.label_check else [],
    )


def _evaluate(
    dataset: Dataset,
    runners: Sequence[Runner],
    config: ModelConfig,
    protocol: EvalProtocol,
    resize_to: tuple[int, int] | None,
    on_image: Callable[[int], None] | None,
) -> list[_Accumulator]:
    """Stream the dataset through the (active) runners; one accumulator per runner."""
    n = config.num_classes
    acc = [_Accumulator(n) for _ in runners]
    for index, sample in enumerate(dataset):
        image = resize_image(sample.image, resize_to) if resize_to else sample.image
        reference = predict(runners[0].infer, image, protocol, config.align_corners)
        if reference.shape[1] != n:
            raise BadInputError(f"{runners[0].name}: {reference.shape[1]} output classes, model config says {n}")
        ref_labels = reference.argmax(1)
        for i, (runner, a) in enumerate(zip(runners, acc)):
            # One backend's output at a time beside the reference (150 MiB each at 1024x2048).
            out = reference if i == 0 else predict(runner.infer, image, protocol, config.align_corners)
            a.add(out, reference, ref_labels, sample.name)
            if sample.label is not None:
                scored = resize_logits(out, sample.label.shape, config.align_corners).argmax(1)[0]
                a.confusion += confusion_matrix(sample.label, scored, n, config.ignore_index)
            del out
        if on_image:
            on_image(index)
    return acc


def _round(value: float | None) -> float | None:
    return round(float(value), 4) if value is not None and np.isfinite(value) else None
