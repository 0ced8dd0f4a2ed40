"""PyTorch DANet -> ONNX, with the model config and provenance inside, checked right after export.

Exporter choice: torch.onnx's dynamo exporter for opset >= 18 (the default). For opset < 18 (TensorRT 8.6
on JetPack 6.0 parses up to 17; MMDeploy uses 11) the legacy TorchScript exporter is used, because the
dynamo exporter can only reach those opsets through a version converter that fails on DANet's graph and
leaves the model at opset 18.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from danet_deploy.artifact import (
    META_CONFIG,
    META_IO,
    META_PRECISION,
    META_PROVENANCE,
    onnxruntime_session,
    write_metadata,
)
from danet_deploy.config import ModelConfig
from danet_deploy.errors import CheckFailedError
from danet_deploy.files import atomic_path, sha256_file
from danet_deploy.library_noise import quiet_torch_export
from danet_deploy.model.danet import PositionAttention, memory_efficient_attention
from danet_deploy.options import ExportOptions
from danet_deploy.versions import tool_versions


def export_size(options: ExportOptions, config: ModelConfig) -> tuple[int, int]:
    """The (H, W) to export at: the option, else the model config's size."""
    return options.input_size or config.input_size


@dataclass
class ParityResult:
    """ONNX Runtime vs PyTorch on one input: the error and whether it is within tolerance, and how each side
    evaluated the attention (exactly, but maybe in query blocks: see `memory_efficient_attention` and
    `bounded_ort.query_blocks`)."""

    shape: tuple[int, ...]
    max_abs_diff: float
    mean_abs_diff: float
    max_abs_reference: float
    label_agreement: float
    tolerance: float
    onnx_evaluation: str = "as written"
    reference: str = "as trained"

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance)


@dataclass
class ExportRecord:
    """What export produced; saved in the ONNX metadata (provenance) and printed by the CLI."""

    onnx_path: str
    onnx_sha256: str
    size_bytes: int
    exporter: str
    opset: int
    export_seconds: float
    parity: list[ParityResult] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)


class DeployWrapper(nn.Module):
    """The graph users deploy: optional baked preprocessing (uint8 NHWC RGB in) and argmax labels out."""

    mean255: torch.Tensor  # registered buffers: config mean and std scaled to uint8 range, [1, 3, 1, 1]
    std255: torch.Tensor

    def __init__(
        self, model: nn.Module, config: ModelConfig, argmax: bool, uint8_input: bool, rgb255_input: bool = False
    ):
        super().__init__()
        self.model = model
        self.argmax = argmax
        self.uint8_input = uint8_input
        self.rgb255_input = rgb255_input
        self.register_buffer("mean255", torch.tensor(config.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std255", torch.tensor(config.std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = image
        if self.uint8_input:
            x = (image.permute(0, 3, 1, 2).float() - self.mean255) / self.std255
        elif self.rgb255_input:
            x = (image - self.mean255) / self.std255
        logits = self.model(x)
        if not self.argmax:
            return logits
        # int32 labels: TensorRT 8.6 has no INT64 tensors and class ids fit easily.
        return logits, logits.argmax(1).to(torch.int32)


def io_spec(config: ModelConfig, options: ExportOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    h, w = export_size(options, config)
    n: int | str = "batch" if options.dynamic else options.batch
    hh: int | str = "height" if options.dynamic else h
    ww: int | str = "width" if options.dynamic else w
    if options.uint8_input:
        inputs = {"image": {"dtype": "uint8", "shape": [n, hh, ww, 3], "layout": "NHWC RGB 0-255, unnormalized"}}
    elif options.rgb255_input:
        inputs = {"image": {"dtype": "float32", "shape": [n, 3, hh, ww], "layout": "NCHW RGB 0-255, unnormalized"}}
    else:
        inputs = {"image": {"dtype": "float32", "shape": [n, 3, hh, ww], "layout": "NCHW RGB, normalized"}}
    outputs: dict[str, Any] = {"logits": {"dtype": "float32", "shape": [n, config.num_classes, hh, ww]}}
    if options.argmax:
        outputs["labels"] = {"dtype": "int32", "shape": [n, hh, ww]}
    return inputs, outputs


def _example_input(config: ModelConfig, options: ExportOptions, image: np.ndarray | None) -> torch.Tensor:
    from danet_deploy.data.preprocess import normalize, resize_image

    h, w = export_size(options, config)
    if image is None:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = resize_image(image, (h, w))
    batch = np.repeat(image[None], options.batch, axis=0)
    if options.uint8_input:
        return torch.from_numpy(np.ascontiguousarray(batch))
    if options.rgb255_input:
        return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2).astype(np.float32)))
    return torch.from_numpy(np.concatenate([normalize(im, config) for im in batch]))


