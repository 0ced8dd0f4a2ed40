"""predict and the Python segmenter: labels as verify computes them, every image mode and size, video in bounded
memory, palette-coloured outputs, and one-line errors with nothing half-written."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from danet_deploy.data.bundled import DEMO_CHECKPOINT, DEMO_DATA
from danet_deploy.data.datasets import open_dataset
from danet_deploy.data.preprocess import resize_image
from danet_deploy.data.synthetic import generate_scene
from danet_deploy.errors import BadInputError
from danet_deploy.evaluate.protocols import EvalProtocol, resize_logits, sliding_window
from danet_deploy.evaluate.protocols import predict as protocol_predict
from danet_deploy.files import removed_on_failure
from danet_deploy.onnx_export import ExportOptions, export_onnx
from danet_deploy.predict import Segmenter, SegmenterOptions
from danet_deploy.predict.overlay import blend, legend_box, overlay_image, palette_array
from danet_deploy.predict.sources import expand_sources
from danet_deploy.predict.video import VideoInfo, VideoReader, video_writer
from danet_deploy.progress import Progress
from danet_deploy.runners.onnxruntime import OnnxRuntimeRunner
from danet_deploy.steps.predict import PredictOptions, predict
from danet_deploy.versions import MemoryBound

from .conftest import TINY
from .test_cli import assert_one_line_error, run

ROOT = Path(__file__).resolve().parent.parent


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    return generate_scene(seed, h, w).image


def verify_labels(runner: OnnxRuntimeRunner, image: np.ndarray, label_shape: tuple[int, int]) -> np.ndarray:
    """What verify scores for one image (evaluate.verify._evaluate): the image resized to the backend's static size,
    the protocol's logits, resized to the label's size, argmax."""
    size = runner.input_spec.static_size
    resized = resize_image(image, size) if size else image
    logits = protocol_predict(runner.infer, resized, EvalProtocol(), runner.config.align_corners)
    return resize_logits(logits, label_shape, runner.config.align_corners).argmax(1)[0]


# --- the segmenter ---------------------------------------------------------------------------------------------


def test_labels_equal_verify_predictions_for_onnx_runtime(fp32_onnx: Path, city_data: Path) -> None:
    dataset = open_dataset(city_data)
    with Segmenter.load(fp32_onnx) as segmenter, OnnxRuntimeRunner(fp32_onnx, bounded=True) as reference:
        for sample in dataset:
            got = segmenter.predict(sample.image)
            assert got.labels.shape == sample.image.shape[:2] and got.labels.dtype == np.uint8
            np.testing.assert_array_equal(got.labels, verify_labels(reference, sample.image, sample.label.shape))


@pytest.mark.slow
def test_labels_equal_verify_on_the_bundled_model_and_scenes(tmp_path: Path) -> None:
    from danet_deploy.checkpoints import load_checkpoint
    from danet_deploy.evaluate.metrics import confusion_matrix, mean_iou
    from danet_deploy.evaluate.verify import verify

    loaded = load_checkpoint(DEMO_CHECKPOINT)
    onnx_path = tmp_path / "demo.onnx"
    export_onnx(loaded.model, loaded.config, onnx_path, ExportOptions(input_size=(128, 256)), scene(128, 256))
    dataset = open_dataset(DEMO_DATA).head(8)
    runner = OnnxRuntimeRunner(onnx_path, bounded=True)
    report = verify(dataset, [runner], loaded.config)
    confusion = np.zeros((19, 19), np.int64)
    with Segmenter.load(onnx_path) as segmenter, runner:
        for sample in dataset:
            labels = segmenter.predict(sample.image).labels
            np.testing.assert_array_equal(labels, verify_labels(runner, sample.image, sample.label.shape))
            confusion += confusion_matrix(sample.label, labels, 19, 255)
    assert report.backends[0].miou == pytest.approx(round(mean_iou(confusion) * 100, 4), abs=1e-4)
    assert report.backends[0].miou > 50  # the trained demo model sees the scenes


def test_path_pil_and_array_give_the_same_result_and_logits_on_request(fp32_onnx: Path, tmp_path: Path) -> None:
    image = scene(90, 150)
    path = tmp_path / "street.png"
    Image.fromarray(image).save(path)
    with Segmenter.load(fp32_onnx) as segmenter:
        from_array = segmenter.predict(image, logits=True)
        from_path = segmenter.predict(path)
        with Image.open(path) as pil:
            from_pil = segmenter.predict(pil)
    np.testing.assert_array_equal(from_array.labels, from_path.labels)
    np.testing.assert_array_equal(from_array.labels, from_pil.labels)
    assert from_path.logits is None and from_array.logits is not None
    assert from_array.logits.shape == (1, 19, 90, 150)
    np.testing.assert_array_equal(from_array.logits[0].argmax(0), from_array.labels)
    fractions = from_array.fractions
    assert set(fractions) == set(TINY.class_names) and sum(fractions.values()) == pytest.approx(1.0)
    assert from_array.present[0] == max(fractions, key=lambda name: fractions[name])
    assert from_array.overlay.shape == (90, 150, 3) and from_array.seconds > 0


@pytest.mark.slow  # exports a model of its own
def test_checkpoint_and_dynamic_onnx_run_at_the_image_size(tiny_model: object, tiny_ckpt: Path, tmp_path: Path) -> None:
    dynamic = tmp_path / "dyn.onnx"
    export_onnx(tiny_model, TINY, dynamic, ExportOptions(dynamic=True), scene(64, 128))  # type: ignore[arg-type]
    image = scene(72, 104, seed=3)
    with Segmenter.load(tiny_ckpt) as torch_seg, Segmenter.load(dynamic) as onnx_seg:
        assert torch_seg.run_size is None and onnx_seg.run_size is None
        a, b = torch_seg.predict(image, logits=True), onnx_seg.predict(image, logits=True)
    assert a.logits is not None and b.logits is not None and a.logits.shape == (1, 19, 72, 104)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-3)
    with OnnxRuntimeRunner(dynamic) as runner:
        np.testing.assert_array_equal(b.labels, runner.infer(image)[0].argmax(0))


@pytest.mark.slow  # exports a model of its own
def test_slide_mode_is_verify_sliding_window(tiny_model: object, tmp_path: Path) -> None:
    square = tmp_path / "sq.onnx"
    export_onnx(tiny_model, TINY, square, ExportOptions(input_size=(64, 64)), scene(64, 64))  # type: ignore[arg-type]
    image = scene(100, 170, seed=5)
    with Segmenter.load(square, SegmenterOptions(mode="slide", stride=40)) as segmenter:
        assert segmenter.mode == "slide 64x64/40x40"
        got = segmenter.predict(image, logits=True)
        expected = protocol_predict(segmenter.runner.infer, image, EvalProtocol(crop=64, stride=40), False)
    np.testing.assert_array_equal(got.logits, expected)
    with pytest.raises(BadInputError, match="fixed at 64x64; its windows are that size"):
        Segmenter.load(square, SegmenterOptions(mode="slide", crop=32))


def test_slide_mode_on_a_non_square_static_model_and_options_are_checked(fp32_onnx: Path, tmp_path: Path) -> None:
    image = scene(100, 300, seed=2)
    with Segmenter.load(fp32_onnx, SegmenterOptions(mode="slide")) as segmenter:  # windows of 64x128
        assert segmenter.mode == "slide 64x128/42x85"
        got = segmenter.predict(image, logits=True)
        expected = sliding_window(segmenter.runner.infer, image, (64, 128), (42, 85))
        small = segmenter.predict(scene(30, 50)).labels  # padded with black, as verify pads
    np.testing.assert_array_equal(got.logits, expected)
    assert got.labels.shape == (100, 300) and small.shape == (30, 50)
    with pytest.raises(BadInputError, match="window stride 100"):
        Segmenter.load(fp32_onnx, SegmenterOptions(mode="slide", stride=100))
    for options, needle in [
        (SegmenterOptions(mode="tiles"), "mode 'tiles'"),
        (SegmenterOptions(crop=64), "sliding-window mode only"),
        (SegmenterOptions(mode="slide", crop=64, stride=65), "stride 65"),
        (SegmenterOptions(alpha=1.5), "alpha"),
        (SegmenterOptions(threads=0), "threads"),
    ]:
        with pytest.raises(BadInputError, match=re.escape(needle)):
            options.check()
    import onnx

    batch_two = onnx.load(str(fp32_onnx))
    batch_two.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(batch_two, str(tmp_path / "b2.onnx"))
    with pytest.raises(BadInputError, match="fixed batch of 2"):
        Segmenter.load(tmp_path / "b2.onnx")
    with Segmenter.load(fp32_onnx) as segmenter:
        with pytest.raises(BadInputError, match="H x W x 3 uint8"):
            segmenter.predict(np.zeros((10, 10), np.uint8))
        with pytest.raises(BadInputError, match="H x W x 3 uint8"):
            segmenter.predict(np.zeros((10, 10, 3), np.float32))


def test_the_readme_snippet_runs_as_written(fp32_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Python: the segmenter") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.S)
    assert snippet is not None and "Segmenter.load" in snippet.group(1)
    shutil.copy(fp32_onnx, tmp_path / "danet.onnx")
    Image.fromarray(scene(80, 120)).save(tmp_path / "street.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet.group(1), "README.md", "exec"), {})
    saved = Image.open(tmp_path / "street.labels.png")
    assert saved.mode == "P" and saved.size == (120, 80)


# --- overlay and label maps ------------------------------------------------------------------------------------


def test_overlay_colours_are_the_palette() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 19, (60, 200)).astype(np.uint8)
    image = rng.integers(0, 256, (60, 200, 3), dtype=np.uint8)
    palette = palette_array(TINY)
    np.testing.assert_array_equal(blend(image, labels, TINY, alpha=1.0), palette[labels])
    np.testing.assert_array_equal(blend(image, labels, TINY, alpha=0.0), image)
    half = blend(image, labels, TINY, alpha=0.5)
    np.testing.assert_array_equal(half, np.rint((image.astype(np.float64) + palette[labels]) / 2).astype(np.uint8))
    with_legend = overlay_image(image, labels, TINY, alpha=1.0)
    x0, y0, x1, y1 = legend_box(image.shape[:2], 19)
    outside = np.ones(labels.shape, bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(with_legend[outside], palette[labels][outside])
    # The legend shows each present class's swatch in its colour.
    swatches = {tuple(c) for c in with_legend[y0:y1, x0:x1].reshape(-1, 3)}
    assert {tuple(int(v) for v in palette[c]) for c in np.unique(labels)[:2]} <= swatches


def test_image_outputs_are_palette_pngs_and_overlays(fp32_onnx: Path, tmp_path: Path) -> None:
    image = scene(70, 90)
    src = tmp_path / "in" / "street.png"
    src.parent.mkdir()
    Image.fromarray(image).save(src)
    result = predict(fp32_onnx, [src], tmp_path / "out", PredictOptions())
    label_png, overlay_jpg = tmp_path / "out" / "street.png", tmp_path / "out" / "street.overlay.jpg"
    assert result.outputs == [label_png, overlay_jpg]
    with Image.open(label_png) as saved:
        assert saved.mode == "P" and saved.size == (90, 70)
        colours = np.asarray(saved.getpalette()[: 3 * 19], np.uint8).reshape(19, 3)
        ids = np.asarray(saved)
    np.testing.assert_array_equal(colours, palette_array(TINY))
    with Segmenter.load(fp32_onnx) as segmenter:
        expected = segmenter.predict(image)
    np.testing.assert_array_equal(ids, expected.labels)
    overlay = np.asarray(Image.open(overlay_jpg))
    assert overlay.shape == (70, 90, 3)
    assert np.abs(overlay.astype(int) - expected.overlay.astype(int)).mean() < 8  # JPEG of the same overlay


# --- sources, sizes and modes ----------------------------------------------------------------------------------


def _images_of_every_kind(folder: Path) -> dict[str, tuple[int, int]]:
    """Images of several sizes and Pillow modes; name -> (H, W)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = scene(96, 160)
    Image.fromarray(base).save(folder / "rgb.png")
    Image.fromarray(resize_image(base, (50, 70))).convert("L").save(folder / "gray.jpg")
    Image.fromarray(resize_image(base, (130, 90))).convert("RGBA").save(folder / "alpha.png")
    Image.fromarray(resize_image(base, (40, 200))).convert("P").save(folder / "palette.gif")
    sixteen = (np.asarray(Image.fromarray(base).convert("L"), np.uint16) * 257)[:33, :47]
    Image.fromarray(sixteen).save(folder / "deep.png")
    (folder / "sub").mkdir(exist_ok=True)
    Image.fromarray(base[:64, :64]).save(folder / "sub" / "crop.bmp")
    return {
        "rgb": (96, 160),
        "gray": (50, 70),
        "alpha": (130, 90),
        "palette": (40, 200),
        "deep": (33, 47),
        "sub/crop": (64, 64),
    }


