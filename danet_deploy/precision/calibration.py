"""Calibration images for INT8 (and the FP16 range check): selection, preprocessing, and a content-keyed cache.

Selection is deterministic: the candidate files are sorted, then visited in a seeded random order until
enough readable images are found; the chosen files are kept in sorted order. Preprocessing comes from the
model config in the ONNX metadata; the input size from the ONNX input when its dims are static.

The cache (`CalibrationCache`) stores the finished quantized ONNX bytes, keyed by everything that shapes
them (see `cache_key_material`). Storing activation ranges instead would not save the expensive step:
ModelOpt's `calibration_cache_path` only overrides scales after it has run its own calibration pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from PIL import Image, UnidentifiedImageError

from ..config import ModelConfig
from ..data.datasets import IMAGE_SUFFIXES, open_dataset, read_image
from ..data.preprocess import normalize, resize_image
from ..errors import BadInputError
from ..export.artifact import META_PRECISION, OnnxModel, onnxruntime_session
from ..files import sha256_file
from ..versions import package_version

log = logging.getLogger(__name__)

CACHE_ENV = "DANET_DEPLOY_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/danet-deploy/calib")
DEFAULT_COUNT = 500  # NVIDIA's guidance for TensorRT INT8 calibration
FEW_IMAGES = 300  # below this, warn (INT8 only)
CACHE_FORMAT = 1  # bump when what the cache stores changes meaning
# Packages whose version can change the cached bytes (decoding, calibration, Q/DQ placement).
KEY_PACKAGES = ("nvidia-modelopt", "onnxruntime", "onnx", "numpy", "pillow")

ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.UINT8: "uint8"}


class CalibrationWarning(UserWarning):
    """Something about the calibration data a user should know (skipped files, too few images)."""


@dataclass(frozen=True)
class InputSpec:
    """The ONNX model's image input: name, dtype, (H, W) and batch size (1 when dynamic)."""

    name: str
    dtype: str  # "float32" / "float16" (N x 3 x H x W, normalized) or "uint8" (N x H x W x 3 RGB)
    size: tuple[int, int]
    batch: int

    @property
    def uint8(self) -> bool:
        return self.dtype == "uint8"


@dataclass
class CalibrationInfo:
    """What went into a calibration: for records and provenance."""

    source: str
    images: int
    candidates: int  # image files found in the source (before sampling)
    seed: int
    input_size: list[int]
    skipped_non_image: int
    skipped_unreadable: int
    warnings: list[str] = field(default_factory=list)


def model_input_spec(onnx_path: str | os.PathLike[str], config: ModelConfig) -> InputSpec:
    """Static ONNX input dims win over `config.input_size`; dynamic dims fall back to it."""
    spec = OnnxModel.load(onnx_path, external_data=False).input_spec
    return InputSpec(spec.input_name, spec.dtype, spec.size_or(config.input_size), spec.batch or 1)


def _warn(message: str, collected: list[str]) -> None:
    collected.append(message)
    warnings.warn(message, CalibrationWarning, stacklevel=3)


def _readable(path: Path) -> bool:
    """A cheap header check; a file that passes but fails to decode later raises a one-line error then."""
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def _candidates(root: Path, split: str) -> tuple[list[Path], int]:
    """Sorted image files under `root` and how many other files were skipped (plain folders only)."""
    if not root.exists():
        raise BadInputError(f"{root}: no such calibration folder")
    if not root.is_dir():
        raise BadInputError(f"{root}: not a folder (expected a folder of images or a Cityscapes root)")
    if (root / "leftImg8bit").is_dir() or (root / "images").is_dir():
        dataset = open_dataset(root, split)
        return sorted(path for path, _ in dataset.items), 0
    files = [p for p in root.rglob("*") if p.is_file()]
    images = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
    return images, len(files) - len(images)


def _sample(candidates: list[Path], count: int, seed: int) -> tuple[list[Path], int]:
    """Visit the sorted candidates in a seeded random order; return `count` readable ones and the unreadable tally."""
    chosen: list[Path] = []
    unreadable = 0
    for index in np.random.default_rng(seed).permutation(len(candidates)):
        if len(chosen) == count:
            break
        path = candidates[int(index)]
        if _readable(path):
            chosen.append(path)
        else:
            unreadable += 1
    return sorted(chosen), unreadable


