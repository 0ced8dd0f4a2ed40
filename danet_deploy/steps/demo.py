"""The whole pipeline on a bundled model and data."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from danet_deploy.errors import OptionError
from danet_deploy.files import (
    PathLike,
    removed_on_failure,
)
from danet_deploy.options import BenchmarkOptions, Fp16Options, Int8Options
from danet_deploy.progress import SILENT, Progress
from danet_deploy.simplify import SimplifyOptions
from danet_deploy.steps.benchmark import BenchmarkResult, benchmark
from danet_deploy.steps.export import ExportResult, SimplifyResult, export, simplify_model_file
from danet_deploy.steps.quantize import QuantizeResult, quantize
from danet_deploy.steps.verify import VerifyResult, verify


@dataclass
class DemoResult:
    """Everything the demo made: the work folder and each step's result."""

    workdir: Path
    export: ExportResult
    simplified: SimplifyResult
    fp16: QuantizeResult
    int8: QuantizeResult  # Q/DQ for TensorRT
    int8_ort: QuantizeResult  # for ONNX Runtime's CPU integer kernels
    benchmark: BenchmarkResult
    verify: VerifyResult


@contextlib.contextmanager
def _step(progress: Progress, header: str) -> Iterator[None]:
    progress.show(header)
    yield


def demo(
    workdir: PathLike = "danet-deploy-demo",
    variant: str = "danet",
    calib_images: int = 100,
    progress: Progress = SILENT,
) -> DemoResult:
    """The whole pipeline on a bundled model and data: export, simplify, FP16, INT8 (for TensorRT and for ONNX
    Runtime's CPU kernels), benchmark, verify, report."""
    from danet_deploy.data.bundled import DEMO_CHECKPOINTS, DEMO_DATA
    from danet_deploy.data.synthetic import write_calibration_images
    from danet_deploy.report.text import export_summary, fp16_lines, int8_lines, simplify_lines

    if variant not in DEMO_CHECKPOINTS:
        raise OptionError("variant", variant, f"choose from {', '.join(DEMO_CHECKPOINTS)}")
    checkpoint, work = DEMO_CHECKPOINTS[variant], Path(workdir)
    onnx_path, simplified = work / "demo.onnx", work / "demo.ort.onnx"
    fp16_path, int8_path, calib = work / "demo.fp16.onnx", work / "demo.int8.onnx", work / "calibration"
    int8_ort_path = work / "demo.int8.ort.onnx"
    with removed_on_failure():  # an interrupted or failed demo leaves none of its outputs
        with _step(progress, f"[bold]1/6 export[/] {checkpoint.name} -> {onnx_path}"):
            exported = export(checkpoint, onnx_path, progress=progress)
            for line in export_summary(exported.record):
                progress.show(line)
        with _step(progress, f"[bold]2/6 simplify[/] for ONNX Runtime -> {simplified}"):
            simple = simplify_model_file(onnx_path, simplified, SimplifyOptions(target="ort"), progress)
            for line in [*simplify_lines(simple.report), f"wrote {simple.path} ({simple.size_bytes / 2**20:.1f} MiB)"]:
                progress.show(line)
        with progress.task(
            f"writing {calib_images} synthetic calibration scenes (the calibration/ split of the generator)"
        ):
            write_calibration_images(calib, calib_images)
        with _step(progress, f"[bold]3/6 FP16[/] -> {fp16_path}"):
            fp16 = quantize(onnx_path, fp16_path, Fp16Options(calib=calib, count=min(calib_images, 32)), progress)
            for line in fp16_lines(fp16.record):
                progress.show(line)
        with _step(
            progress, f"[bold]4/6 INT8[/] Q/DQ for TensorRT -> {int8_path}, for ONNX Runtime -> {int8_ort_path}"
        ):
            options = Int8Options(calib=calib, count=calib_images, cache_dir=work / "cache")
            int8 = quantize(onnx_path, int8_path, options, progress)
            int8_ort = quantize(onnx_path, int8_ort_path, replace(options, target="ort"), progress)
            for line in [*int8_lines(int8.record), *int8_lines(int8_ort.record)]:
                progress.show(line)
        models = [onnx_path, simplified, fp16_path, int8_path, int8_ort_path]
        with _step(progress, "[bold]5/6 benchmark[/] PyTorch and every ONNX model on ONNX Runtime CPU"):
            timing = BenchmarkOptions(warmup=2, iterations=5)
            bench = benchmark(checkpoint, models, options=timing, json_path=work / "benchmark.json", progress=progress)
        with _step(progress, f"[bold]6/6 verify[/] every backend against PyTorch on {DEMO_DATA}"):
            verified = verify(
                DEMO_DATA,
                checkpoint,
                models,
                json_path=work / "report.json",
                report_dir=work,
                benchmark_json=work / "benchmark.json",
                progress=progress,
            )
    return DemoResult(work, exported, simple, fp16, int8, int8_ort, bench, verified)