def test_images_of_several_sizes_and_modes_in_one_call(fp32_onnx: Path, tmp_path: Path) -> None:
    sizes = _images_of_every_kind(tmp_path / "imgs")
    out = tmp_path / "out"
    result = predict(fp32_onnx, [tmp_path / "imgs"], out, json_path=tmp_path / "p.json")
    assert len(result.items) == len(sizes)
    for name, (h, w) in sizes.items():
        with Image.open(out / f"{name}.png") as labels:
            assert labels.mode == "P" and labels.size == (w, h), name
        with Image.open(out / f"{name}.overlay.jpg") as overlay:
            assert overlay.size == (w, h) and overlay.mode == "RGB"
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["model"]["backend"] == "onnxruntime:tiny.onnx" and data["model"]["run_size"] == [64, 128]
    again = predict(fp32_onnx, [tmp_path / "imgs"], tmp_path / "imgs" / "masks")  # OUTDIR inside the input folder
    assert len(again.items) == len(sizes)
    assert len(predict(fp32_onnx, [tmp_path / "imgs"], tmp_path / "imgs" / "masks").items) == len(sizes)
    for item in data["items"]:
        assert item["kind"] == "image" and item["seconds"] > 0
        assert sum(item["fractions"].values()) == pytest.approx(1.0, abs=1e-4)