@dataclass
class CalibrationSet:
    """Chosen calibration images plus how to turn them into model input."""

    root: Path
    files: list[Path]
    input: InputSpec
    config: ModelConfig
    seed: int
    candidates: int  # image files found (before sampling)
    skipped_non_image: int = 0
    skipped_unreadable: int = 0
    warnings: list[str] = field(default_factory=list)
    _hashes: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def names(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self.files]

    @property
    def hashes(self) -> list[str]:
        """sha256 of each file's bytes (computed once: the cache key needs them)."""
        if self._hashes is None:
            self._hashes = [sha256_file(p) for p in self.files]
        return self._hashes

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> one model input sample (batch dim 1)."""
        image = resize_image(image, self.input.size)
        if self.input.uint8:
            return np.ascontiguousarray(image[None])
        return normalize(image, self.config).astype(self.input.dtype, copy=False)

    def samples(self) -> Iterator[np.ndarray]:
        """One preprocessed sample per image, decoded on demand."""
        for path in self.files:
            yield self.preprocess(read_image(path))

    def batches(self) -> Iterator[np.ndarray]:
        """Batches of the model's static batch size; an incomplete last batch is dropped."""
        pending: list[np.ndarray] = []
        for sample in self.samples():
            pending.append(sample)
            if len(pending) == self.input.batch:
                yield np.concatenate(pending)
                pending = []

    def array(self) -> np.ndarray:
        """All samples in one array (N x 3 x H x W float, or N x H x W x 3 uint8)."""
        return np.concatenate(list(self.samples()))

    def info(self) -> CalibrationInfo:
        return CalibrationInfo(
            source=str(self.root),
            images=len(self),
            candidates=self.candidates,
            seed=self.seed,
            input_size=list(self.input.size),
            skipped_non_image=self.skipped_non_image,
            skipped_unreadable=self.skipped_unreadable,
            warnings=list(self.warnings),
        )


def calibration_set(
    data_path: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    count: int | None = None,
    seed: int = 0,
    split: str = "train",
    min_recommended: int | None = FEW_IMAGES,
    default_count: int = DEFAULT_COUNT,
) -> CalibrationSet:
    """Choose calibration images for the model at `onnx_path`.

    `data_path`: a folder of images (searched recursively), an images/ [+ masks/] pair, or a Cityscapes root
    (`split`, default train: never calibrate on the images you evaluate on). `count` None takes up to
    `default_count` images (500, NVIDIA's guidance) or all there are if fewer; an explicit count must be met.
    `min_recommended`: warn below this many images (None: no warning, e.g. for the FP16 range check).
    """
    if count is not None and count < 1:
        raise BadInputError(f"calibration count must be at least 1, got {count}")
    config = OnnxModel.load(onnx_path, external_data=False).config
    spec = model_input_spec(onnx_path, config)
    root = Path(data_path)
    candidates, non_image = _candidates(root, split)
    notes: list[str] = []
    if non_image:
        _warn(f"{root}: skipped {non_image} non-image file(s) (suffixes {', '.join(IMAGE_SUFFIXES)})", notes)
    chosen, unreadable = _sample(candidates, count or default_count, seed)
    if unreadable:
        _warn(f"{root}: skipped {unreadable} unreadable image file(s)", notes)
    if not chosen:
        raise BadInputError(f"{root}: no readable calibration images ({non_image} non-image, {unreadable} unreadable)")
    if count is not None and len(chosen) < count:
        raise BadInputError(
            f"{root}: {len(chosen)} usable calibration images, {count} requested "
            f"({unreadable} unreadable, {non_image} non-image files skipped)"
        )
    if spec.batch > 1 and len(chosen) % spec.batch:
        dropped = len(chosen) % spec.batch
        _warn(f"{root}: the model's batch size is {spec.batch}; the last {dropped} image(s) are not used", notes)
        chosen = chosen[: len(chosen) - dropped]
    if min_recommended is not None and len(chosen) < min_recommended:
        _warn(
            f"{root}: {len(chosen)} calibration images; NVIDIA's guidance for INT8 calibration is about "
            f"{DEFAULT_COUNT} images representative of deployment",
            notes,
        )
    log.info("calibration: %d images from %s (seed %d)", len(chosen), root, seed)
    return CalibrationSet(
        root=root,
        files=chosen,
        input=spec,
        config=config,
        seed=seed,
        candidates=len(candidates),
        skipped_non_image=non_image,
        skipped_unreadable=unreadable,
        warnings=notes,
    )


