"""Evaluate backends on the same images: mIoU per backend and parity against the reference (first runner).

Images stream one at a time, so hundreds of images never sit in memory together. All backends run at
the same input size: the fixed size of a static-shape backend if any (the image is resized to it), else
the image's own size. Logits are resized back to the label size for scoring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from danet_deploy.artifact import Precision, precision_label
from danet_deploy.config import ModelConfig
from danet_deploy.data.datasets import Dataset, LabelRules
from danet_deploy.data.preprocess import resize_image
from danet_deploy.errors import BadInputError, OptionError
from danet_deploy.evaluate.metrics import confusion_matrix, mean_iou, per_class_iou
from danet_deploy.evaluate.noise import NOISE_FACTOR, Fp32Noise, fp32_tolerance, reference_noise
from danet_deploy.evaluate.protocols import EvalProtocol, predict, resize_logits
from danet_deploy.runners.base import Runner, activated

REPORT_SCHEMA_VERSION = 2  # 2: thresholds in force with sources, FP32 noise, confusion, per-image IoU


@dataclass(frozen=True)
class Thresholds:
    """What a backend must meet against the reference to pass.

    Attributes:
        max_abs_diff: fixed tolerance on max |logit difference|; None: not checked (reduced precision). For FP32
            it applies only where the noise floor is not measured (no PyTorch reference) or it is set explicitly.
        min_pixel_agreement: fraction of pixels whose argmax label matches the reference.
        max_miou_drop: mIoU points below the reference.
        noise_factor: FP32: the logit tolerance is this times the reference's own FP32 rounding noise, measured
            against float64 (`evaluate.noise`); None: use `max_abs_diff` as it is.
    """

    max_abs_diff: float | None = 1e-3
    min_pixel_agreement: float = 0.9999
    max_miou_drop: float = 0.05
    noise_factor: float | None = None


# Per precision: FP32 must match to its own rounding (measured per model and size); FP16 and INT8 are judged on
# labels and mIoU, which is what a user ships: their logit errors are expected and reported, not gated.
DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(max_abs_diff=1e-3, min_pixel_agreement=0.999, max_miou_drop=0.05, noise_factor=NOISE_FACTOR),
    "fp16": Thresholds(max_abs_diff=None, min_pixel_agreement=0.999, max_miou_drop=0.1),
    "int8": Thresholds(max_abs_diff=None, min_pixel_agreement=0.95, max_miou_drop=1.0),
}

# Where each default comes from, as every report shows it next to the value.
DEFAULT_SOURCES: dict[str, dict[str, str]] = {
    "fp32": {
        "max_abs_diff": "fixed default: FP32 rounding of a shallow model (used where no PyTorch reference measures "
        "the model's own noise)",
        "min_pixel_agreement": "default: within the FP32 tolerance labels flip only at near-ties of two classes",
        "max_miou_drop": "default: FP32 rounding moves no more than near-tie pixels",
        "noise_factor": "default: faithful FP32 exports measured at 1.3x to 6x the reference's noise "
        "(docs/benchmarks.md fp32-noise); 16 leaves twice that margin",
    },
    "fp16": {
        "max_abs_diff": "not checked: FP16 logit error is expected; reported as max and p99",
        "min_pixel_agreement": "default: FP16 rounding flips labels at near-ties only (at most 0.1% of pixels)",
        "max_miou_drop": "default: 0.1 mIoU points, the rounding of reported Cityscapes results",
        "noise_factor": "not used for FP16",
    },
    "int8": {
        "max_abs_diff": "not checked: INT8 logit error is expected; reported as max and p99",
        "min_pixel_agreement": "default: 95% of the reference's labels (INT8 moves class boundaries)",
        "max_miou_drop": "default: 1 mIoU point, the usual INT8 budget for segmentation (TensorRT INT8 guidance)",
        "noise_factor": "not used for INT8",
    },
}


# Valid range per field: (low, high, None allowed). Pixel agreement is a fraction; the others are >= 0.
THRESHOLD_RANGES = {
    "max_abs_diff": (0.0, math.inf, True),
    "min_pixel_agreement": (0.0, 1.0, False),
    "max_miou_drop": (0.0, 100.0, False),
    "noise_factor": (1.0, 1e6, True),
}


@dataclass(frozen=True)
class ThresholdSettings:
    """Thresholds per precision and where each value came from (a default's reason, an override, a file).

    Attributes:
        values: precision ("fp32", "fp16", "int8") -> its thresholds.
        sources: precision -> field -> where the value came from.
    """

    values: dict[str, Thresholds] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    sources: dict[str, dict[str, str]] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_SOURCES.items()})

    def overridden(self, precision: str, name: str) -> bool:
        return self.sources.get(precision, {}).get(name, "") != DEFAULT_SOURCES.get(precision, {}).get(name, "")


@dataclass
class ThresholdInForce:
    """One threshold a backend was judged by: the value and where it came from."""

    precision: str
    name: str  # a `Thresholds` field
    value: float | None  # None: not checked
    source: str


def threshold_settings(overrides: list[str], file: str | None = None) -> ThresholdSettings:
    """Defaults, then a JSON file ({"fp16": {"min_pixel_agreement": 0.998}}), then overrides like
    'fp16.min_pixel_agreement=0.998' or 'int8.max_miou_drop=0.5'. A bad entry is a one-line BadInputError
    naming where it came from (the file or the override); NaN and out-of-range values included."""
    items = (
        [("thresholds_file", f"{file}: {item}", f"thresholds file {file}", item) for item in _file_overrides(file)]
        if file
        else []
    )
    items += [("thresholds", repr(item), f"override {item.strip()}", item) for item in overrides]
    settings = ThresholdSettings()
    result, sources = settings.values, settings.sources
    fields = set(Thresholds.__dataclass_fields__)
    labels = {"thresholds": "threshold override", "thresholds_file": "thresholds file"}
    for option, subject, origin, item in items:
        try:
            precision, name, number = _parse_override(item, fields, list(result))
        except ValueError as exc:
            raise OptionError(option, subject, str(exc), labels[option]) from None
        result[precision] = Thresholds(**{**asdict(result[precision]), name: number})
        sources[precision][name] = origin
    return settings


def _parse_override(item: str, fields: set[str], precisions: list[str]) -> tuple[str, str, float | None]:
    """'fp16.min_pixel_agreement=0.998' -> (precision, field, value); ValueError saying what is wrong."""
    key, _, value = item.partition("=")
    precision, _, name = key.strip().partition(".")
    if precision not in precisions or name not in fields or not value:
        raise ValueError(
            f"expected PRECISION.FIELD=VALUE with PRECISION in {', '.join(precisions)} "
            f"and FIELD in {', '.join(sorted(fields))}"
        )
    try:
        number = None if value.strip().lower() == "none" else float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    low, high, nullable = THRESHOLD_RANGES[name]
    if number is None and not nullable:
        raise ValueError(f"{name} must be a number")
    if number is not None and not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value.strip()}")
    return precision, name, number


def thresholds_with(overrides: list[str], file: str | None = None) -> dict[str, Thresholds]:
    """The values of `threshold_settings` (without their sources)."""
    return threshold_settings(overrides, file).values


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
    confusion: list[list[int]] = field(default_factory=list)  # rows: ground truth, columns: prediction (labeled)
    # Every image: {"image", "pixel_agreement" (vs the reference), "miou" (percent vs ground truth, None unlabeled)}.
    per_image: list[dict[str, Any]] = field(default_factory=list)

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
    # The thresholds each precision present was judged by, with where each value came from.
    thresholds_in_force: list[ThresholdInForce] = field(default_factory=list)
    fp32_noise: Fp32Noise | None = None  # the reference's own FP32 rounding noise, where measured
    located: list[Any] = field(default_factory=list)  # evaluate.locate.LocateResult per located backend
    schema_version: int = REPORT_SCHEMA_VERSION

    def limits(self, precision: str) -> list[ThresholdInForce]:
        """The thresholds in force for one precision."""
        return [t for t in self.thresholds_in_force if t.precision == precision]

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
        self.per_image: list[tuple[str, float, float | None]] = []  # (image, pixel agreement, mIoU %)

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
        self.per_image.append((name, agree / labels.size, None))
        return labels

    def p99(self) -> float:
        cumulative = np.cumsum(self.diff_histogram)
        index = int(np.searchsorted(cumulative, 0.99 * cumulative[-1]))
        edge = float(_DIFF_BINS[min(index + 1, len(_DIFF_BINS) - 1)])  # upper edge of the bin
        return min(edge, self.max_abs)  # the bin's edge can lie above every value in it: p99 is never above max

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
    thresholds: dict[str, Thresholds] | ThresholdSettings | None = None,
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
    of its precision; an FP32 backend's logit tolerance is derived from the reference's own FP32 noise when the
    reference is a PyTorch FP32 model (`evaluate.noise`: one float64 run on the first image). Images stream one at
    a time; per image only each backend's pixel agreement and IoU are kept.

    The data set is checked first unless the caller did (`Dataset.checked` with the model's label rules):
    mask values that are neither a class id nor the ignore index, and a partly labeled set, are errors unless
    `ignore_unknown_labels` / `allow_unlabeled` opt in; the report says what the opt-ins changed.
    """
    if thresholds is None:
        settings = ThresholdSettings()
    elif isinstance(thresholds, ThresholdSettings):
        settings = thresholds
    else:  # plain values: what was passed is the source
        settings = ThresholdSettings(
            dict(thresholds), {k: {f: "given by the caller" for f in DEFAULT_SOURCES[k]} for k in thresholds}
        )
    if len(runners) < 1:
        raise BadInputError("verify needs at least one backend")
    if len(dataset) == 0:
        raise BadInputError(f"{dataset.root}: no images to evaluate")
    size = common_input_size(r.input_spec.static_size for r in runners)
    if protocol.crop is not None and size is not None and size != (protocol.crop, protocol.crop):
        crop = f"{protocol.crop}x{protocol.crop}"
        raise BadInputError(
            f"a sliding window of {crop} needs backends of that size; a backend is fixed at "
            f"{size[0]}x{size[1]} (export it at {crop})"
        )
    if protocol.crop is None and size is not None and protocol.scales != (1.0,):
        raise BadInputError(
            f"multi-scale evaluation runs each image at several sizes; a backend is fixed at {size[0]}x{size[1]} "
            "(export it with dynamic height and width)"
        )
    resize_to = size if protocol.crop is None else None
    with activated(runners):
        config = config or runners[0].config  # a checkpoint runner knows its config once activated
        rules = LabelRules(config.num_classes, config.ignore_index, ignore_unknown_labels)
        if dataset.label_check is None or dataset.rules != rules:
            dataset = dataset.checked(rules, allow_unlabeled)
        noise = _fp32_noise(dataset, runners, settings, resize_to, protocol)
        acc = _evaluate(dataset, runners, config, protocol, resize_to, on_image)
    n = config.num_classes
    labeled = dataset.labeled
    in_force = _in_force(settings, noise, {Precision(r.precision).value for r in runners[1:]})
    limit_of = {(t.precision, t.name): t.value for t in in_force}

    results: list[BackendResult] = []
    ref_miou = mean_iou(acc[0].confusion) * 100 if labeled else None
    ref_iou = per_class_iou(acc[0].confusion) * 100
    for i, (runner, a) in enumerate(zip(runners, acc)):
        miou = mean_iou(a.confusion) * 100 if labeled else None
        iou = per_class_iou(a.confusion) * 100
        agreement = a.agree / a.pixels
        precision = Precision(runner.precision).value
        failures = []
        if a.nonfinite:
            failures.append(f"{a.nonfinite} NaN/Inf logits")
        if i > 0:
            max_abs = limit_of.get((precision, "max_abs_diff"))
            min_agreement = limit_of.get((precision, "min_pixel_agreement"), 0.0) or 0.0
            max_drop = limit_of.get((precision, "max_miou_drop"))
            if max_abs is not None and not a.max_abs <= max_abs:
                failures.append(f"max abs diff {a.max_abs:.3g} > {max_abs:.3g}")
            if agreement < min_agreement:
                failures.append(f"pixel agreement {agreement:.4%} < {min_agreement:.4%}")
            if max_drop is not None and miou is not None and ref_miou is not None and ref_miou - miou > max_drop:
                failures.append(f"mIoU drop {ref_miou - miou:.2f} > {max_drop:g} points")
        per_class = {c: _round(v) for c, v in zip(config.class_names, iou)} if labeled else {}
        deltas = {c: _round(v - r) for c, v, r in zip(config.class_names, iou, ref_iou)} if labeled else {}
        per_image = [
            {"image": name, "pixel_agreement": value, "miou": _round(image_miou)}
            for name, value, image_miou in a.per_image
        ]
        worst_first = sorted(per_image, key=lambda item: float(item["pixel_agreement"] or 0.0))[:worst] if i > 0 else []
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
                worst_images=[{"image": w["image"], "pixel_agreement": w["pixel_agreement"]} for w in worst_first],
                quantized_for=runner.quantized_for,
                evaluated=runner.evaluated,
                confusion=a.confusion.tolist() if labeled else [],
                per_image=per_image,
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
        thresholds={k: asdict(v) for k, v in settings.values.items()},
        model={"arch": config.arch, "variant": config.variant, "num_classes": n, "align_corners": config.align_corners},
        label_check=asdict(dataset.label_check) if dataset.label_check else None,
        notes=dataset.label_check.notes() if dataset.label_check else [],
        thresholds_in_force=in_force,
        fp32_noise=noise,
    )


