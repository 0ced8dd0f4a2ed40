"""FP32 ONNX -> INT8 QDQ ONNX that ONNX Runtime's CPU provider runs with integer kernels.

TensorRT's Q/DQ placement (quantized Conv/MatMul inputs, float outputs, `int8.py`) is not what ONNX Runtime's
CPU provider fuses: it computes such a model in float and runs slower than FP32. ONNX Runtime's own quantizer
(`onnxruntime.quantization.quantize_static`, QDQ format) also quantizes each Conv's output and the ops
between Convs (Add, MaxPool, ...), so the optimizer turns DQ -> Conv -> Q into QLinearConv and the backbone
stays in 8 bits from one Conv to the next.

Settings, as ONNX Runtime recommends them per instruction set (its quantization guide and the
`quantize_static` docstring): uint8 activations (asymmetric, the x86 kernels' operand) with int8 per-channel
weights (U8S8); 7-bit weights (`reduce_range`) on x86 without VNNI, where the AVX2/AVX-512 multiply-add
saturates; U8S8 without reduce_range where VNNI or ARM dot-product instructions accumulate exactly. On this
project's AVX-512 VNNI machine S8S8 activations were measured at half the speed of U8S8 (demo model).

What stays float, by rule (`float_nodes`): PAM's and CAM's energy, softmax and attention products (8-bit
attention weights cannot hold values around 1/N), and the classifier Conv with the upsampling after it
(8-bit logits flip argmax labels: -5.6 mIoU points on the demo model when they were quantized).
"""

from __future__ import annotations

import contextlib
import logging
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from danet_deploy.data.images import read_image
from danet_deploy.errors import BadInputError, OptionError
from danet_deploy.files import temporary_folder
from danet_deploy.graph.sites import find_sites
from danet_deploy.library_noise import quiet
from danet_deploy.precision.bounded_calibration import bounded_calibrators
from danet_deploy.precision.calibration_data import CalibrationSet
from danet_deploy.versions import cpu_model

log = logging.getLogger(__name__)

ORT_QUANT_LOGGERS = ("onnxruntime.quantization", "root")
# ONNX Runtime kernels that compute on 8-bit integers (after its graph optimizer fused the QDQ nodes).
INTEGER_KERNELS = (
    "QLinearConv",
    "ConvInteger",
    "QLinearMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QGemm",
)
QUANTIZABLE = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class CpuProfile:
    """How to quantize for one family of CPUs (ONNX Runtime's recommendation for its instruction set)."""

    name: str
    description: str
    activation_type: str  # "uint8" or "int8"
    weight_type: str
    reduce_range: bool  # 7-bit weights against multiply-add saturation


CPU_PROFILES = {
    "x86-vnni": CpuProfile("x86-vnni", "x86-64 with AVX-512 VNNI or AVX-VNNI", "uint8", "int8", False),
    "x86": CpuProfile("x86", "x86-64 with AVX2 / AVX-512 but no VNNI", "uint8", "int8", True),
    "arm64": CpuProfile("arm64", "ARM64 (dot-product instructions)", "uint8", "int8", False),
}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", *VNNI_FLAGS, "asimddp", "i8mm", "sve")


def cpu_flags() -> set[str]:
    """Instruction-set flags of this CPU from /proc/cpuinfo ('flags' on x86, 'Features' on ARM); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def detect_cpu_profile(flags: set[str] | None = None, machine: str | None = None) -> CpuProfile:
    """The profile for this machine (or for the given `flags` and `platform.machine()` value)."""
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return CPU_PROFILES["arm64"]
    return CPU_PROFILES["x86-vnni" if flags & set(VNNI_FLAGS) else "x86"]


def cpu_profile(name: str | None) -> CpuProfile:
    """A profile by name, or this machine's for None / 'auto' (quantize where you deploy, or name the target)."""
    if name in (None, "auto"):
        return detect_cpu_profile()
    if name not in CPU_PROFILES:
        raise OptionError("cpu", name, f"choose auto, {', '.join(CPU_PROFILES)}")
    return CPU_PROFILES[name]


def isa_summary(flags: set[str] | None = None) -> str:
    """This CPU's model and the instruction sets that matter for INT8, e.g. 'AMD EPYC ... (avx2 avx512_vnni)'."""
    flags = cpu_flags() if flags is None else flags
    found = [f for f in ISA_FLAGS if f in flags]
    return f"{cpu_model()} ({' '.join(found) or 'no INT8 dot-product extensions found'})"


# what stays float -----------------------------------------------------------------------------------------