def load_calibration_array(
    data_path: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    count: int | None = None,
    seed: int = 0,
    split: str = "train",
) -> np.ndarray:
    """N x 3 x H x W normalized float32 (N x H x W x 3 uint8 for a uint8-input model) calibration array."""
    return calibration_set(data_path, onnx_path, count, seed, split).array()


class CalibrationReader:
    """ONNX Runtime / ModelOpt calibration data reader that decodes images batch by batch.

    Only one batch is in memory at a time (500 images at 512x1024 would be 3 GiB as one array).
    Implements the reader protocol ModelOpt uses: `get_next`, `get_first`, `rewind`.
    """

    def __init__(self, calib: CalibrationSet):
        self.calib = calib
        self._first: dict[str, np.ndarray] | None = None
        self.rewind()

    def rewind(self) -> None:
        self._batches = self.calib.batches()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.calib.input.name: batch}

    def get_first(self) -> dict[str, np.ndarray]:
        if self._first is None:
            self._first = {self.calib.input.name: next(self.calib.batches())}
        return self._first

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


# cache ---------------------------------------------------------------------------------------------------


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The argument, else $DANET_DEPLOY_CACHE, else ~/.cache/danet-deploy/calib."""
    chosen = override or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser()


def key_tool_versions() -> dict[str, str | None]:
    from .. import __version__

    versions = {name: package_version(name) for name in KEY_PACKAGES}
    versions["onnxruntime"] = versions["onnxruntime"] or package_version("onnxruntime-gpu")
    versions["danet-deploy"] = __version__
    return versions


def cache_key_material(onnx_path: str | os.PathLike[str], calib: CalibrationSet, **settings: Any) -> dict[str, Any]:
    """Everything that shapes the cached result: model bytes, image bytes, settings, tool versions.

    Images enter by name (relative to the data folder, so moving the folder keeps the key) and content hash.
    """
    return {
        "format": CACHE_FORMAT,
        "onnx_sha256": sha256_file(onnx_path),
        "images": [[n, h] for n, h in zip(calib.names, calib.hashes)],
        "count": len(calib),
        "seed": calib.seed,
        "input": {"name": calib.input.name, "dtype": calib.input.dtype, "size": list(calib.input.size)},
        "preprocess": {"mean": list(calib.config.mean), "std": list(calib.config.std)},
        "settings": settings,
        "tools": key_tool_versions(),
    }


def cache_key(material: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class CalibrationCache:
    """`<dir>/<key>.onnx` holds a result, `<dir>/<key>.json` the key material (to see why a key differs)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.directory = cache_dir(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.onnx"

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # an unreadable cache entry is a miss, not a failure
            log.warning("calibration cache: cannot read %s (%s); recalibrating", path, exc)
            return None

    def put(self, key: str, data: bytes, material: dict[str, Any]) -> None:
        """Atomic write; a cache that cannot be written only costs the next run time, so it only warns."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for suffix, payload in ((".json", json.dumps(material, indent=1).encode()), (".onnx", data)):
                fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.directory)
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                os.replace(tmp, self.directory / f"{key}{suffix}")
        except OSError as exc:
            log.warning("calibration cache: cannot write to %s (%s)", self.directory, exc)


# intermediate tensors -------------------------------------------------------------------------------------

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every top-level tensor whose type ONNX shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference fails on some custom ops; fall back to what the file declares
        inferred = model
    graph = inferred.graph
    types = {}
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types.setdefault(init.name, init.data_type)
    return types


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Float node outputs of the top-level graph, in node order (tensors inside Scan bodies are not reachable)."""
    types = tensor_types(model)
    names = [o for n in model.graph.node if n.op_type != "Constant" for o in n.output if o]
    return [n for n in names if types.get(n) in FLOAT_TYPES]


class ActivationProbe:
    """An ONNX Runtime CPU session that also returns the given intermediate tensors.

    Memory: every probed tensor of one batch is alive at once (a few GiB for DANet-R101 at 512x1024).
    """

    def __init__(self, model: onnx.ModelProto, tensors: list[str], threads: int | None = None):
        probed = onnx.ModelProto()
        probed.CopyFrom(model)
        types = tensor_types(probed)
        present = {o.name for o in probed.graph.output}
        for name in tensors:
            if name not in present:
                probed.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
                present.add(name)
        self.tensors = list(tensors)
        self.session = onnxruntime_session(probed, threads)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.tensors, feed)
        return dict(zip(self.tensors, values))