def _fp32_noise(
    dataset: Dataset,
    runners: Sequence[Runner],
    settings: ThresholdSettings,
    resize_to: tuple[int, int] | None,
    protocol: EvalProtocol,
) -> Fp32Noise | None:
    """The reference's FP32 noise on the first image, where an FP32 backend's tolerance is derived from it: the
    reference is a PyTorch FP32 model and the FP32 tolerance is neither fixed by the user nor the factor off."""
    reference = runners[0]
    module = getattr(reference, "module", None)
    wanted = any(Precision(r.precision) is Precision.FP32 for r in runners[1:])
    fp32 = settings.values.get("fp32")
    if (
        not wanted
        or fp32 is None
        or fp32.noise_factor is None
        or settings.overridden("fp32", "max_abs_diff")
        or reference.kind != "pytorch"
        or Precision(reference.precision) is not Precision.FP32
        or not isinstance(module, torch.nn.Module)
    ):
        return None
    sample = dataset.load(0)
    image = resize_image(sample.image, resize_to) if resize_to else sample.image
    if protocol.crop is not None:  # a window as the sliding protocol runs it
        image = np.ascontiguousarray(image[: protocol.crop, : protocol.crop])
    return reference_noise(module, reference.prepare(image), sample.name)


def _in_force(settings: ThresholdSettings, noise: Fp32Noise | None, precisions: set[str]) -> list[ThresholdInForce]:
    """The thresholds each precision is judged by, with their sources (the FP32 tolerance derived from `noise`)."""
    rows = []
    for precision in sorted(precisions, key=list(DEFAULT_THRESHOLDS).index):
        values = settings.values.get(precision, settings.values["fp32"])
        sources = settings.sources.get(precision, settings.sources["fp32"])
        for name in ("max_abs_diff", "min_pixel_agreement", "max_miou_drop"):
            value: float | None = getattr(values, name)
            source = sources[name]
            if precision == "fp32" and name == "max_abs_diff" and noise is not None and values.noise_factor:
                value = fp32_tolerance(noise, values.noise_factor)
                source = (
                    f"max({values.noise_factor:g} x the reference's own FP32 noise, export's default tolerance "
                    f"1e-4 + 1e-4 x max |logit| {noise.max_logit:.3g}); noise = {noise.describe()}; factor: "
                    f"{sources['noise_factor']}"
                )
            rows.append(ThresholdInForce(precision, name, value, source))
    return rows


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
            image_miou = None
            if sample.label is not None:
                scored = resize_logits(out, sample.label.shape, config.align_corners).argmax(1)[0]
                confusion = confusion_matrix(sample.label, scored, n, config.ignore_index)
                a.confusion += confusion
                image_miou = mean_iou(confusion) * 100
            a.per_image[-1] = (*a.per_image[-1][:2], image_miou)
            del out
        if on_image:
            on_image(index)
    return acc


def _round(value: float | None) -> float | None:
    return round(float(value), 4) if value is not None and np.isfinite(value) else None