def float_nodes(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Node names kept in float, by reason: 'attention' (PAM / CAM sites) and 'classifier' (the last Conv before
    the logits output and every node between it and that output)."""
    attention = [name for site in find_sites(model) for name in site.nodes]
    producers = {o: n for n in model.graph.node for o in n.output}
    names = [o.name for o in model.graph.output]
    logits = "logits" if "logits" in names else names[0]
    classifier: list[str] = []
    pending, seen = [logits], set()
    while pending:  # walk back from the logits to the first Conv on each path
        node = producers.get(pending.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        classifier.append(node.name)
        if node.op_type != "Conv":
            pending += [i for i in node.input if i in producers]
    return {"attention": attention, "classifier": classifier}


# quantization ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def onnxruntime_quantization_restored() -> Iterator[None]:
    """Undo, after the block, what it changed in ONNX Runtime's quantization classes and modules.

    ModelOpt's `quantize` monkeypatches ONNX Runtime's calibrators and quantizers for the rest of the process
    (`modelopt.onnx.quantization.ort_patching.patch_ort_modules`); ONNX Runtime's own `quantize_static` then
    fails ("Histogram has not been collected") when both targets are quantized in one process, as the demo does.
    It also edits ONNX Runtime's operator registries in place (`configure_ort` drops Relu, MaxPool, ... from
    `QDQRegistry`), which changed what the ONNX Runtime target quantized after a TensorRT one; they are restored too.
    """
    from onnxruntime.quantization import base_quantizer, calibrate, qdq_quantizer, quantize, registry

    owners: list[Any] = [
        calibrate,
        quantize,
        calibrate.CalibraterBase,
        calibrate.MinMaxCalibrater,
        calibrate.HistogramCalibrater,
        calibrate.HistogramCollector,
        qdq_quantizer.QDQQuantizer,
        base_quantizer.BaseQuantizer,
    ]
    saved = [(owner, dict(vars(owner))) for owner in owners]
    tables = [registry.QLinearOpsRegistry, registry.QDQRegistry, registry.IntegerOpsRegistry]
    saved_tables = [(table, dict(table)) for table in tables]
    try:
        yield
    finally:
        for table, contents in saved_tables:
            table.clear()
            table.update(contents)
        for owner, before in saved:
            for name in set(vars(owner)) - set(before):
                delattr(owner, name)
            for name, value in before.items():
                if vars(owner).get(name) is not value:  # unchanged entries (descriptors included) are left alone
                    setattr(owner, name, value)


class _ChunkedReader:
    """ONNX Runtime's calibration reader protocol plus `len` / `set_range`, so `quantize_static` collects ranges
    one image at a time (`CalibStridedMinMax`) instead of holding every image's activations at once."""

    def __init__(self, calib: CalibrationSet, on_batch: Callable[[int], None] | None):
        self.calib = calib
        self.on_batch = on_batch
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return len(self.calib) // self.calib.batch

    def set_range(self, start_index: int, end_index: int) -> None:
        self._batches: Iterator[np.ndarray] = self._range(start_index, end_index)

    def _range(self, start: int, end: int) -> Iterator[np.ndarray]:
        b = self.calib.batch
        files = self.calib.files[start * b : end * b]
        pending: list[np.ndarray] = []
        for path in files:
            pending.append(self.calib.preprocess(read_image(path)))
            if len(pending) == b:
                yield np.concatenate(pending)
                pending = []
                if self.on_batch is not None:  # the consumer asked for more: this batch is done
                    self.on_batch(b)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.calib.input_name: batch}


def run_onnxruntime_quantizer(
    model: onnx.ModelProto,
    calib: CalibrationSet,
    method: str,
    exclude: list[str],
    percentile: float,
    profile: CpuProfile,
    on_batch: Callable[[int], None] | None = None,
) -> bytes:
    """ONNX Runtime's static QDQ quantization of `model` (nodes named in `exclude` stay float) -> model bytes.
    Calibration runs in bounded memory (`bounded_calibrators`); `on_batch(images)` as batches finish."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    methods = {
        "entropy": CalibrationMethod.Entropy,
        "max": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    excluded = set(exclude)
    # Only op types that something still quantizes: the calibrator then never collects the N x N attention maps.
    quantizable = set(QDQRegistry) | set(QLinearOpsRegistry)
    op_types = sorted({n.op_type for n in model.graph.node if n.name not in excluded} & quantizable)
    extra: dict[str, float] = {"CalibStridedMinMax": 1}
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    with temporary_folder("int8-ort") as tmp:
        # A path, not the proto: given a ModelProto, quantize_static saves it with external data, which rewrites
        # the caller's initializers into references to a file in its (deleted) temp folder.
        src, out = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        onnx.save(model, str(src))
        with (
            quiet(ORT_QUANT_LOGGERS, capture_stdout=True, capture_stderr=True, ignore_warnings=True),
            onnxruntime_quantization_restored(),
            bounded_calibrators(),
        ):
            quantize_static(
                str(src),
                str(out),
                _ChunkedReader(calib, on_batch),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=True,
                reduce_range=profile.reduce_range,
                activation_type=types[profile.activation_type],
                weight_type=types[profile.weight_type],
                nodes_to_exclude=sorted(excluded),
                calibrate_method=methods[method],
                calibration_providers=["CPUExecutionProvider"],
                extra_options=extra,
            )
        return out.read_bytes()


# what ONNX Runtime makes of it ----------------------------------------------------------------------------


@dataclass
class KernelChoice:
    """One Conv / MatMul / Gemm of the model and the kernel ONNX Runtime's CPU provider runs it with."""

    node: str
    op_type: str
    kernel: str  # e.g. QLinearConv, MatMulIntegerToFloat, or the float op

    @property
    def integer(self) -> bool:
        return self.kernel in INTEGER_KERNELS


def kernel_choices(model: onnx.ModelProto | bytes | str | Path) -> list[KernelChoice]:
    """Which kernel ONNX Runtime's CPU provider picks for every Conv / MatMul / Gemm, read from the graph its
    optimizer writes (extended level: QDQ fusion, no hardware-specific layouts)."""
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto):
        proto, source = model, model.SerializeToString()
    elif isinstance(model, bytes):
        proto, source = onnx.load_from_string(model), model
    else:
        proto, source = onnx.load(str(model), load_external_data=False), str(model)
    nodes = [(n.name, n.op_type) for n in proto.graph.node if n.op_type in QUANTIZABLE]
    with temporary_folder("ort-kernels") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        try:
            ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for invalid models
            raise BadInputError(f"ONNX Runtime cannot load the model ({str(exc).splitlines()[0][:160]})") from None
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    # Fused nodes keep the name of the node they replace (a suffix may follow).
    kernels = {n.name: n.op_type for n in optimized.graph.node}
    choices = []
    for name, op_type in nodes:
        kernel = kernels.get(name) or next((k for n, k in kernels.items() if n.startswith(f"{name}/")), op_type)
        choices.append(KernelChoice(name, op_type, kernel))
    return choices