def test_sources_expand_files_folders_and_globs(tmp_path: Path) -> None:
    _images_of_every_kind(tmp_path / "imgs")
    (tmp_path / "imgs" / "notes.txt").write_text("x")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    found = expand_sources([tmp_path / "imgs" / "rgb.png", str(tmp_path / "imgs" / "*.jpg"), clip])
    assert [(s.name, s.kind) for s in found] == [("rgb", "image"), ("gray", "image"), ("clip", "video")]
    assert [s.name for s in expand_sources([tmp_path / "imgs"])] == [
        "alpha",
        "deep",
        "gray",
        "palette",
        "rgb",
        "sub/crop",
    ]
    with pytest.raises(BadInputError, match="no such file or folder"):
        expand_sources([tmp_path / "missing.png"])
    with pytest.raises(BadInputError, match="matches no images"):
        expand_sources([str(tmp_path / "*.tif")])
    with pytest.raises(BadInputError, match="not an image or video"):
        expand_sources([tmp_path / "imgs" / "notes.txt"])
    with pytest.raises(BadInputError, match="same outputs"):
        expand_sources([tmp_path / "imgs" / "rgb.png", tmp_path / "imgs" / "sub" / ".." / "rgb.png"])


# --- video -----------------------------------------------------------------------------------------------------


