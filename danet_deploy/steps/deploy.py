"""Deploy: package a model file for a serving runtime: a Triton model repository, a DeepStream nvinfer config."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from danet_deploy.deploy.deepstream import NvinferConfig
from danet_deploy.deploy.model_io import ModelIO
from danet_deploy.deploy.triton import TritonConfig
from danet_deploy.errors import BadInputError
from danet_deploy.files import PathLike, all_or_nothing, atomic_path, check_outputs, write_text

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}


@dataclass(frozen=True)
class TritonOptions:
    """How the Triton model is served.

    Attributes:
        name: the model's name (its folder in the repository); None: the model file's name without suffix.
        version: the version folder the model file goes in.
        argmax: the int32 `labels` output: None lists it when the model has one, True requires it, False leaves
            it out.
        max_batch_size: the batch limit when Triton batches (dynamic batch); None: an engine profile's max batch,
            else 8. A fixed-batch model is served with max_batch_size 0.
        max_queue_delay_us: how long the dynamic batcher waits to fill a batch, in microseconds.
        instances: model instances per device.
        device: "gpu" or "cpu" (ONNX only: an engine runs on the GPU).
    """

    name: str | None = None
    version: int = 1
    argmax: bool | None = None
    max_batch_size: int | None = None
    max_queue_delay_us: int = 100
    instances: int = 1
    device: str = "gpu"

    def check(self) -> None:
        """One-line BadInputError for a value Triton would refuse."""
        if self.name is not None and not NAME.match(self.name):
            raise BadInputError(f"model name {self.name!r}: use letters, digits, '_', '-' and '.'")
        if self.version < 1:
            raise BadInputError(f"model version {self.version}: must be at least 1")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise BadInputError(f"max batch size {self.max_batch_size}: must be at least 1")
        if self.max_queue_delay_us < 0:
            raise BadInputError(f"queue delay {self.max_queue_delay_us}: must not be negative")
        if self.instances < 1:
            raise BadInputError(f"instances {self.instances}: must be at least 1")
        if self.device not in INSTANCE_KINDS:
            raise BadInputError(f"device {self.device!r}: choose one of {', '.join(INSTANCE_KINDS)}")


@dataclass(frozen=True)
class DeepStreamOptions:
    """The nvinfer settings that are not the model's.

    Attributes:
        threshold: segmentation-threshold: a pixel's best class score must exceed it, else it gets no class.
        batch_size: frames per inference (a static-batch model's batch wins).
        gpu_id: the GPU nvinfer runs on.
    """

    threshold: float = 0.0
    batch_size: int = 1
    gpu_id: int = 0

    def check(self) -> None:
        """One-line BadInputError for a value nvinfer would refuse."""
        import math

        if not math.isfinite(self.threshold):
            raise BadInputError(f"segmentation threshold {self.threshold}: must be a number")
        if self.batch_size < 1:
            raise BadInputError(f"batch size {self.batch_size}: must be at least 1")
        if self.gpu_id < 0:
            raise BadInputError(f"GPU id {self.gpu_id}: must not be negative")


@dataclass
class DeployResult:
    """What a deploy step wrote.

    Attributes:
        folder: the model's folder (Triton: REPO/<name>; DeepStream: DIR).
        config_path: config.pbtxt or the nvinfer config.
        model_path: the copied model file.
        labels_path: labels.txt.
        files: every file written.
        notes: what the user should know (engine compatibility, an approximate preprocessing).
        config: the written configuration (deploy.triton.TritonConfig or deploy.deepstream.NvinferConfig).
    """

    folder: Path
    config_path: Path
    model_path: Path
    labels_path: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: TritonConfig | NvinferConfig | None = None


def _copy(source: Path, target: Path) -> Path:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def _labels_text(names: tuple[str, ...]) -> str:
    return "".join(f"{name}\n" for name in names)


def _engine_notes(model: ModelIO) -> list[str]:
    sidecar = model.sidecar
    if sidecar is None:
        return []
    return [
        f"the engine was built with TensorRT {sidecar.tensorrt_version} for {sidecar.gpu_name} (SM "
        f"{sidecar.compute_capability}): the serving machine needs the same TensorRT version and GPU "
        "(unless built version- or hardware-compatible)"
    ]


def deploy_triton(model: PathLike, repo: PathLike, options: TritonOptions = TritonOptions()) -> DeployResult:
    """A Triton model repository for an ONNX model or a TensorRT engine: REPO/<name>/config.pbtxt,
    REPO/<name>/<version>/model.onnx|model.plan (with an ONNX model's external-data files) and labels.txt."""
    from danet_deploy.deploy.model_io import read_model_io
    from danet_deploy.deploy.triton import triton_config
    from danet_deploy.engine.sidecar import sidecar_path

    options.check()
    io = read_model_io(model)
    name = options.name or re.sub(r"[^A-Za-z0-9_.-]", "_", io.path.stem)
    if options.argmax and io.output("labels") is None:
        raise BadInputError(f"{io.path}: has no 'labels' output; export it with argmax to serve labels")
    if io.kind == "engine" and options.device != "gpu":
        raise BadInputError(f"{io.path}: a TensorRT engine runs on the GPU only")
    if io.kind == "engine" and options.max_batch_size and io.max_batch and options.max_batch_size > io.max_batch:
        raise BadInputError(
            f"{io.path}: max batch size {options.max_batch_size} exceeds the engine profile's max batch {io.max_batch}"
        )
    config = triton_config(
        io,
        name,
        argmax=options.argmax,
        max_batch_size=options.max_batch_size,
        max_queue_delay_us=options.max_queue_delay_us,
        instances=options.instances,
        instance_kind=INSTANCE_KINDS[options.device],
    )
    folder = Path(repo) / name
    version = folder / str(options.version)
    result = DeployResult(folder, folder / "config.pbtxt", version / config.model_file, folder / "labels.txt")
    data = [version / p.name for p in io.external_data]
    inputs = [io.path, sidecar_path(io.path), *io.external_data]
    check_outputs([result.config_path, result.model_path, result.labels_path, *data], inputs)
    with all_or_nothing():
        write_text(result.config_path, config.text())
        write_text(result.labels_path, _labels_text(io.config.class_names))
        _copy(io.path, result.model_path)
        for source, target in zip(io.external_data, data):
            _copy(source, target)
    result.files = [result.config_path, result.labels_path, result.model_path, *data]
    result.notes = _engine_notes(io)
    result.config = config
    return result


DEEPSTREAM_CONFIG = "nvinfer_config.txt"
DEEPSTREAM_PIPELINE = "deepstream_pipeline.sh"


def deploy_deepstream(
    model: PathLike, outdir: PathLike, options: DeepStreamOptions = DeepStreamOptions()
) -> DeployResult:
    """A DeepStream folder for an ONNX model or a TensorRT engine: the model file, nvinfer_config.txt (network-type
    2), labels.txt and deepstream_pipeline.sh (gst-launch-1.0)."""
    from danet_deploy.deploy.deepstream import gst_launch_example, nvinfer_config
    from danet_deploy.deploy.model_io import read_model_io
    from danet_deploy.engine.sidecar import sidecar_path

    options.check()
    io = read_model_io(model)
    folder = Path(outdir)
    model_name = io.path.name
    batch = io.input.shape[0] or options.batch_size
    if io.max_batch is not None and batch > io.max_batch:
        raise BadInputError(f"{io.path}: batch size {batch} exceeds the model's max batch {io.max_batch}")
    config = nvinfer_config(
        io, model_name, "labels.txt", threshold=options.threshold, batch_size=batch, gpu_id=options.gpu_id
    )
    result = DeployResult(folder, folder / DEEPSTREAM_CONFIG, folder / model_name, folder / "labels.txt")
    pipeline = folder / DEEPSTREAM_PIPELINE
    data = [folder / p.name for p in io.external_data]
    inputs = [io.path, sidecar_path(io.path), *io.external_data]
    check_outputs([result.config_path, result.model_path, result.labels_path, pipeline, *data], inputs)
    size = io.spec.size_or(io.config.input_size)
    with all_or_nothing():
        write_text(result.config_path, config.text())
        # nvinfer reads labels separated by ';' on one line per output; segmentation uses one line of classes.
        write_text(result.labels_path, ";".join(io.config.class_names) + "\n")
        _copy(io.path, result.model_path)
        for source, target in zip(io.external_data, data):
            _copy(source, target)
        write_text(pipeline, gst_launch_example(DEEPSTREAM_CONFIG, size, batch))
    pipeline.chmod(0o755)
    result.files = [result.config_path, result.labels_path, result.model_path, pipeline, *data]
    result.notes = _engine_notes(io) + [n for n in config.notes if "APPROXIMATE" in n]
    result.config = config
    return result
