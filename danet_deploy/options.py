"""The options of every stage, one frozen type each: they own their defaults, document each field and check
themselves (`check()` raises an `OptionError` naming the field, in the library's words; the CLI shows the flag).

This module imports nothing heavy (no torch, onnx or ONNX Runtime), so the CLI takes its defaults from here and
`danet-deploy --help` stays fast. Stages import the constants below from here, so each default is written once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from danet_deploy.config import check_class_names
from danet_deploy.errors import OptionError
from danet_deploy.files import PathLike
from danet_deploy.option_checks import check_at_least, check_choice, check_number

if TYPE_CHECKING:
    from danet_deploy.data.images import ImageLike  # calibration images given in memory (numpy, PIL: not loaded here)


# --- export -------------------------------------------------------------------------------------------------
LAYOUTS = ("ours", "official", "mmseg")  # checkpoint layouts (checkpoints.Layout)
MIN_OPSET = 11
MIN_DYNAMO_OPSET = 18  # torch.onnx's dynamo exporter from here on; the legacy TorchScript one below
DEFAULT_OPSET = 18

# --- simplify -----------------------------------------------------------------------------------------------
TARGET_NAMES = ("trt8.6", "trt10.3", "trt10.14", "trt11", "ort")  # graph.targets.TARGETS
ATTENTION_FORMS = ("naive", "mha", "onnx-attention", "blocked")
GROUP_NORM_FORMS = ("group-normalization", "decomposed")
DEFAULT_BLOCK = 1024  # query block of the blocked PAM form

# --- quantize -----------------------------------------------------------------------------------------------
METHODS = ("entropy", "max", "percentile")  # INT8 calibration methods
DEFAULT_PERCENTILE = 99.99
INT8_TARGETS = ("tensorrt", "onnxruntime")  # aliases: trt, ort
INT8_TARGET_ALIASES = {"trt": "tensorrt", "ort": "onnxruntime"}
CPU_PROFILES = ("auto", "x86-vnni", "x86", "arm64")  # precision.int8_ort.CPU_PROFILES
DEFAULT_INT8_IMAGES = 500  # NVIDIA suggests about 500 calibration images
DEFAULT_FP16_IMAGES = 32  # magnitudes need fewer


@dataclass(frozen=True)
class ModelOverrides:
    """Model-config fields the weights cannot tell, set by the user (None: the stored config or the checkpoint
    layout's default; see README "Checkpoint layouts").

    Attributes:
        layer4_dilations: dilations of layer4's three blocks, e.g. (4, 8, 16) for the released official model.
        align_corners: the final bilinear upsampling's mode.
        class_names: one name per class (their count must match the classifier's).
        mean: normalization mean of RGB in [0, 1].
        std: normalization std of RGB in [0, 1], each > 0.
        class_names_file: the file `class_names` was read from (an input: never written over).
    """

    layer4_dilations: tuple[int, int, int] | None = None
    align_corners: bool | None = None
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    class_names_file: Path | None = None

    def check(self) -> None:
        """OptionError for values no model can use."""
        if self.layer4_dilations is not None:
            if len(self.layer4_dilations) != 3:
                raise OptionError("layer4_dilations", self.layer4_dilations, "expected three dilations")
            for d in self.layer4_dilations:
                check_at_least("layer4_dilations", d, 1)
        for name, values, strict in (("mean", self.mean, False), ("std", self.std, True)):
            if values is None:
                continue
            if len(values) != 3:
                raise OptionError(name, values, "expected three values (R, G, B)")
            for v in values:
                check_number(name, v, low=0.0 if strict else -math.inf, strict_low=strict)
        if self.class_names is not None:
            if not self.class_names:
                raise OptionError("class_names", self.class_names, "no names")
            try:
                check_class_names(self.class_names)
            except ValueError as exc:
                raise OptionError("class_names", self.class_names, str(exc)) from None

    def given(self) -> dict[str, object]:
        """The fields set, as `checkpoints.load_checkpoint` keyword arguments."""
        fields = {
            "layer4_dilations": self.layer4_dilations,
            "align_corners": self.align_corners,
            "class_names": self.class_names,
            "mean": self.mean,
            "std": self.std,
        }
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class ExportOptions:
    """How `export` turns a checkpoint into an ONNX model and checks it against PyTorch.

    Attributes:
        input_size: (H, W) of a static export and of the parity check; None: the model config's size.
        batch: batch size of a static export.
        dynamic: dynamic batch, height and width (named batch, height, width).
        opset: ONNX opset; >= 18 uses the dynamo exporter, < 18 the legacy TorchScript one.
        argmax: add an int32 `labels` output (N x H x W) next to `logits`.
        uint8_input: bake preprocessing in: input `image` is uint8 N x H x W x 3 RGB 0-255.
        rgb255_input: input `image` is float32 N x 3 x H x W RGB 0-255, normalized inside the graph: DeepStream's
            nvinfer then feeds it exactly (net-scale-factor 1, offsets 0), which its one scale for all channels
            cannot do for a per-channel std.
        atol: parity tolerance, absolute part: max |diff| <= atol + rtol * max |logit|.
        rtol: parity tolerance, relative part.
        image: the real image the parity check runs on (None: a bundled scene).
        layout: checkpoint layout (ours, official, mmseg); None: detected from the keys.
        model: model-config fields the weights cannot tell.
        force: go on when the memory plan's estimated peak exceeds the available memory.
    """

    input_size: tuple[int, int] | None = None
    batch: int = 1
    dynamic: bool = False
    opset: int = DEFAULT_OPSET
    argmax: bool = False
    uint8_input: bool = False
    rgb255_input: bool = False
    atol: float = 1e-4
    rtol: float = 1e-4
    image: Path | None = None
    layout: str | None = None
    model: ModelOverrides = ModelOverrides()
    force: bool = False

    def check(self) -> None:
        """OptionError for a value no export can use, before any work."""
        import onnx

        newest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= self.opset <= newest:
            raise OptionError("opset", self.opset, f"DANet exports at opset {MIN_OPSET} to {newest} (this onnx)")
        check_number("atol", self.atol)
        check_number("rtol", self.rtol)
        check_at_least("batch", self.batch, 1)
        if self.uint8_input and self.rgb255_input:
            raise OptionError("rgb255_input", True, "choose one input form: uint8 NHWC or float RGB 0-255 NCHW")
        if self.input_size is not None and min(self.input_size) < 1:
            raise OptionError("input_size", self.input_size, "height and width must be positive")
        check_choice("layout", self.layout, LAYOUTS)
        self.model.check()

    @property
    def exporter(self) -> str:
        """The torch.onnx exporter this opset uses: dynamo (>= 18) or legacy (TorchScript)."""
        return "dynamo" if self.opset >= MIN_DYNAMO_OPSET else "legacy"

    def graph_options(self) -> dict[str, object]:
        """What shapes the exported graph, for the provenance record."""
        return {
            "input_size": self.input_size,
            "batch": self.batch,
            "dynamic": self.dynamic,
            "opset": self.opset,
            "argmax": self.argmax,
            "uint8_input": self.uint8_input,
            "rgb255_input": self.rgb255_input,
        }


@dataclass(frozen=True)
class SimplifyOptions:
    """How `simplify` rewrites the attention graph. Without `target`, `attention` and `group_norm`, PAM and
    GroupNorm stay as exported (cleanup, CAM and channel shuffle passes only).

    Attributes:
        target: deployment target (trt8.6, trt10.3, trt10.14, trt11, ort); picks the PAM and GroupNorm forms
            unless `attention` / `group_norm` say otherwise.
        attention: PAM form: naive, mha, onnx-attention or blocked.
        block: query block of the blocked PAM form.
        heads: value heads of the mha / onnx-attention forms (None: channels / 64).
        atol: per-pass tolerance, absolute part: max |diff| <= atol + rtol * max |logit|.
        rtol: per-pass tolerance, relative part.
        group_norm: GroupNorm form of Shuffle Attention models: group-normalization or decomposed.
        fold_shuffle: fold channel shuffles into the next Conv (True), or keep one Reshape/Transpose/Reshape.
        force: go on when the memory plan's estimated peak exceeds the available memory.
    """

    target: str | None = None
    attention: str | None = None
    block: int = DEFAULT_BLOCK
    heads: int | None = None
    atol: float = 1e-4
    rtol: float = 1e-4
    group_norm: str | None = None
    fold_shuffle: bool = True
    force: bool = False

    def check(self) -> None:
        """OptionError for a value no simplify can use, before any work."""
        check_choice("target", self.target, TARGET_NAMES)
        check_choice("attention", self.attention, ATTENTION_FORMS)
        check_choice("group_norm", self.group_norm, GROUP_NORM_FORMS)
        check_number("atol", self.atol)
        check_number("rtol", self.rtol)
        check_at_least("block", self.block, 1)
        check_at_least("heads", self.heads, 1)


def _check_calibration(calib: object, count: int | None, seed: int) -> None:
    check_at_least("count", count, 1)
    if seed < 0:
        raise OptionError("seed", seed, "must be >= 0")
    if isinstance(calib, (str, bytes)) and not str(calib):
        raise OptionError("calib", calib, "empty path")


@dataclass(frozen=True)
class Fp16Options:
    """How `quantize` makes an FP16 model (FP32 inputs and outputs). Protected by default: nodes whose magnitudes
    on the calibration images exceed the FP16 range, and by rule the CAM energy and its softmax, stay FP32.

    Attributes:
        calib: images to measure magnitudes on: a folder or Cityscapes root, or any iterable of images (H x W x 3
            uint8 RGB arrays, PIL images or paths). None: only the CAM rule protects, no range report.
        plain: cast everything (no protection), for comparison.
        count: calibration images to use (None: up to 32).
        seed: seed of the calibration sample.
        split: Cityscapes split of a dataset root.
        exclude: node names or regular expressions (`re.match`) kept FP32; each must match a node.
        force: go on when the memory plan's estimated peak exceeds the available memory.
    """

    calib: PathLike | Iterable[ImageLike] | None = None
    plain: bool = False
    count: int | None = None
    seed: int = 0
    split: str = "train"
    exclude: tuple[str, ...] = ()
    force: bool = False

    def check(self) -> None:
        _check_calibration(self.calib, self.count, self.seed)
        if self.plain and self.exclude:
            raise OptionError("exclude", self.exclude, "a plain FP16 cast keeps nothing FP32; drop plain")


@dataclass(frozen=True)
class BudgetOptions:
    """An mIoU budget for INT8: if the INT8 model loses more than `max_miou_drop` points on `data`, layers are
    ranked by sensitivity and the worst kept in higher precision until the budget holds.

    Attributes:
        max_miou_drop: the largest mIoU loss allowed, in points (0-100).
        data: labeled images (Cityscapes root or images/ + masks/ folders).
        split: Cityscapes split of `data`.
        ignore_unknown_labels: mask values that are neither a class id nor the ignore index count as ignored.
        allow_unlabeled: evaluate the labeled images of a partly labeled set.
        sensitivity_images: images the layer sensitivities are measured on.
        max_steps: most budget steps (models quantized and scored).
    """

    max_miou_drop: float
    data: PathLike
    split: str = "val"
    ignore_unknown_labels: bool = False
    allow_unlabeled: bool = False
    sensitivity_images: int = 4
    max_steps: int = 8

    def check(self) -> None:
        check_number("max_miou_drop", self.max_miou_drop, high=100.0)
        check_at_least("sensitivity_images", self.sensitivity_images, 1)
        check_at_least("max_steps", self.max_steps, 1)


@dataclass(frozen=True)
class Int8Options:
    """How `quantize` (and `build-engine --int8`) makes an INT8 model, calibrated on `calib`.

    Attributes:
        calib: calibration images: a folder or Cityscapes root, or any iterable of images (H x W x 3 uint8 RGB
            arrays, PIL images or paths; written once to a scratch folder, so cached like a folder).
        target: who runs it: tensorrt (symmetric Q/DQ placed by ModelOpt) or onnxruntime (ONNX Runtime's CPU
            integer kernels); aliases trt, ort.
        method: calibration: entropy, max or percentile.
        percentile: the percentile of |x| for method percentile.
        count: calibration images to use (None: up to 500; fewer than 300 warns).
        seed: seed of the calibration sample.
        split: Cityscapes split of a dataset root.
        exclude: node names or regular expressions (`re.match`) kept in higher precision; each must match a node.
        cpu: with target onnxruntime, the CPU to quantize for: auto (this one), x86-vnni, x86 or arm64.
        recalibrate: ignore the calibration cache.
        cache_dir: calibration cache folder (None: $DANET_DEPLOY_CACHE or ~/.cache/danet-deploy).
        budget: keep sensitive layers in higher precision until the mIoU drop fits (None: plain INT8).
        unquantized: TensorRT target: the type of the layers outside Q/DQ, fp32 or fp16. Strongly typed TensorRT
            runs them in their ONNX type: fp16 there (the CAM chain and GroupNorm kept FP32, as in the FP16 model)
            keeps an INT8 engine at least as fast as the FP16 one.
        every_tensor: TensorRT target: Q/DQ on every tensor (ModelOpt's DLA placement), for the scales of an
            implicit-INT8 calibration cache (DLA, TensorRT 8.6).
        force: go on when the memory plan's estimated peak exceeds the available memory.
    """

    calib: PathLike | Iterable[ImageLike]
    target: str = "tensorrt"
    method: str = "entropy"
    percentile: float = DEFAULT_PERCENTILE
    count: int | None = None
    seed: int = 0
    split: str = "train"
    exclude: tuple[str, ...] = ()
    cpu: str | None = None
    recalibrate: bool = False
    cache_dir: PathLike | None = None
    budget: BudgetOptions | None = None
    unquantized: str = "fp32"
    every_tensor: bool = False
    force: bool = False

    @property
    def target_name(self) -> str:
        """The target's full name (tensorrt or onnxruntime)."""
        return INT8_TARGET_ALIASES.get(self.target, self.target)

    def check(self) -> None:
        _check_calibration(self.calib, self.count, self.seed)
        check_choice("target", self.target_name, INT8_TARGETS)
        check_choice("method", self.method, METHODS)
        check_number("percentile", self.percentile, low=50.0, high=100.0, strict_low=True)
        if self.cpu is not None:
            check_choice("cpu", self.cpu, CPU_PROFILES)
            if self.target_name != "onnxruntime":
                raise OptionError("cpu", self.cpu, "applies to the onnxruntime target only")
        check_choice("unquantized", self.unquantized, ("fp32", "fp16"))
        if self.unquantized == "fp16" and self.target_name != "tensorrt":
            raise OptionError("unquantized", self.unquantized, "fp16 outside Q/DQ applies to the tensorrt target")
        if self.every_tensor and self.target_name != "tensorrt":
            raise OptionError("every_tensor", True, "Q/DQ on every tensor applies to the tensorrt target")
        if self.budget is not None:
            self.budget.check()


PrecisionOptions = Fp16Options | Int8Options


@dataclass(frozen=True)
class BenchmarkOptions:
    """How `benchmark` times each backend (each in its own process).

    Attributes:
        image: the input image (None: a bundled scene), at the model's size for static models.
        warmup: untimed runs per backend first.
        iterations: timed runs per backend.
        threads: CPU threads of PyTorch and ONNX Runtime (None: theirs).
        force: go on when the memory plan's estimated peak exceeds the available memory.
    """

    image: PathLike | None = None
    warmup: int = 3
    iterations: int = 20
    threads: int | None = None
    force: bool = False

    def check(self) -> None:
        check_at_least("warmup", self.warmup, 0)
        check_at_least("iterations", self.iterations, 1)
        check_at_least("threads", self.threads, 1)


@dataclass(frozen=True)
class InspectOptions:
    """What `inspect` lints an ONNX model for.

    Attributes:
        target: the runtime whose readiness is linted: trt8.6, trt10.3, trt10.14, trt11 or ort.
        input_size: (H, W) to lint at (required for dynamic models).
    """

    target: str = "trt10.3"
    input_size: tuple[int, int] | None = None

    def check(self) -> None:
        check_choice("target", self.target, TARGET_NAMES)
        if self.input_size is not None and min(self.input_size) < 1:
            raise OptionError("input_size", self.input_size, "height and width must be positive")


__all__ = [
    "BenchmarkOptions",
    "BudgetOptions",
    "ExportOptions",
    "Fp16Options",
    "InspectOptions",
    "Int8Options",
    "ModelOverrides",
    "PrecisionOptions",
    "SimplifyOptions",
]