def write_clip(path: Path, frames: int = 6, size: tuple[int, int] = (64, 96), rate: int = 12) -> list[np.ndarray]:
    images = [scene(*size, seed=i) for i in range(frames)]
    with video_writer(path, VideoInfo(size[1], size[0], Fraction(rate), frames)) as writer:
        for image in images:
            writer.write(image)
    return images


def test_video_written_by_pyav_reads_back_and_predicts_frame_by_frame(fp32_onnx: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=6, size=(64, 96), rate=12)
    with VideoReader(clip) as reader:
        assert (reader.info.width, reader.info.height, reader.info.rate, reader.info.frames) == (96, 64, 12, 6)
        assert sum(1 for _ in reader.frames()) == 6
    out = tmp_path / "out"
    result = predict(fp32_onnx, [clip], out, PredictOptions(video_labels=True), json_path=tmp_path / "v.json")
    with VideoReader(out / "clip.overlay.mp4") as overlay:
        assert (overlay.info.width, overlay.info.height, overlay.info.rate) == (96, 64, 12)
        frames = list(overlay.frames())
    assert len(frames) == 6 and frames[0].shape == (64, 96, 3)
    label_files = sorted((out / "clip.labels").iterdir())
    assert [p.name for p in label_files] == [f"{i:06d}.png" for i in range(6)]
    # Each frame's label map is the segmenter's prediction on the decoded frame.
    with VideoReader(clip) as reader, Segmenter.load(fp32_onnx) as segmenter:
        for frame, label_file in zip(reader.frames(), label_files):
            np.testing.assert_array_equal(np.asarray(Image.open(label_file)), segmenter.predict(frame).labels)
    data = json.loads((tmp_path / "v.json").read_text())
    (item,) = data["items"]
    assert item["kind"] == "video" and item["fps"] == 12 and len(item["frames"]) == 6
    assert [f["index"] for f in item["frames"]] == list(range(6)) and result.predictions == 6


