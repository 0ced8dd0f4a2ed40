"""The Python segmenter: a model file in, label maps, overlays and class fractions out.

```python
from danet_deploy.predict import Segmenter

segmenter = Segmenter.load("danet.onnx")  # a checkpoint (.pth), an FP32/FP16/INT8 ONNX or a TensorRT engine
result = segmenter.predict("street.png")  # a path, a PIL image or an H x W x 3 uint8 RGB array
print(result.present)  # the classes in the image, most pixels first
```

Labels are computed as MMSegmentation computes them: the logits resized bilinearly to the image's size (with the
model's align_corners), then argmax. Static models run at their size (the image resized to it, the logits back);
dynamic models and checkpoints run at the image's own size, within the memory plan; `mode="slide"` runs
windows of the model's size over the image (the sliding-window code of verify's protocol).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from danet_deploy.config import ModelConfig
from danet_deploy.data.images import ImageLike, as_rgb
from danet_deploy.data.preprocess import resize_image
from danet_deploy.errors import BadInputError
from danet_deploy.evaluate.protocols import resize_logits, sliding_window
from danet_deploy.predict.overlay import DEFAULT_ALPHA, label_image, overlay_image
from danet_deploy.runners.base import Runner

MODES = ("whole", "slide")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


@dataclass(frozen=True)
class SegmenterOptions:
    """How the segmenter runs the model.

    Attributes:
        mode: "whole" (the image at once: at the model's static size, else at its own) or "slide" (windows of
            `crop` x `crop` over the image, overlapping logits averaged).
        crop: side of a square sliding window for a dynamic model or checkpoint; None: the smaller side of the
            model config's input size. A static model's windows are its own size.
        stride: step between windows; None: two thirds of the window.
        alpha: weight of the class colour in the overlay, 0 (image only) to 1 (colours only).
        threads: CPU threads of PyTorch / ONNX Runtime; None: every core.
        layout: a checkpoint's layout ("ours", "official", "mmseg"); None: detected.
        force: run image sizes whose estimated memory exceeds what is available.
    """

    mode: str = "whole"
    crop: int | None = None
    stride: int | None = None
    alpha: float = DEFAULT_ALPHA
    threads: int | None = None
    layout: str | None = None
    force: bool = False

    def check(self) -> None:
        """One-line BadInputError for a value no run can use."""
        if self.mode not in MODES:
            raise BadInputError(f"mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.mode != "slide" and (self.crop is not None or self.stride is not None):
            raise BadInputError("a window size and stride apply to the sliding-window mode only")
        if self.crop is not None and self.crop < 8:
            raise BadInputError(f"window size {self.crop}: must be at least 8 pixels")
        if self.stride is not None and (self.stride < 1 or (self.crop is not None and self.stride > self.crop)):
            raise BadInputError(f"window stride {self.stride}: must be between 1 and the window size")
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise BadInputError(f"overlay alpha {self.alpha}: must be between 0 and 1")
        if self.threads is not None and self.threads < 1:
            raise BadInputError(f"threads {self.threads}: must be at least 1")


@dataclass(frozen=True, eq=False)
class Prediction:
    """One image's result.

    Attributes:
        image: the input as H x W x 3 uint8 RGB, at its own size.
        labels: H x W uint8 class ids at the image's size.
        config: the model config (class names, palette).
        seconds: time the prediction took (preprocessing, model, resize, argmax).
        alpha: weight of the class colour in `overlay`.
        logits: 1 x classes x H x W float32 at the image's size, when asked for.
    """

    image: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    config: ModelConfig = field(repr=False)
    seconds: float
    alpha: float = DEFAULT_ALPHA
    logits: np.ndarray | None = field(default=None, repr=False)

    @cached_property
    def overlay(self) -> np.ndarray:
        """H x W x 3 uint8: the image blended with the class colours, with a legend of the classes present."""
        return overlay_image(self.image, self.labels, self.config, self.alpha)

    @cached_property
    def counts(self) -> np.ndarray:
        """Pixels per class."""
        return np.bincount(self.labels.reshape(-1), minlength=self.config.num_classes)[: self.config.num_classes]

    @property
    def fractions(self) -> dict[str, float]:
        """Fraction of the image's pixels per class name (every class; they sum to 1)."""
        total = max(int(self.labels.size), 1)
        return {name: int(n) / total for name, n in zip(self.config.class_names, self.counts)}

    @property
    def present(self) -> list[str]:
        """The classes predicted anywhere in the image, most pixels first."""
        order = np.argsort(-self.counts, kind="stable")
        return [self.config.class_names[i] for i in order if self.counts[i] > 0]

    def label_image(self) -> Image.Image:
        """The label map as an 8-bit palette image with the model's palette."""
        return label_image(self.labels, self.config)