def _torch_export(wrapper: nn.Module, example: torch.Tensor, path: Path, options: ExportOptions) -> None:
    output_names = ["logits", "labels"] if options.argmax else ["logits"]
    image_axes = {0: "batch", 1: "height", 2: "width"} if options.uint8_input else {0: "batch", 2: "height", 3: "width"}
    with quiet_torch_export():
        if options.exporter == "dynamo":
            dynamic_shapes = None
            if options.dynamic:
                dim = torch.export.Dim.AUTO
                dynamic_shapes = {"image": dict.fromkeys(image_axes, dim)}
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=["image"],
                output_names=output_names,
                opset_version=options.opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
            assert program is not None  # dynamo=True always returns the ONNXProgram
            program.save(str(path))
        else:
            dynamic_axes = None
            if options.dynamic:
                out_axes = {0: "batch", 2: "height", 3: "width"}
                dynamic_axes = {"image": image_axes, "logits": out_axes}
                if options.argmax:
                    dynamic_axes["labels"] = {0: "batch", 1: "height", 2: "width"}
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                input_names=["image"],
                output_names=output_names,
                opset_version=options.opset,
                dynamo=False,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )


def _name_dynamic_dims(model: onnx.ModelProto, options: ExportOptions) -> None:
    """The dynamo exporter names symbolic dims s0, s1, ...; give them the names users expect."""
    if not options.dynamic:
        return
    image = model.graph.input[0].type.tensor_type.shape.dim
    positions = (0, 1, 2) if options.uint8_input else (0, 2, 3)
    rename = {
        image[p].dim_param: name for p, name in zip(positions, ("batch", "height", "width")) if image[p].dim_param
    }
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]


# A session for the parity check and how it evaluates the model: (path, input shape) -> (session, description).
SessionFactory = Callable[[Path, list[int]], tuple[Any, str]]


def as_written_session(path: Path, input_shape: list[int]) -> tuple[Any, str]:
    return onnxruntime_session(path), "as written"


def reference_description(model: nn.Module) -> str:
    """How the last forward of `model` evaluated PAM: 'as trained' or in query blocks."""
    blocks = {m.last_block for m in model.modules() if isinstance(m, PositionAttention) and m.last_block is not None}
    return f"PAM in query blocks of {min(blocks)} (exact)" if blocks else "as trained"


def check_parity(
    onnx_path: Path,
    model: nn.Module,
    example: torch.Tensor,
    options: ExportOptions,
    session: Any = None,
    onnx_evaluation: str = "as written",
) -> ParityResult:
    """ONNX Runtime (`session`, default: the file as written) against PyTorch on `example`. PyTorch runs PAM in
    query blocks where the map as trained would be large (exact: `memory_efficient_attention`)."""
    session = session or onnxruntime_session(onnx_path)
    with torch.no_grad(), memory_efficient_attention(model):
        reference = model(example)
    reference = (reference[0] if isinstance(reference, tuple) else reference).numpy()
    try:
        got = session.run(["logits"], {"image": example.numpy()})[0]
    except Exception as exc:  # onnxruntime raises its own types, e.g. when an export fixed a dynamic axis
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckFailedError(
            f"{onnx_path}: ONNX Runtime cannot run the export at input {list(example.shape)}: {first[:200]}"
        ) from None
    if got.shape != reference.shape:
        raise CheckFailedError(f"{onnx_path}: ONNX output shape {got.shape} != PyTorch {reference.shape}")
    diff = np.abs(got.astype(np.float64) - reference)
    max_ref = float(np.abs(reference).max())
    return ParityResult(
        shape=tuple(example.shape),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        max_abs_reference=max_ref,
        label_agreement=float((got.argmax(1) == reference.argmax(1)).mean()),
        tolerance=options.atol + options.rtol * max_ref,
        onnx_evaluation=onnx_evaluation,
        reference=reference_description(model),
    )