def test_odd_sized_video_keeps_its_size(tmp_path: Path) -> None:
    clip = tmp_path / "odd.mp4"
    write_clip(clip, frames=2, size=(33, 51))
    with VideoReader(clip) as reader:
        assert (reader.info.height, reader.info.width) == (33, 51)
        assert [f.shape for f in reader.frames()] == [(33, 51, 3)] * 2


# --- bad inputs, interruption ----------------------------------------------------------------------------------


def test_unreadable_and_empty_videos_are_one_line_errors(fp32_onnx: Path, tmp_path: Path) -> None:
    import av

    not_video = tmp_path / "text.mp4"
    not_video.write_text("not a video")
    with pytest.raises(BadInputError, match=r"text\.mp4: not a readable video"):
        predict(fp32_onnx, [not_video], tmp_path / "out")
    empty = tmp_path / "empty.mp4"
    container = av.open(str(empty), "w")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height = 32, 32
    container.start_encoding()  # the header, no frame
    container.close()
    with pytest.raises(BadInputError, match=r"empty\.mp4: .*(no frames|not a readable|no video)"):
        predict(fp32_onnx, [empty], tmp_path / "out2")
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").rglob("*"))
    truncated = tmp_path / "cut.mp4"
    write_clip(tmp_path / "full.mp4", frames=4)
    truncated.write_bytes((tmp_path / "full.mp4").read_bytes()[:-600])
    with pytest.raises(BadInputError, match=r"cut\.mp4"):
        predict(fp32_onnx, [truncated], tmp_path / "out3")


