"""A Triton Inference Server model repository for a model file: `REPO/<name>/config.pbtxt`,
`REPO/<name>/<version>/model.onnx` (ONNX Runtime backend) or `model.plan` (TensorRT backend) and `labels.txt`.

The configuration is Triton's `ModelConfig` protobuf in text format, with every field taken from the model:
platform, tensor names, data types and dims (without the batch dim when Triton batches), `max_batch_size` and
dynamic batching from a dynamic ONNX batch or an engine's optimization profile (a fixed batch: max_batch_size 0
and the full shape), and the `labels` output (argmax, int32) when the model was exported with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from danet_deploy.deploy.model_io import ModelIO, Tensor

TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "uint8": "TYPE_UINT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
}
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "engine": ("tensorrt_plan", "model.plan")}
LABELS_FILE = "labels.txt"
DEFAULT_MAX_BATCH = 8  # a dynamic-batch ONNX has no limit of its own


@dataclass(frozen=True)
class TritonTensor:
    """A tensor as config.pbtxt lists it.

    Attributes:
        name: the tensor name.
        data_type: Triton's type name ("TYPE_FP32").
        dims: the dims Triton sees: without the batch dim when max_batch_size > 0; -1 where dynamic.
        label_filename: the class-names file (on the logits output), else None.
    """

    name: str
    data_type: str
    dims: tuple[int, ...]
    label_filename: str | None = None

    def text(self, indent: str) -> str:
        lines = [
            f'name: "{self.name}"',
            f"data_type: {self.data_type}",
            f"dims: [ {', '.join(str(d) for d in self.dims)} ]",
        ]
        if self.label_filename:
            lines.append(f'label_filename: "{self.label_filename}"')
        inner = "\n".join(f"{indent}  {line}" for line in lines)
        return f"{indent}{{\n{inner}\n{indent}}}"


@dataclass(frozen=True)
class TritonConfig:
    """The model configuration, field by field.

    Attributes:
        name: the model's name in the repository (its folder).
        platform: "onnxruntime_onnx" or "tensorrt_plan".
        model_file: "model.onnx" or "model.plan" (Triton's default file names).
        max_batch_size: 0 for a fixed batch (dims are then the full shape), else the largest batch.
        inputs, outputs: the tensors.
        dynamic_batching: whether requests are batched by the server (when max_batch_size > 0).
        max_queue_delay_us: how long the batcher waits to fill a batch.
        instance_kind: "KIND_GPU" or "KIND_CPU".
        instances: model instances per device.
        header: comment lines at the top of config.pbtxt (the preprocessing a client must apply).
    """

    name: str
    platform: str
    model_file: str
    max_batch_size: int
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    dynamic_batching: bool
    max_queue_delay_us: int
    instance_kind: str
    instances: int
    header: tuple[str, ...] = ()

    def text(self) -> str:
        """config.pbtxt."""
        lines = [f"# {line}" for line in self.header]
        lines += [
            f'name: "{self.name}"',
            f'platform: "{self.platform}"',
            f'default_model_filename: "{self.model_file}"',
            f"max_batch_size: {self.max_batch_size}",
            "input [\n" + ",\n".join(t.text("  ") for t in self.inputs) + "\n]",
            "output [\n" + ",\n".join(t.text("  ") for t in self.outputs) + "\n]",
        ]
        if self.dynamic_batching:
            lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {self.max_queue_delay_us}\n}}")
        lines.append(f"instance_group [\n  {{\n    count: {self.instances}\n    kind: {self.instance_kind}\n  }}\n]")
        return "\n".join(lines) + "\n"


def _dims(tensor: Tensor, batched: bool) -> tuple[int, ...]:
    dims = tensor.shape[1:] if batched else tensor.shape
    return tuple(-1 if d is None else int(d) for d in dims)


def preprocessing_lines(model: ModelIO) -> tuple[str, ...]:
    """What a client sends: the input's layout, range and normalization, from the model config."""
    config, spec = model.config, model.spec
    if spec.uint8:
        what = "uint8 NHWC RGB 0-255 (the model normalizes inside)"
    elif not spec.normalized:
        what = "float NCHW RGB 0-255 (the model normalizes inside)"
    else:
        mean = ", ".join(f"{v:g}" for v in config.mean)
        std = ", ".join(f"{v:g}" for v in config.std)
        what = f"float NCHW RGB, (x / 255 - mean) / std with mean ({mean}) and std ({std})"
    return (
        f"danet-deploy: {config.arch} ({config.variant}), {config.num_classes} classes, {model.precision}",
        f"input '{model.input.name}': {what}",
        "labels: argmax over the logits' class axis (or the 'labels' output when present); classes in labels.txt",
        "palette (RGB per class): " + json.dumps([list(c) for c in config.palette[: config.num_classes]]),
    )


def triton_config(
    model: ModelIO,
    name: str,
    *,
    argmax: bool | None,
    max_batch_size: int | None,
    max_queue_delay_us: int,
    instances: int,
    instance_kind: str,
) -> TritonConfig:
    """The configuration of `model` (see the module doc). `argmax` None: list the labels output when the model
    has one; False: leave it out; True: the caller checked it is there. `max_batch_size`: the batch limit when
    Triton batches; None: an engine profile's max batch, else DEFAULT_MAX_BATCH."""
    platform, model_file = PLATFORMS[model.kind]
    batched = model.dynamic_batch
    batch = (max_batch_size or model.max_batch or DEFAULT_MAX_BATCH) if batched else 0
    inputs = (TritonTensor(model.input.name, TRITON_TYPES[model.input.dtype], _dims(model.input, batched)),)
    outputs = []
    for tensor in model.outputs:
        if tensor.name == "labels" and argmax is False:
            continue
        label_file = LABELS_FILE if tensor.name != "labels" else None
        outputs.append(TritonTensor(tensor.name, TRITON_TYPES[tensor.dtype], _dims(tensor, batched), label_file))
    return TritonConfig(
        name=name,
        platform=platform,
        model_file=model_file,
        max_batch_size=batch,
        inputs=inputs,
        outputs=tuple(outputs),
        dynamic_batching=batched,
        max_queue_delay_us=max_queue_delay_us,
        instance_kind=instance_kind,
        instances=instances,
        header=preprocessing_lines(model),
    )
