"""Video in and out, one frame at a time (never the whole video in memory), through PyAV.

PyAV (`av` on PyPI) binds FFmpeg's libraries and ships them inside its wheels (H.264 through libx264 included), so
no system FFmpeg is needed; it is maintained with FFmpeg's releases and decodes every container FFmpeg does.
Output: H.264 in MP4 at the input's frame rate and size; yuv420p (what every player shows) for even sizes, yuv444p
for odd ones (4:2:0 needs even sides and the size must not change).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from danet_deploy.errors import BadInputError
from danet_deploy.files import atomic_path

CODEC = "libx264"


@dataclass(frozen=True)
class VideoInfo:
    """What a video stream says about itself.

    Attributes:
        width, height: frame size in pixels.
        rate: frames per second (the stream's average rate).
        frames: the frame count the container records, or an estimate from its duration; None when unknown.
    """

    width: int
    height: int
    rate: Fraction
    frames: int | None


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:100] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class VideoReader:
    """Decodes the first video stream of a file frame by frame as H x W x 3 uint8 RGB; one-line BadInputError for
    a file that is not a readable video, has no video stream or a corrupt frame."""

    def __init__(self, path: str | Path):
        import av

        self.path = Path(path)
        try:
            self._container: Any = av.open(str(self.path))
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise BadInputError(f"{self.path}: not a readable video ({_reason(exc)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise BadInputError(f"{self.path}: has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        # A damaged frame is an error (FFmpeg's decoders otherwise conceal it or drop the frame without a word,
        # and the overlay video would silently differ from the input).
        self._stream.codec_context.options = {"err_detect": "explode"}
        ctx = self._stream.codec_context
        rate = self._stream.average_rate or self._stream.guessed_rate or Fraction(25)
        frames = int(self._stream.frames) or None
        if frames is None and self._stream.duration and self._stream.time_base:
            frames = max(1, round(float(self._stream.duration * self._stream.time_base * rate)))
        self.info = VideoInfo(int(ctx.width), int(ctx.height), Fraction(rate), frames)
        if self.info.width <= 0 or self.info.height <= 0:
            self.close()
            raise BadInputError(f"{self.path}: the video stream has no frame size")

    def frames(self) -> Iterator[np.ndarray]:
        """Each frame as RGB; BadInputError naming the frame when one cannot be decoded, and when there is none."""
        import av

        index = 0
        try:
            for frame in self._container.decode(self._stream):
                yield frame.to_ndarray(format="rgb24")
                index += 1
        except (av.FFmpegError, ValueError) as exc:
            raise BadInputError(f"{self.path}: frame {index} cannot be decoded ({_reason(exc)})") from None
        if index == 0:
            raise BadInputError(f"{self.path}: the video has no frames")

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoWriter:
    """Encodes RGB frames of one size to H.264; frames are timestamped at the given rate."""

    def __init__(self, container: Any, info: VideoInfo):
        self._container = container
        even = info.width % 2 == 0 and info.height % 2 == 0
        stream = container.add_stream(CODEC, rate=info.rate)
        stream.width, stream.height = info.width, info.height
        stream.pix_fmt = "yuv420p" if even else "yuv444p"
        self._stream = stream
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        import av

        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames += 1

    def finish(self) -> None:
        for packet in self._stream.encode():  # flush the encoder's delayed frames
            self._container.mux(packet)


@contextlib.contextmanager
def video_writer(path: str | Path, info: VideoInfo) -> Iterator[VideoWriter]:
    """A `VideoWriter` into a temporary file that becomes `path` only when the block succeeds (`files.atomic_path`):
    an interrupted or failed run leaves no partial video."""
    import av

    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4")
        try:
            writer = VideoWriter(container, info)
            yield writer
            writer.finish()
        finally:
            container.close()