def test_a_corrupt_frame_is_a_one_line_error(fp32_onnx: Path, tmp_path: Path) -> None:
    import av

    clip = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(clip), "w") as container:  # a valid container whose 5th and 6th frames' data are noise
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 64, "yuv420p"
        packets = []
        for i in range(10):
            packets += stream.encode(av.VideoFrame.from_ndarray(scene(64, 128, seed=i), format="rgb24"))
        packets += stream.encode()
        for index, packet in enumerate(packets):
            if index in (4, 5):
                data = bytearray(bytes(packet))
                data[12:] = rng.integers(0, 256, len(data) - 12, dtype=np.uint8).tobytes()
                damaged = av.Packet(bytes(data))
                damaged.pts, damaged.dts, damaged.time_base = packet.pts, packet.dts, packet.time_base
                damaged.stream = packet.stream
                packet = damaged
            container.mux(packet)
    with pytest.raises(BadInputError, match=r"clip\.mp4: frame \d+ cannot be decoded"):
        predict(fp32_onnx, [clip], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_corrupt_image_and_unwritable_outdir(fp32_onnx: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    _images_of_every_kind(folder)
    good = (folder / "rgb.png").read_bytes()
    (folder / "zz_cut.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    with pytest.raises(BadInputError, match=r"zz_cut\.png: not a readable image"):
        predict(fp32_onnx, [folder], out)
    as_file = tmp_path / "file"
    as_file.write_text("x")
    with pytest.raises(BadInputError, match="is not a folder"):
        predict(fp32_onnx, [folder / "rgb.png"], as_file)
    with pytest.raises(BadInputError, match="cannot"):
        predict(fp32_onnx, [folder / "rgb.png"], Path("/proc/danet-out"))
    with pytest.raises(BadInputError, match="also an input"):
        predict(fp32_onnx, [folder / "rgb.png"], folder, json_path=folder / "rgb.png")


class _InterruptAfter(Progress):
    def __init__(self, updates: int) -> None:
        self.left = updates

    def task(self, description: str, total: int | None = None):  # type: ignore[no-untyped-def,override]
        import contextlib

        @contextlib.contextmanager
        def cm():  # type: ignore[no-untyped-def]
            def update(*args: object, **kwargs: object) -> None:
                self.left -= 1
                if self.left == 0:
                    os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or a container stop would

            yield update

        return cm()


def test_sigterm_mid_run_leaves_no_file(fp32_onnx: Path, tmp_path: Path) -> None:
    _images_of_every_kind(tmp_path / "imgs")
    write_clip(tmp_path / "imgs" / "zclip.mp4", frames=4)
    out = tmp_path / "out"
    for updates in (2, 8):  # during the images, during the video
        with pytest.raises(KeyboardInterrupt), removed_on_failure():  # what every CLI command runs inside
            predict(fp32_onnx, [tmp_path / "imgs"], out, json_path=out / "p.json", progress=_InterruptAfter(updates))
        assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


@pytest.mark.slow
def test_cli_predict_and_its_errors(fp32_onnx: Path, tmp_path: Path) -> None:
    _images_of_every_kind(tmp_path / "imgs")
    write_clip(tmp_path / "clip.mp4", frames=3)
    out = tmp_path / "out"
    result = run(
        "predict", fp32_onnx, tmp_path / "imgs", tmp_path / "clip.mp4", "-o", out, "--json", tmp_path / "p.json"
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "9 prediction(s) from 7 source(s)" in result.stdout
    assert (out / "rgb.overlay.jpg").is_file() and (out / "clip.overlay.mp4").is_file()
    (tmp_path / "bad.mp4").write_text("x")
    assert_one_line_error(run("predict", fp32_onnx, tmp_path / "bad.mp4", "-o", tmp_path / "o2"), 2, "bad.mp4")
    assert_one_line_error(run("predict", fp32_onnx, tmp_path / "none.png", "-o", tmp_path / "o3"), 2, "none.png")
    assert_one_line_error(
        run("predict", fp32_onnx, tmp_path / "clip.mp4", "-o", tmp_path / "o4", "--mode", "tiles"), 2, "mode 'tiles'"
    )
    assert not any(p.exists() for p in (tmp_path / "o2", tmp_path / "o3", tmp_path / "o4"))


def test_image_sizes_beyond_the_memory_plan_stop_unless_forced(
    tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from danet_deploy import memory_plan

    image = scene(40, 56)
    with Segmenter.load(tiny_ckpt) as segmenter:  # a checkpoint runs at the image's own size
        monkeypatch.setattr(memory_plan, "memory_bound", lambda: MemoryBound(1 << 20, "test"))
        with pytest.raises(BadInputError, match=r"predict at 40x56 needs an estimated .* is available"):
            segmenter.predict(image)
    with Segmenter.load(tiny_ckpt, SegmenterOptions(force=True)) as segmenter:
        assert segmenter.predict(image).labels.shape == (40, 56)


def test_an_engine_needs_tensorrt_here(tmp_path: Path) -> None:
    from danet_deploy.artifact import InputSpec
    from danet_deploy.errors import EXIT_MISSING_DEPENDENCY, DeployError

    from .test_deploy import fake_engine

    engine = fake_engine(tmp_path, InputSpec(batch=1, height=64, width=128), None)
    with pytest.raises(DeployError) as caught:
        Segmenter.load(engine)
    assert caught.value.exit_code == EXIT_MISSING_DEPENDENCY


@pytest.mark.slow
def test_cli_sigterm_exits_130_and_leaves_nothing(fp32_onnx: Path, tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    write_clip(tmp_path / "long.mp4", frames=200, size=(64, 128))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "DANET_DEPLOY_DEBUG"}
    args = [sys.executable, "-m", "danet_deploy", "predict", str(fp32_onnx), str(tmp_path / "long.mp4"), "-o", str(out)]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(out.iterdir())) and time.monotonic() < deadline:  # the video's temporary file
        time.sleep(0.05)
    assert process.poll() is None, "finished before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert not out.exists() or not any(out.rglob("*"))


def test_a_dynamic_engine_runs_images_within_its_profile_at_their_size() -> None:
    """The sizing rule alone (TensorRT does not run here): inside the profile's min..max the image's own size,
    outside it the profile's optimum with the logits resized back."""
    from types import SimpleNamespace

    from danet_deploy.artifact import InputSpec
    from danet_deploy.runners.base import Runner

    class ProfiledBackend(Runner):
        kind = "tensorrt"

        def __init__(self) -> None:
            super().__init__("profiled", input_spec=InputSpec(batch=1), config=TINY)
            self.sidecar = SimpleNamespace(profiles=[{"image": [[1, 3, 32, 32], [1, 3, 64, 128], [1, 3, 128, 256]]}])
            self.shapes: list[tuple[int, ...]] = []

        @property
        def device(self) -> str:
            return "GPU: none"

        def infer_impl(self, feed: np.ndarray) -> np.ndarray:
            self.shapes.append(feed.shape)
            return np.zeros((1, 19, *feed.shape[2:]), np.float32)

    backend = ProfiledBackend()
    segmenter = Segmenter(backend)
    assert segmenter.predict(scene(48, 100)).labels.shape == (48, 100)
    assert segmenter.predict(scene(300, 400)).labels.shape == (300, 400)
    assert backend.shapes == [(1, 3, 48, 100), (1, 3, 64, 128)]
