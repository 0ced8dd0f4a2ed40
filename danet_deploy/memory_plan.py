"""The memory plan: the estimated peak resident memory of each step of a command at its input size, shown before
long work; a command whose peak exceeds the available memory stops with exit code 2 unless forced.

The estimates are a model of what each step holds, with constants measured on DANet-R50/R101 at 512x1024 and
1024x2048 (`bench/memory_bench.py`, docs/benchmarks.md): the process's runtimes, copies of the weights (ONNX
protos, sessions, ModelOpt's working copies), activations per input pixel, and the attention maps as the step
evaluates them (PAM over N positions: as written, or in query blocks: `bounded_ort.query_blocks`,
`model.memory_efficient_attention`). They aim a little high: a plan that says "fits" should fit.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
from dataclasses import dataclass, field

import onnx

from danet_deploy.artifact import OnnxModel
from danet_deploy.bounded_ort.query_blocks import BLOCK_BYTES, CHECK_ATTENTION_BYTES, plan_evaluation
from danet_deploy.errors import BadInputError
from danet_deploy.graph.shapes import structure_only
from danet_deploy.precision.bounded_calibration import CALIBRATION_SEGMENT_BYTES
from danet_deploy.progress import Progress, format_bytes
from danet_deploy.versions import memory_bound

GIB = 1 << 30
MIB = 1 << 20

# Measured (docs/benchmarks.md, "Memory"): see the module doc. Bytes unless named otherwise.
RUNTIME = 350 * MIB  # python, numpy, onnx, ONNX Runtime and this package imported
RUNTIME_TORCH = 700 * MIB  # ... plus torch
ORT_BYTES_PER_PIXEL = 560  # ONNX Runtime activations of DANet (stride-8 ResNet-50/101) per input pixel
ORT_PLAIN_BYTES_PER_PIXEL = 880  # ... without the NCHWc layout pass (simplify's checks): R50 1024x2048 +0.66 GiB
ORT_ARENA_FACTOR = 1.6  # the CPU arena (benchmark processes keep it) holds more than the plan's peak
TORCH_BYTES_PER_PIXEL = 600  # PyTorch inference activations per input pixel
FP16_BYTES_PER_PIXEL = 900  # the FP16-rounding session: graph optimizations off, every FP16 tensor copied once
EXPORT_WEIGHT_COPIES = 4  # torch.export's traced program, the ONNX program, the saved and re-read protos
SESSION_WEIGHT_COPIES = 1.3  # an ONNX Runtime session: its weights and pre-packed kernels
PROTO_COPIES_SIMPLIFY = 4  # the model, the pass candidate, the checked copy and its serialized bytes
PROTO_COPIES_MODELOPT = 6  # ModelOpt's loads, graph-surgeon copy, quantizer model and output
PROTO_COPIES_AUTOCAST = 4
HISTOGRAM_FACTOR = 3  # a histogram calibrator's temporaries per calibrated byte (flatten, abs, bins)
CITYSCAPES_CLASSES = 19
ALL_ACTIVATIONS_PER_PIXEL = 3000  # every Conv/MatMul input and output of DANet-R50 per input pixel


@dataclass
class StepEstimate:
    step: str
    bytes: int
    detail: str = ""


@dataclass
class MemoryPlan:
    """Estimated peak per step of one command at its input size, and the memory this machine has available."""

    command: str
    input_size: tuple[int, int]
    steps: list[StepEstimate] = field(default_factory=list)
    available: int | None = None
    available_from: str = ""  # the limit `available` comes from: "MemAvailable", "cgroup v1 ...", "RLIMIT_AS"

    @property
    def peak(self) -> StepEstimate:
        return max(self.steps, key=lambda s: s.bytes, default=StepEstimate("nothing to run here", 0))

    def lines(self) -> list[str]:
        size = f"{self.input_size[0]}x{self.input_size[1]}"
        source = f" ({self.available_from})" if self.available_from else ""
        free = (
            f"{format_bytes(self.available)} available{source}" if self.available is not None else "available: unknown"
        )
        lines = [f"memory plan for {self.command} at {size} (estimated peak resident memory; {free}):"]
        for s in self.steps:
            lines.append(f"  {s.step}: {format_bytes(s.bytes)}" + (f" ({s.detail})" if s.detail else ""))
        return lines

    def show_and_check(self, progress: Progress, force: bool) -> None:
        """Print the plan before long work, then `check` it."""
        for line in self.lines():
            progress.note(line)
        self.check(force)

    def check(self, force: bool) -> None:
        """BadInputError (exit 2) when the peak exceeds the available memory, unless `force`."""
        if force or self.available is None or self.peak.bytes <= self.available:
            return
        peak = self.peak
        raise BadInputError(
            f"{self.command} at {self.input_size[0]}x{self.input_size[1]} needs an estimated "
            f"{format_bytes(peak.bytes)} ({peak.step}); {format_bytes(self.available)} is available"
            f"{f' ({self.available_from})' if self.available_from else ''} "
            "(--force tries anyway)"
        )


def new_plan(command: str, input_size: tuple[int, int]) -> MemoryPlan:
    bound = memory_bound()
    if bound is None:
        return MemoryPlan(command, input_size, [])
    return MemoryPlan(command, input_size, [], bound.bytes, bound.source)


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
LARGE_ALLOCATION = 4 << 20


def return_large_allocations() -> None:
    """Make glibc serve allocations of 4 MiB and more (activations, weight copies) from their own mappings, which go
    back to the system when freed. By default glibc raises that threshold up to 32 MiB as blocks are freed and then
    keeps freed heap space, so the peaks of consecutive steps (calibration, then the check) add up in the resident
    memory. A no-op where glibc is not the C library."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION)