def export_onnx(
    model: nn.Module,
    config: ModelConfig,
    out_path: str | os.PathLike[str],
    options: ExportOptions = ExportOptions(),
    image: np.ndarray | None = None,
    provenance: dict[str, Any] | None = None,
    check_session: SessionFactory = as_written_session,
) -> ExportRecord:
    """Export, embed config + provenance, run onnx.checker and the ONNX Runtime parity check.

    On any failure (including parity beyond tolerance) nothing is left at `out_path`.
    `image` is the real RGB image the parity check runs on (resized to the input size). `check_session` makes
    the ONNX Runtime session of the parity check (default: the file as written; `api.export` passes one that
    evaluates large attention in query blocks, `bounded_ort.query_blocks`).
    """
    options.check()
    model = model.eval()
    wrapper = DeployWrapper(model, config, options.argmax, options.uint8_input, options.rgb255_input).eval()
    example = _example_input(config, options, image)
    out = Path(out_path)
    started = time.perf_counter()
    with atomic_path(out) as tmp:
        _torch_export(wrapper, example, tmp, options)
        proto = onnx.load(str(tmp))
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset != options.opset:
            raise CheckFailedError(f"{out}: exporter produced opset {opset}, not the requested {options.opset}")
        _name_dynamic_dims(proto, options)
        inputs, outputs = io_spec(config, options)
        record_provenance = {
            **(provenance or {}),
            "exporter": f"torch.onnx ({options.exporter})",
            "export_options": options.graph_options(),
            "tool_versions": tool_versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_metadata(
            proto,
            {
                META_CONFIG: config.to_dict(),
                META_PROVENANCE: record_provenance,
                META_IO: {"inputs": inputs, "outputs": outputs},
                META_PRECISION: {"precision": "fp32"},
            },
        )
        proto.producer_name = "danet-deploy"
        proto.doc_string = f"{config.arch}, {config.num_classes} classes; see metadata {META_CONFIG}"
        onnx.save(proto, str(tmp))
        del proto  # the checks read the file: no second copy of the weights in memory
        export_seconds = time.perf_counter() - started
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise CheckFailedError(f"{out}: onnx.checker rejected the export: {str(exc).splitlines()[0]}") from None
        checks = [example]
        if options.dynamic and not options.uint8_input:
            # A second batch size and an odd spatial size prove the dynamic axes, not just the traced shape.
            h, w = example.shape[-2:]
            other = torch.nn.functional.interpolate(example, size=(h * 3 // 4 + 3, w * 3 // 4 + 5), mode="bilinear")
            checks.append(other.repeat(2, 1, 1, 1))
        results = []
        for feed in checks:
            session, evaluation = check_session(tmp, list(feed.shape))
            results.append(check_parity(tmp, wrapper, feed, options, session, evaluation))
            del session
        failed = [r for r in results if not r.passed]
        if failed:
            r = failed[0]
            raise CheckFailedError(
                f"{out}: ONNX Runtime vs PyTorch max abs diff {r.max_abs_diff:.3g} at input {list(r.shape)} exceeds "
                f"tolerance {r.tolerance:.3g} (atol {options.atol:g} + rtol {options.rtol:g} x max|logit| "
                f"{r.max_abs_reference:.3g}); file not written"
            )
    return ExportRecord(
        onnx_path=str(out),
        onnx_sha256=sha256_file(out),
        size_bytes=out.stat().st_size,
        exporter=options.exporter,
        opset=options.opset,
        export_seconds=round(export_seconds, 2),
        parity=results,
        inputs=inputs,
        outputs=outputs,
    )