def load_runner(model: str | os.PathLike[str], options: SegmenterOptions) -> Runner:
    """The runner of a model file, by its suffix: a checkpoint (PyTorch), an ONNX (ONNX Runtime) or an engine
    (TensorRT: exit 3 where TensorRT or a GPU is missing)."""
    from danet_deploy.engine.sidecar import ENGINE_SUFFIXES

    path = Path(model)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise BadInputError(f"{path}: no such model file")
    if suffix == ".onnx":
        from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, threads=options.threads)
    if suffix in ENGINE_SUFFIXES:
        from danet_deploy.engine.system import running_system
        from danet_deploy.runners.tensorrt import TensorRTRunner

        runner = TensorRTRunner(path)  # a missing or bad sidecar: exit 2, before TensorRT is looked for
        running_system()  # no TensorRT or GPU: exit 3
        return runner
    if suffix in CHECKPOINT_SUFFIXES:
        from danet_deploy.runners.pytorch import PyTorchRunner

        return PyTorchRunner.from_checkpoint(path, options.layout, threads=options.threads)
    known = ", ".join((".onnx", *ENGINE_SUFFIXES, *CHECKPOINT_SUFFIXES))
    raise BadInputError(f"{path}: not a model file this tool runs (suffix {suffix or '(none)'}; expected {known})")