# what a model holds -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """What the estimates need to know of a model at one input shape."""

    weights: int  # bytes of weights (float32 or as stored)
    pixels: int  # batch x H x W
    checked_attention: int  # attention maps as a check evaluates them
    attention_as_written: int
    check: str  # how checks evaluate it (Evaluation.describe)
    logits: int  # bytes of one output


def onnx_facts(model: onnx.ModelProto, input_shape: list[int], num_classes: int) -> ModelFacts:
    weights = sum(_initializer_bytes(i) for i in model.graph.initializer)
    evaluation = plan_evaluation(structure_only(model), input_shape)
    pixels = math.prod(input_shape) // 3
    return ModelFacts(
        weights,
        pixels,
        evaluation.bytes_evaluated,
        evaluation.bytes_as_written,
        evaluation.describe(),
        pixels * num_classes * 4,
    )


def onnx_file_facts(
    path: str | os.PathLike[str], size: tuple[int, int] | None = None
) -> tuple[ModelFacts, tuple[int, int]]:
    """Facts of an ONNX file at its static size (else `size`, else its config's size), and that size."""
    model = OnnxModel.load(path)
    spec = model.input_spec
    size = spec.static_size or size or (model.config.input_size if model.has_config else (512, 1024))
    classes = model.config.num_classes if model.has_config else 19
    return onnx_facts(model.proto, spec.shape(spec.batch or 1, size), classes), size


def _initializer_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.raw_data:
        return len(tensor.raw_data)
    itemsize: dict[int, int] = {onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1}
    return math.prod(tensor.dims) * itemsize.get(tensor.data_type, 4)


def pam_attention_bytes(batch: int, size: tuple[int, int], pam: bool) -> tuple[int, int]:
    """(as trained/written, as the checks evaluate it) for DANet's PAM at an input size (N = H/8 x W/8)."""
    if not pam:
        return 0, 0
    n = math.ceil(size[0] / 8) * math.ceil(size[1] / 8)
    as_written = 2 * batch * n * n * 4
    return as_written, as_written if as_written <= CHECK_ATTENTION_BYTES else 2 * BLOCK_BYTES


def ort_run(facts: ModelFacts, attention: int | None = None, per_pixel: int = ORT_BYTES_PER_PIXEL) -> int:
    """One ONNX Runtime session running the model once (no arena), weights included."""
    attention = facts.checked_attention if attention is None else attention
    return int(SESSION_WEIGHT_COPIES * facts.weights + per_pixel * facts.pixels + attention)


# the commands ---------------------------------------------------------------------------------------------


def export_plan(weights: int, batch: int, size: tuple[int, int], pam: bool, classes: int) -> MemoryPlan:
    """PyTorch export, then the parity check: PyTorch (PAM in query blocks) and ONNX Runtime
    (`bounded_ort.query_blocks`)."""
    plan = new_plan("export", size)
    pixels = batch * size[0] * size[1]
    as_written, checked = pam_attention_bytes(batch, size, pam)
    torch_attention = min(as_written, 2 * BLOCK_BYTES)
    facts = ModelFacts(weights, pixels, checked, as_written, "", pixels * classes * 4)
    plan.steps = [
        StepEstimate("torch.onnx export", RUNTIME_TORCH + EXPORT_WEIGHT_COPIES * weights),
        StepEstimate(
            "parity: PyTorch",
            RUNTIME_TORCH + weights + TORCH_BYTES_PER_PIXEL * pixels + torch_attention,
            "PAM in query blocks" if torch_attention < as_written else "PAM as trained",
        ),
        StepEstimate(
            "parity: ONNX Runtime",
            RUNTIME_TORCH + weights + ort_run(facts) + 2 * facts.logits,
            "attention in query blocks" if checked < as_written else "as written",
        ),
    ]
    return plan


def simplify_plan(facts: ModelFacts, size: tuple[int, int], heads: int, images: int = 2) -> MemoryPlan:
    """Each pass checked on `images` at the model's size; multi-head forms repeat the maps per head."""
    plan = new_plan("simplify", size)
    per_head = facts.attention_as_written * heads
    target = per_head if per_head <= CHECK_ATTENTION_BYTES else 2 * BLOCK_BYTES
    attention = max(facts.checked_attention, target)
    plan.steps = [
        StepEstimate(
            "pass checks",
            RUNTIME
            + PROTO_COPIES_SIMPLIFY * facts.weights
            + ort_run(facts, attention, ORT_PLAIN_BYTES_PER_PIXEL)
            + 2 * images * facts.logits,
            facts.check,
        ),
    ]
    return plan


