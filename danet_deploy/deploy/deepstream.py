"""A DeepStream Gst-nvinfer configuration for semantic segmentation (network-type 2) and a gst-launch-1.0 pipeline.

nvinfer preprocesses each frame as y = net-scale-factor * (x - offsets[c]), x the RGB pixel 0-255: one scale for
all channels. DANet's normalization ((x / 255 - mean[c]) / std[c]) has a scale per channel, so for a model that
takes normalized input the config can only approximate it (the mean std); a model exported with `rgb255_input`
(float RGB 0-255 in, normalized inside the graph) is fed exactly: net-scale-factor 1, offsets 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from danet_deploy.deploy.model_io import ModelIO
from danet_deploy.errors import BadInputError

NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}


@dataclass(frozen=True)
class Preprocessing:
    """nvinfer's net-scale-factor and offsets for a model, and whether they reproduce its normalization exactly.

    Attributes:
        net_scale_factor: the one scale of all channels.
        offsets: per-channel value subtracted from the 0-255 pixel first.
        exact: True when y equals the model's own preprocessing; False for the mean-std approximation.
        max_scale_error: the largest relative error of the scale over the channels (0 when exact).
    """

    net_scale_factor: float
    offsets: tuple[float, float, float]
    exact: bool
    max_scale_error: float


def nvinfer_preprocessing(model: ModelIO) -> Preprocessing:
    """Exact for an RGB 0-255 input; for a normalized input, offsets 255 * mean and the scale 1 / (255 * mean std)."""
    if model.spec.uint8:
        raise BadInputError(
            f"{model.path}: takes uint8 NHWC input, which nvinfer does not feed (it feeds float NCHW); export the "
            "model with float RGB 0-255 input (normalized inside) instead"
        )
    if not model.spec.normalized:
        return Preprocessing(1.0, (0.0, 0.0, 0.0), True, 0.0)
    config = model.config
    std = sum(config.std) / 3
    scale = 1.0 / (255.0 * std)
    error = max(abs(s / std - 1.0) for s in config.std)
    offsets = (255.0 * config.mean[0], 255.0 * config.mean[1], 255.0 * config.mean[2])
    return Preprocessing(scale, offsets, False, error)


def apply_nvinfer_preprocessing(frame: object, pre: Preprocessing) -> object:
    """y = net-scale-factor * (x - offsets[c]) on an H x W x 3 uint8 RGB frame -> 1 x 3 x H x W float32, as
    nvinfer computes it on the GPU (for checks on the CPU)."""
    x = np.asarray(frame, np.float32).transpose(2, 0, 1)[None]
    offsets = np.asarray(pre.offsets, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray(np.float32(pre.net_scale_factor) * (x - offsets))


@dataclass(frozen=True)
class NvinferConfig:
    """The [property] group of a Gst-nvinfer config file.

    Attributes:
        properties: (key, value) in file order.
        notes: comment lines at the top (the approximation, when used).
    """

    properties: tuple[tuple[str, str], ...]
    notes: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [f"# {note}" for note in self.notes] + ["[property]"]
        lines += [f"{key}={value}" for key, value in self.properties]
        return "\n".join(lines) + "\n"

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.properties if k == key), None)


def _number(value: float) -> str:
    return f"{value:.9g}"


def nvinfer_config(
    model: ModelIO, model_file: str, labels_file: str, *, threshold: float, batch_size: int, gpu_id: int
) -> NvinferConfig:
    """The config of `model` copied as `model_file` beside it (see the module doc)."""
    pre = nvinfer_preprocessing(model)
    h, w = model.spec.size_or(model.config.input_size)
    logits = next((t for t in model.outputs if t.name != "labels"), model.outputs[0])
    props: list[tuple[str, str]] = [
        ("gpu-id", str(gpu_id)),
        ("net-scale-factor", _number(pre.net_scale_factor)),
        ("offsets", ";".join(_number(o) for o in pre.offsets)),
        ("model-color-format", "0"),  # RGB
        ("onnx-file" if model.kind == "onnx" else "model-engine-file", model_file),
        ("infer-dims", f"3;{h};{w}"),
        ("network-input-order", "0"),  # NCHW
        ("batch-size", str(batch_size)),
        ("network-mode", str(NETWORK_MODES.get(model.precision, 0))),
        ("network-type", "2"),  # semantic segmentation
        ("num-detected-classes", str(model.config.num_classes)),
        ("output-blob-names", logits.name),
        ("segmentation-threshold", _number(threshold)),
        ("labelfile-path", labels_file),
        ("maintain-aspect-ratio", "0"),  # frames are resized to the model size, as danet-deploy's own preprocessing
        ("gie-unique-id", "1"),
        ("interval", "0"),
    ]
    dla = (model.sidecar.build_options or {}).get("dla_core") if model.sidecar is not None else None
    if dla is not None:
        props += [("enable-dla", "1"), ("use-dla-core", str(int(dla)))]
    config = model.config
    notes = [f"danet-deploy: {config.arch} ({config.variant}), {config.num_classes} classes, {model.precision}"]
    if pre.exact:
        notes.append("preprocessing exact: the model takes RGB 0-255 and normalizes inside")
    else:
        notes.append(
            "preprocessing APPROXIMATE: nvinfer has one scale for all channels; the per-channel std "
            f"{tuple(config.std)} is replaced by its mean (scale error up to {pre.max_scale_error:.1%}). Export "
            "with float RGB 0-255 input (danet-deploy export --rgb255-input) for an exact config."
        )
    return NvinferConfig(tuple(props), tuple(notes))


def gst_launch_example(config_file: str, size: tuple[int, int], batch_size: int) -> str:
    """A gst-launch-1.0 pipeline: an H.264 MP4 decoded on the GPU, segmented by nvinfer, coloured by
    nvsegvisual and written to out.mp4 (headless; swap the tail for nveglglessink to show it)."""
    h, w = size
    return (
        "#!/bin/sh\n"
        "# Segment a video with DeepStream: ./deepstream_pipeline.sh input.mp4 [output.mp4]\n"
        "# (a display instead of a file: replace everything after nvsegvisual with '! nveglglessink')\n"
        'set -e\ncd "$(dirname "$0")"\nIN=$(realpath "$1")\nOUT=${2:-out.mp4}\n'
        'gst-launch-1.0 -e filesrc location="$IN" ! qtdemux ! h264parse ! nvv4l2decoder ! m.sink_0 \\\n'
        f"  nvstreammux name=m batch-size={batch_size} width={w} height={h} ! \\\n"
        f"  nvinfer config-file-path={config_file} ! \\\n"
        f"  nvsegvisual width={w} height={h} ! nvvideoconvert ! 'video/x-raw(memory:NVMM),format=I420' ! \\\n"
        '  nvv4l2h264enc ! h264parse ! qtmux ! filesink location="$OUT"\n'
    )
