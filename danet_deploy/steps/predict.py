"""Predict: a model on the user's images and videos, written as palette label maps and overlays (and JSON)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from danet_deploy.errors import BadInputError
from danet_deploy.files import PathLike, all_or_nothing, atomic_path, check_outputs, same_file, write_json
from danet_deploy.predict.segmenter import Prediction, Segmenter, SegmenterOptions
from danet_deploy.predict.sources import Source, expand_sources
from danet_deploy.progress import SILENT, Progress
from danet_deploy.signals import terminate_as_interrupt

PREDICT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PredictOptions:
    """What predict writes besides the label map and overlay of each image.

    Attributes:
        segmenter: how the model runs (mode, window, overlay alpha, threads, checkpoint layout, memory force).
        video_labels: for a video, also write each frame's label map (`<name>.labels/000000.png`, ...).
        jpeg_quality: JPEG quality of the image overlays (1-95, Pillow's scale).
    """

    segmenter: SegmenterOptions = field(default_factory=SegmenterOptions)
    video_labels: bool = False
    jpeg_quality: int = 90

    def check(self) -> None:
        """One-line BadInputError for a value no run can use."""
        self.segmenter.check()
        if not 1 <= self.jpeg_quality <= 95:
            raise BadInputError(f"JPEG quality {self.jpeg_quality}: must be between 1 and 95")


@dataclass
class ItemRecord:
    """One source's result.

    Attributes:
        source: the input file.
        kind: "image" or "video".
        outputs: the files written for it.
        size: [H, W] of the image (of the frames, for a video).
        seconds: time its predictions took (a video: all frames).
        fractions: an image's pixel fraction per class name (classes present only).
        frames: a video's per-frame records ({"index", "seconds", "fractions"}).
        fps: a video's frame rate.
    """

    source: str
    kind: str
    outputs: list[str]
    size: list[int]
    seconds: float
    fractions: dict[str, float] = field(default_factory=dict)
    frames: list[dict[str, Any]] = field(default_factory=list)
    fps: float | None = None


@dataclass
class PredictResult:
    """What predict did: the backend it used, a record per source, and the files it wrote."""

    model: dict[str, Any]
    items: list[ItemRecord]
    seconds: float
    json_path: Path | None = None

    @property
    def outputs(self) -> list[Path]:
        return [Path(p) for item in self.items for p in item.outputs]

    @property
    def predictions(self) -> int:
        """Images and video frames predicted."""
        return sum(len(i.frames) if i.kind == "video" else 1 for i in self.items)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "schema_version": PREDICT_SCHEMA_VERSION,
            "model": self.model,
            "seconds": round(self.seconds, 4),
            "items": [{k: v for k, v in asdict(i).items() if v not in (None, [], {})} for i in self.items],
        }


def present_fractions(prediction: Prediction) -> dict[str, float]:
    return {name: round(f, 6) for name, f in prediction.fractions.items() if f > 0}


def planned_outputs(source: Source, outdir: Path) -> list[Path]:
    if source.kind == "video":
        return [outdir / f"{source.name}.overlay.mp4"]
    return [outdir / f"{source.name}.png", outdir / f"{source.name}.overlay.jpg"]


def _check_outputs(model: Path, sources: list[Source], outdir: Path, json_path: PathLike | None) -> None:
    """The output folder can be written and no output is an input, before any work."""
    from danet_deploy.engine.sidecar import sidecar_path

    if outdir.exists() and not outdir.is_dir():
        raise BadInputError(f"{outdir}: is not a folder; give a folder for the outputs")
    inputs: list[PathLike] = [model, sidecar_path(model), *(s.path for s in sources)]
    check_outputs([planned_outputs(sources[0], outdir)[0], json_path], inputs)
    resolved = {s.path.resolve() for s in sources} | {model.resolve()}
    for source in sources:
        for out in planned_outputs(source, outdir):
            if out.resolve() in resolved or any(same_file(out, s.path) for s in sources if s.path.name == out.name):
                raise BadInputError(f"{out}: is also an input of this command; write the outputs to another folder")


def _write_image_outputs(prediction: Prediction, outputs: list[Path], quality: int) -> None:
    with all_or_nothing():  # the label map and the overlay appear together
        with atomic_path(outputs[0]) as tmp:
            prediction.label_image().save(tmp, format="PNG")
        with atomic_path(outputs[1]) as tmp:
            Image.fromarray(prediction.overlay).save(tmp, format="JPEG", quality=quality)


class _Rate:
    """Throughput for the progress line: predictions per second so far."""

    def __init__(self, advance: Callable[..., None]) -> None:
        self.advance, self.count, self.started = advance, 0, time.perf_counter()

    def step(self) -> None:
        self.count += 1
        rate = self.count / max(time.perf_counter() - self.started, 1e-9)
        self.advance(description=f"predict ({rate:.2f} images/s)")


def predict(
    model: PathLike,
    sources: Sequence[str | Path],
    outdir: PathLike,
    options: PredictOptions = PredictOptions(),
    *,
    json_path: PathLike | None = None,
    progress: Progress = SILENT,
) -> PredictResult:
    """Segment images and videos with a checkpoint, ONNX model or TensorRT engine. Per image `OUTDIR/<name>.png`
    (class ids, the model's palette) and `OUTDIR/<name>.overlay.jpg`; per video `OUTDIR/<name>.overlay.mp4` (and
    with `video_labels` a label map per frame); `json_path`: per image or frame the class fractions and time."""
    from danet_deploy.predict.video import VideoReader

    options.check()
    model, outdir = Path(model), Path(outdir)
    items = expand_sources(list(sources))
    # OUTDIR inside an input folder: an earlier run's outputs there are not inputs of this one.
    inside = outdir.resolve()
    items = [s for s in items if inside not in s.path.resolve().parents] or items
    _check_outputs(model, items, outdir, json_path)
    total = 0
    for source in items:  # every video's header is read before the model loads: a bad one fails first
        if source.kind == "video":
            with VideoReader(source.path) as reader:
                total += reader.info.frames or 0
        else:
            total += 1
    started = time.perf_counter()
    records: list[ItemRecord] = []
    with terminate_as_interrupt(), Segmenter.load(model, options.segmenter) as segmenter:
        progress.note(f"{segmenter.runner.name}: {segmenter.runner.precision_label} on {segmenter.runner.device}")
        with progress.task("predict", total=total) as advance:
            rate = _Rate(advance)
            for source in items:
                if source.kind == "video":
                    records.append(_predict_video(segmenter, source, outdir, options, rate))
                else:
                    records.append(_predict_image(segmenter, source, outdir, options, rate))
        result = PredictResult(segmenter.describe(), records, time.perf_counter() - started)
    if json_path is not None:
        result.json_path = write_json(json_path, result.to_dict())
    return result


def _predict_image(
    segmenter: Segmenter, source: Source, outdir: Path, options: PredictOptions, rate: _Rate
) -> ItemRecord:
    prediction = segmenter.predict(source.path)
    outputs = planned_outputs(source, outdir)
    _write_image_outputs(prediction, outputs, options.jpeg_quality)
    rate.step()
    return ItemRecord(
        str(source.path),
        "image",
        [str(p) for p in outputs],
        list(prediction.labels.shape),
        round(prediction.seconds, 4),
        present_fractions(prediction),
    )


def _predict_video(
    segmenter: Segmenter, source: Source, outdir: Path, options: PredictOptions, rate: _Rate
) -> ItemRecord:
    from danet_deploy.predict.video import VideoReader, video_writer

    outputs = planned_outputs(source, outdir)
    labels_dir = outdir / f"{source.name}.labels"
    frames: list[dict[str, Any]] = []
    seconds = 0.0
    with VideoReader(source.path) as reader, all_or_nothing(), video_writer(outputs[0], reader.info) as writer:
        for index, frame in enumerate(reader.frames()):
            if frame.shape[:2] != (reader.info.height, reader.info.width):
                raise BadInputError(f"{source.path}: frame {index} changes the video's size; not supported")
            prediction = segmenter.predict(frame)
            writer.write(prediction.overlay)
            if options.video_labels:
                with atomic_path(labels_dir / f"{index:06d}.png") as tmp:
                    prediction.label_image().save(tmp, format="PNG")
            seconds += prediction.seconds
            frames.append(
                {"index": index, "seconds": round(prediction.seconds, 4), "fractions": present_fractions(prediction)}
            )
            rate.step()
        info = reader.info
    written = [str(outputs[0])] + ([str(labels_dir)] if options.video_labels else [])
    return ItemRecord(
        str(source.path),
        "video",
        written,
        [info.height, info.width],
        round(seconds, 4),
        frames=frames,
        fps=float(info.rate),
    )