# output artifacts (shared by the INT8 and FP16 stages) -----------------------------------------------------


def load_source(onnx_path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The FP32 model a precision stage starts from; one-line errors for missing, corrupt or foreign files."""
    path = Path(onnx_path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such ONNX file")
    _ = OnnxModel.load(path, external_data=False).config  # raises when unreadable or not exported by danet-deploy
    model = onnx.load(str(path))
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise BadInputError(f"{path}: already quantized (has Q/DQ nodes); start from the FP32 ONNX")
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        raise BadInputError(f"{path}: already has FP16 weights; start from the FP32 ONNX")
    return model


def finish_model(model: onnx.ModelProto, source: onnx.ModelProto, entry: dict[str, Any]) -> None:
    """Carry the source's danet-deploy metadata over (the tools drop it) and add the precision entry."""
    from ..export.artifact import write_metadata

    have = {p.key for p in model.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in have:
            model.metadata_props.add(key=prop.key, value=prop.value)
    write_metadata(model, {META_PRECISION: entry})
    model.producer_name = "danet-deploy"
    if source.doc_string:
        model.doc_string = source.doc_string


@dataclass
class Agreement:
    """A low-precision model against the FP32 one on some calibration images."""

    images: int
    label_agreement: float  # fraction of pixels with the same argmax label
    max_abs_diff: float  # over finite logits
    mean_abs_diff: float
    nonfinite: int  # NaN/Inf logits in the low-precision model


def cpu_session(model: Any, optimize: bool = True) -> Any:
    """An ONNX Runtime CPU session from a path, serialized bytes or ModelProto (a session passes through)."""
    if hasattr(model, "run"):
        return model
    return onnxruntime_session(model, optimize=optimize)


def first_batches(calib: CalibrationSet, images: int) -> Iterator[np.ndarray]:
    """The batches holding the first `images` calibration images (decoding no more than that)."""
    return itertools.islice(calib.batches(), -(-images // calib.input.batch))


def compare_models(reference: Any, candidate: Any, calib: CalibrationSet, images: int) -> Agreement:
    """Logits of two models (path, bytes, ModelProto or session each) on the first `images` calibration images."""
    sessions = [cpu_session(reference), cpu_session(candidate)]
    agree = pixels = values = nonfinite = count = 0
    max_abs = sum_abs = 0.0
    for batch in first_batches(calib, images):
        feed = {calib.input.name: batch}
        ref, got = (s.run([s.get_outputs()[0].name], feed)[0].astype(np.float64) for s in sessions)
        finite = np.isfinite(got)
        nonfinite += int(got.size - finite.sum())
        diff = np.abs(np.where(finite, got, ref) - ref)
        max_abs = max(max_abs, float(diff.max()))
        sum_abs += float(diff.sum())
        values += diff.size
        # Non-finite logits never win the argmax, so they count as disagreement unless all are non-finite.
        agree += int((np.where(finite, got, -np.inf).argmax(1) == ref.argmax(1)).sum())
        pixels += ref.shape[0] * int(np.prod(ref.shape[2:]))
        count += batch.shape[0]
    return Agreement(count, agree / max(pixels, 1), max_abs, sum_abs / max(values, 1), nonfinite)


def exact_names(names: list[str]) -> list[str]:
    """Node names as anchored regular expressions (ModelOpt's nodes_to_exclude are `re.match` patterns)."""
    return [f"^{re.escape(n)}$" for n in names]


# quiet third-party tools ------------------------------------------------------------------------------------


class _DropNoise(logging.Filter):
    """ModelOpt logs an ERROR when it finds no NVIDIA driver; calibrating on the CPU is what we asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to get GPU count" not in record.getMessage()


@contextlib.contextmanager
def quiet_tools() -> Iterator[None]:
    """Silence ModelOpt's INFO logging and ONNX Runtime's calibration prints/progress bars; errors still raise."""
    names = ("modelopt.onnx", "modelopt.onnx.autocast", "modelopt.onnx.quantization")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    noise = _DropNoise()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
        lg.addFilter(noise)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
            lg.removeFilter(noise)