class Segmenter:
    """A model ready to segment images: `Segmenter.load(path)`, then `predict(image)` as often as needed; `close()`
    (or a `with` block) releases the backend."""

    def __init__(self, runner: Runner, options: SegmenterOptions = SegmenterOptions(), model_bytes: int = 0):
        options.check()
        self.runner = runner
        self.options = options
        self._model_bytes = model_bytes
        self._planned: set[tuple[int, int]] = set()
        batch = runner.input_spec.batch
        if batch is not None and batch != 1:
            raise BadInputError(
                f"{runner.name}: has a fixed batch of {batch}; the segmenter runs one image at a time "
                "(export with batch 1 or a dynamic batch)"
            )
        runner.activate()  # a checkpoint's config is known once loaded
        if self.config.num_classes > 256:
            runner.deactivate()
            raise BadInputError(f"{runner.name}: {self.config.num_classes} classes do not fit 8-bit label maps")
        try:
            self._slide = self._window() if options.mode == "slide" else None
        except BadInputError:
            runner.deactivate()
            raise

    @classmethod
    def load(cls, model: str | os.PathLike[str], options: SegmenterOptions = SegmenterOptions()) -> Segmenter:
        """Load a checkpoint, ONNX model or TensorRT engine (with its sidecar) in one call."""
        options.check()
        runner = load_runner(model, options)
        return cls(runner, options, Path(model).stat().st_size)

    @property
    def config(self) -> ModelConfig:
        return self.runner.config

    @property
    def run_size(self) -> tuple[int, int] | None:
        """The (H, W) every image is resized to in whole-image mode; None: each image runs at its own size (a
        dynamic engine: within its profile, else at the profile's optimum)."""
        return self.runner.input_spec.static_size

    def _profile_sizes(self) -> list[tuple[int, int]] | None:
        """A dynamic engine's profile as (H, W) for min, opt and max; None for other backends."""
        sidecar = getattr(self.runner, "sidecar", None)
        if sidecar is None or not sidecar.profiles:
            return None
        spec = self.runner.input_spec
        shapes = sidecar.profiles[0].get(spec.input_name) or next(iter(sidecar.profiles[0].values()))
        return [(s[1], s[2]) if spec.uint8 else (s[2], s[3]) for s in shapes]

    def _window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((H, W) of a window, (H, W) of the stride): a static model's own size, else a square of `crop`."""
        static = self.run_size
        crop = self.options.crop
        if static is not None:
            if crop is not None and (crop, crop) != static:
                raise BadInputError(
                    f"{self.runner.name}: is fixed at {static[0]}x{static[1]}; its windows are that size"
                )
            window = static
        else:
            side = crop or min(self.config.input_size)
            window = (side, side)
        if self.options.stride is None:
            return window, (max(1, window[0] * 2 // 3), max(1, window[1] * 2 // 3))
        if self.options.stride > min(window):
            raise BadInputError(f"window stride {self.options.stride}: must be between 1 and the window size {window}")
        return window, (self.options.stride, self.options.stride)

    def _check_memory(self, size: tuple[int, int]) -> None:
        """The memory plan of one run at `size` (dynamic models run at the image's size): exit 2 when it does
        not fit, unless forced."""
        if size in self._planned or self.runner.kind == "tensorrt":
            return
        from danet_deploy.memory_plan import (
            BLOCK_BYTES,
            ORT_BYTES_PER_PIXEL,
            RUNTIME,
            RUNTIME_TORCH,
            SESSION_WEIGHT_COPIES,
            TORCH_BYTES_PER_PIXEL,
            StepEstimate,
            new_plan,
            pam_attention_bytes,
        )

        pixels = size[0] * size[1]
        plan = new_plan("predict", size)
        if self.runner.kind == "pytorch":  # PAM in query blocks (memory_efficient_attention)
            need = RUNTIME_TORCH + self._model_bytes + TORCH_BYTES_PER_PIXEL * pixels + 2 * BLOCK_BYTES
        else:
            attention, _ = pam_attention_bytes(1, size, self.config.position_attention == "pam")
            need = RUNTIME + int(SESSION_WEIGHT_COPIES * self._model_bytes) + ORT_BYTES_PER_PIXEL * pixels + attention
        plan.steps = [StepEstimate(f"{self.runner.kind} on one image", need)]
        plan.check(self.options.force)
        self._planned.add(size)

    def logits(self, image: np.ndarray) -> np.ndarray:
        """1 x classes x H x W float32 logits at the size of `image` (H x W x 3 uint8 RGB)."""
        h, w = image.shape[:2]
        align = self.config.align_corners
        if self._slide is not None:
            window, stride = self._slide
            if self.run_size is None:
                self._check_memory(window)
            return sliding_window(self.runner.infer, image, window, stride)  # verify's --crop/--stride code
        size = self.run_size
        profile = self._profile_sizes() if size is None else None
        if profile is not None and not all(lo <= v <= hi for lo, v, hi in zip(profile[0], (h, w), profile[2])):
            size = profile[1]  # outside the engine's profile: at its optimum size, the logits resized back
        if size is None:
            self._check_memory((h, w))
            return self.runner.infer(image)
        return resize_logits(self.runner.infer(resize_image(image, size)), (h, w), align)

    def predict(self, image: ImageLike, logits: bool = False) -> Prediction:
        """Segment one image (a path, a PIL image or an H x W x 3 uint8 RGB array); `logits` keeps them in the
        result (1 x classes x H x W float32 at the image's size)."""
        rgb = as_rgb(image)
        started = time.perf_counter()
        scores = self.logits(rgb)
        labels = scores[0].argmax(0).astype(np.uint8)
        seconds = time.perf_counter() - started
        return Prediction(rgb, labels, self.config, seconds, self.options.alpha, scores if logits else None)

    @property
    def mode(self) -> str:
        """'whole', or 'slide HxW/SHxSW' (window / stride)."""
        if self._slide is None:
            return "whole"
        (h, w), (sh, sw) = self._slide
        return f"slide {h}x{w}/{sh}x{sw}"

    def describe(self) -> dict[str, Any]:
        """What a run uses, for predict's JSON: backend, precision, device, mode, run size."""
        size = self.run_size
        return {
            "backend": self.runner.name,
            "precision": self.runner.precision_label,
            "device": self.runner.device,
            "mode": self.mode,
            "run_size": list(size) if size else None,
        }

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Segmenter({self.runner.name!r}, mode={self.options.mode!r})"