def quantize_plan(
    facts: ModelFacts, size: tuple[int, int], precision: str, target: str, method: str, budget: bool = False
) -> MemoryPlan:
    """FP16 (magnitude probe, AutoCast, check) or INT8 (calibration in segments, Q/DQ placement, check; with an
    mIoU `budget` the sensitivity ranking, which holds every probed activation of an image at once)."""
    plan = new_plan(f"quantize {precision}" + (f" ({target})" if precision == "int8" else ""), size)
    check = RUNTIME + ort_run(facts) + int(SESSION_WEIGHT_COPIES * facts.weights) + 2 * facts.logits + facts.weights
    if precision == "fp16":
        fp16_run = int(facts.weights + FP16_BYTES_PER_PIXEL * facts.pixels + facts.checked_attention)
        plan.steps = [
            StepEstimate("magnitude probe", RUNTIME + facts.weights + ort_run(facts), "streamed, one image at a time"),
            StepEstimate("AutoCast", RUNTIME + PROTO_COPIES_AUTOCAST * facts.weights),
            StepEstimate(
                "check against FP32",
                RUNTIME + facts.weights + ort_run(facts) + fp16_run + 2 * facts.logits,
                facts.check,
            ),
        ]
        return plan
    copies = PROTO_COPIES_MODELOPT if target == "tensorrt" else PROTO_COPIES_SIMPLIFY
    segment = CALIBRATION_SEGMENT_BYTES
    calibrated = segment * (1 + HISTOGRAM_FACTOR) if method != "max" else 0
    plan.steps = [
        StepEstimate(
            "calibration",
            RUNTIME + copies * facts.weights + ort_run(facts) + calibrated,
            f"{method}: tensors streamed in segments of {format_bytes(segment)}",
        ),
        StepEstimate("check against FP32", check, facts.check),
    ]
    if budget:
        probes = 2 * ALL_ACTIVATIONS_PER_PIXEL * facts.pixels + facts.attention_as_written
        plan.steps.append(
            StepEstimate(
                "sensitivity ranking",
                RUNTIME + 3 * facts.weights + probes,
                "if the budget is missed: every probed tensor of an image at once, attention as written",
            )
        )
    return plan


def verify_plan(torch_weights: int | None, backends: list[ModelFacts], size: tuple[int, int]) -> MemoryPlan:
    """Every backend open at once (weights), one run at a time; the PyTorch reference with PAM in query blocks."""
    plan = new_plan("verify", size)
    base = RUNTIME_TORCH if torch_weights is not None else RUNTIME
    held = (torch_weights or 0) + sum(int(SESSION_WEIGHT_COPIES * b.weights) for b in backends)
    runs = [ORT_BYTES_PER_PIXEL * b.pixels + b.checked_attention for b in backends]
    pixels = backends[0].pixels if backends else size[0] * size[1]
    if torch_weights is not None:
        runs.append(TORCH_BYTES_PER_PIXEL * pixels + 2 * BLOCK_BYTES)
    one_output = backends[0].logits if backends else pixels * CITYSCAPES_CLASSES * 4  # checkpoint only: a guess
    logits = (len(backends) + (torch_weights is not None)) * one_output * 2
    plan.steps = [
        StepEstimate(
            "backends on each image",
            base + held + max(runs, default=0) + logits,
            f"{len(backends) + (torch_weights is not None)} backend(s) open",
        )
    ]
    if torch_weights is not None:
        # The FP32 gate's noise floor: the reference once more in float64 on one image (a float64 copy of the
        # weights, activations and attention blocks of twice the size), before the backends run.
        plan.steps.append(
            StepEstimate(
                "FP32 noise: the reference in float64 on one image",
                base + held + 2 * torch_weights + 2 * (TORCH_BYTES_PER_PIXEL * pixels + 2 * BLOCK_BYTES) + one_output,
                "the float64 copy is dropped before the images run",
            )
        )
    return plan


def benchmark_plan(
    torch_weights: int | None, backends: list[tuple[str, ModelFacts]], size: tuple[int, int]
) -> MemoryPlan:
    """Each backend in its own process, running the model as written (that is what is timed)."""
    plan = new_plan("benchmark", size)
    pixels = size[0] * size[1]
    if torch_weights is not None:
        plan.steps.append(
            StepEstimate(
                "pytorch",
                RUNTIME_TORCH + torch_weights + TORCH_BYTES_PER_PIXEL * pixels + 2 * BLOCK_BYTES,
                "PAM in query blocks",
            )
        )
    for name, b in backends:
        run = RUNTIME + int(SESSION_WEIGHT_COPIES * b.weights + ORT_ARENA_FACTOR * ORT_BYTES_PER_PIXEL * b.pixels)
        plan.steps.append(StepEstimate(name, run + b.attention_as_written, "as written"))
    return plan
