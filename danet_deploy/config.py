"""The model config: everything a deployed DANet needs besides its weights.

It travels with every artifact (inside our checkpoints, in the ONNX metadata, in engine sidecars), so
any stage can start from a file a user already has.
"""

from __future__ import annotations

import json
import math
import numbers
import unicodedata
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from danet_deploy.errors import BadInputError

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BLOCKS_PER_DEPTH: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
BASIC_BLOCK_DEPTHS = (18, 34)

# The stems users bring, by the channels of their convolutions: one entry is a 7x7 conv,
# three entries are the deep 3x3 stem (official 2020 code: 64,64,128; MMSegmentation: 32,32,64).
STEM_7X7 = (64,)
STEM_DEEP_OFFICIAL = (64, 64, 128)
STEM_DEEP_MMSEG = (32, 32, 64)

POSITION_ATTENTIONS = ("pam", "shuffle", "spatial-gate")
CHANNEL_ATTENTIONS = ("cam", "se")

# Class names reach HTML, Markdown and terminal output; long or invisible-character names are refused at load.
MAX_CLASS_NAME = 128
UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # controls, bidi/zero-width, lone surrogates, line breaks

MULTI_GRID_DILATIONS = (4, 8, 16)
CONTRACTED_DILATIONS = (2, 4, 4)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, labels and preprocessing of one DANet.

    Attributes:
        depth: ResNet depth (18, 34, 50, 101, 152).
        num_classes: number of output classes.
        class_names: one name per class.
        base_width: channels of layer1's 3x3 convs (64 for standard ResNets; smaller for edge models).
        stem_channels: output channels of each stem conv; (C,) is one 7x7 conv, (a, b, c) the deep stem.
        layer4_dilations: dilation of each layer4 block (cycled if layer4 has more blocks).
        align_corners: of the final bilinear upsampling (official: True; MMSeg 512x1024: False).
        mean, std: per-channel normalization of RGB in [0, 1].
        input_size: (H, W) the model is exported and calibrated at by default.
        palette: RGB colour per class, for reports.
        ignore_index: label value that is not scored.
        position_attention: the position branch's attention: "pam" (DANet's N x N position attention),
            "shuffle" (Shuffle Attention, SA-Net: O(N)) or "spatial-gate" (1x1 conv -> sigmoid).
        channel_attention: the channel branch's attention: "cam" (DANet's C x C) or "se" (squeeze-excitation).
        sa_groups: Shuffle Attention groups G (the branch's channels must divide by 2G).
        se_reduction: squeeze-excitation hidden width divisor.
    """

    depth: int = 50
    num_classes: int = 19
    class_names: tuple[str, ...] = CITYSCAPES_CLASSES
    base_width: int = 64
    stem_channels: tuple[int, ...] = STEM_DEEP_MMSEG
    layer4_dilations: tuple[int, ...] = CONTRACTED_DILATIONS
    align_corners: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int] = (512, 1024)
    palette: tuple[tuple[int, int, int], ...] = CITYSCAPES_PALETTE
    ignore_index: int = 255
    position_attention: str = "pam"
    channel_attention: str = "cam"
    sa_groups: int = 8
    se_reduction: int = 16

    def __post_init__(self) -> None:
        # Normalise list-valued fields (from JSON) to tuples so configs compare and hash equal.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
                object.__setattr__(self, f.name, value)
        _check_fields(self)
        check_class_names(self.class_names)
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names: {len(self.class_names)} class names for {self.num_classes} classes")
        object.__setattr__(self, "palette", _checked_palette(self.palette))
        if len(self.palette) < self.num_classes:
            if self.palette != CITYSCAPES_PALETTE:  # a palette someone gave must colour every class
                raise ValueError(f"palette has {len(self.palette)} colours for {self.num_classes} classes")
            object.__setattr__(self, "palette", default_palette(self.num_classes))
        if self.position_attention == "shuffle" and (
            self.sa_groups < 2 or self.head_channels % (2 * self.sa_groups) != 0
        ):
            # G = 1 is excluded: torch.export then fixes the batch of a dynamic export to 1 (measured, torch 2.13).
            raise ValueError(
                f"sa_groups={self.sa_groups}: needs sa_groups >= 2 and the head's {self.head_channels} channels "
                "divisible by 2 * sa_groups"
            )
        if self.channel_attention == "se" and not 1 <= self.se_reduction <= self.head_channels:
            raise ValueError(f"se_reduction={self.se_reduction} must be between 1 and {self.head_channels}")

    @property
    def arch(self) -> str:
        width = "" if self.base_width == 64 else f"w{self.base_width}"
        return f"danet_r{self.depth}{width}{self.variant_suffix}"

    @property
    def variant(self) -> str:
        """The head variant in words, e.g. 'pam+cam' (DANet) or 'shuffle(G=8)+cam'."""
        position = f"shuffle(G={self.sa_groups})" if self.position_attention == "shuffle" else self.position_attention
        channel = f"se(r={self.se_reduction})" if self.channel_attention == "se" else self.channel_attention
        return f"{position}+{channel}"

    @property
    def variant_suffix(self) -> str:
        position = {"pam": "", "shuffle": f"_sa{self.sa_groups}", "spatial-gate": "_sg"}[self.position_attention]
        return position + ("_se" if self.channel_attention == "se" else "")

    @property
    def head_channels(self) -> int:
        """Channels of the two attention branches (a quarter of the backbone's output, as upstream)."""
        return self.backbone_channels // 4

    @property
    def bottleneck(self) -> bool:
        return self.depth not in BASIC_BLOCK_DEPTHS

    @property
    def backbone_channels(self) -> int:
        return self.base_width * 8 * (4 if self.bottleneck else 1)

    def with_overrides(self, **overrides: Any) -> ModelConfig:
        """A copy with the given fields replaced; None values are ignored."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        # Configs written before the head variants existed carry head="danet" (PAM + CAM).
        if data.get("head") == "danet":
            del data["head"]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config fields: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def _shown(value: Any) -> str:
    """A bad value for a one-line message: repr (escapes newlines), cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# Ranges of the numeric fields a model config may hold (untrusted: ONNX metadata, checkpoints, sidecars).
MAX_CLASSES = 65535  # label PNGs hold at most 16-bit class ids
MAX_CHANNELS = 4096
MAX_DILATION = 64
MIN_INPUT_SIDE = 8  # one feature-map cell at the output stride
MAX_INPUT_SIDE = 1 << 20  # far beyond any memory: the memory plan refuses real sizes that do not fit


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_field(config: ModelConfig, name: str, low: int, high: int) -> None:
    value = getattr(config, name)
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer {low}-{high}, got {_shown(value)}")
    object.__setattr__(config, name, int(value))  # numpy ints from checkpoints -> int, for JSON


def _ints_field(config: ModelConfig, name: str, lengths: tuple[int, ...], low: int, high: int) -> None:
    value = getattr(config, name)
    if not isinstance(value, tuple) or len(value) not in lengths:
        counts = " or ".join(map(str, lengths))
        raise ValueError(f"{name} must be a list of {counts} integers, got {_shown(value)}")
    if not all(_is_int(v) and low <= v <= high for v in value):
        raise ValueError(f"{name} must hold integers {low}-{high}, got {_shown(value)}")
    object.__setattr__(config, name, tuple(int(v) for v in value))


def _floats_field(config: ModelConfig, name: str, positive: bool) -> None:
    value = getattr(config, name)
    if not isinstance(value, tuple) or len(value) != 3:
        raise ValueError(f"{name} must be a list of 3 numbers (R, G, B), got {_shown(value)}")
    numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not numeric or (positive and not all(v > 0 for v in value)):
        what = "positive finite numbers" if positive else "finite numbers"
        raise ValueError(f"{name} must hold 3 {what}, got {_shown(value)}")
    object.__setattr__(config, name, tuple(float(v) for v in value))


def _check_fields(config: ModelConfig) -> None:
    """The one validator of a model config's fields: exact types, lengths and ranges (ValueError naming the
    field). A value of the wrong type is refused, not coerced: `align_corners: "yes"`, a `mean` of strings."""
    if not _is_int(config.depth) or config.depth not in BLOCKS_PER_DEPTH:
        raise ValueError(
            f"depth: unsupported ResNet depth {_shown(config.depth)}; choose from {sorted(BLOCKS_PER_DEPTH)}"
        )
    _int_field(config, "depth", 18, 152)
    _int_field(config, "num_classes", 1, MAX_CLASSES)
    _int_field(config, "base_width", 1, MAX_CHANNELS)
    _ints_field(config, "stem_channels", (1, 3), 1, MAX_CHANNELS)
    _ints_field(config, "layer4_dilations", tuple(range(1, 9)), 1, MAX_DILATION)
    if not isinstance(config.align_corners, bool):
        raise ValueError(f"align_corners must be true or false, got {_shown(config.align_corners)}")
    _floats_field(config, "mean", positive=False)
    _floats_field(config, "std", positive=True)  # a zero or negative std inverts or blows up every input
    _ints_field(config, "input_size", (2,), MIN_INPUT_SIDE, MAX_INPUT_SIDE)
    _int_field(config, "ignore_index", 0, MAX_CLASSES)
    if config.ignore_index < config.num_classes:
        raise ValueError(f"ignore_index {config.ignore_index} is a class id (the model has {config.num_classes})")
    _int_field(config, "sa_groups", 1, MAX_CHANNELS)
    _int_field(config, "se_reduction", 1, MAX_CHANNELS)
    for name, choices in (("position_attention", POSITION_ATTENTIONS), ("channel_attention", CHANNEL_ATTENTIONS)):
        value = getattr(config, name)
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"unknown {name} {_shown(value)}; choose from {', '.join(choices)}")


def check_class_names(names: Any) -> None:
    """Names are shown in reports and terminals: plain, short, one-line, distinct strings."""
    if not isinstance(names, tuple):
        raise ValueError(f"class_names must be a list of strings, got {type(names).__name__} {_shown(names)}")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"class name {i} must be a string, got {type(name).__name__} {_shown(name)}")
        if not name.strip():
            raise ValueError(f"class name {i} is empty")
        if len(name) > MAX_CLASS_NAME:
            raise ValueError(f"class name {i} is {len(name)} characters long (at most {MAX_CLASS_NAME})")
        if any(unicodedata.category(c) in UNPRINTABLE for c in name):
            raise ValueError(f"class name {i} {_shown(name)} contains a control or invisible formatting character")
        if name in seen:  # per-class results are keyed by name: a repeat would hide a class
            raise ValueError(f"class name {i} {_shown(name)} repeats an earlier one")
        seen.add(name)


def _checked_palette(palette: Any) -> tuple[tuple[int, int, int], ...]:
    """Exactly three integers 0-255 per colour; bools, floats and strings are refused (not coerced)."""
    if not isinstance(palette, tuple):
        raise ValueError(f"palette must be a list of [R, G, B] colours, got {type(palette).__name__} {_shown(palette)}")
    colours = []
    for i, colour in enumerate(palette):
        if not isinstance(colour, (tuple, list)) or len(colour) != 3:
            raise ValueError(f"palette colour {i} must be three integers [R, G, B], got {_shown(colour)}")
        if not all(_is_int(c) and 0 <= int(c) <= 255 for c in colour):
            raise ValueError(f"palette colour {i} must be three integers 0-255, got {_shown(colour)}")
        colours.append((int(colour[0]), int(colour[1]), int(colour[2])))  # numpy ints -> int, for JSON
    return tuple(colours)


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Cityscapes colours first, then a deterministic spread (PASCAL VOC's bit-interleaving)."""
    colours = list(CITYSCAPES_PALETTE[:num_classes])
    index = len(colours)
    while len(colours) < num_classes:
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
        index += 1
    return tuple(colours)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    if num_classes == len(CITYSCAPES_CLASSES):
        return CITYSCAPES_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


def parse_dims(text: str, count: int | None, option: str, example: str, minimum: int = 1) -> tuple[int, ...]:
    """The one parser of dimension strings: '512x1024', '1x3x512x1024', '4,8,16' -> ints (BadInputError, exit 2)."""
    parts = text.lower().replace(",", "x").split("x")
    if not all(p.strip().isdigit() for p in parts) or (count is not None and len(parts) != count):
        raise BadInputError(f"{option}: expected {example}, got {text!r}")
    dims = tuple(int(p) for p in parts)
    if any(d < minimum for d in dims):
        raise BadInputError(f"{option}: every value must be at least {minimum}, got {text!r}")
    return dims


def parse_size(text: str, option: str = "--input-size") -> tuple[int, int]:
    """'512x1024' -> (512, 1024); at least 8x8."""
    h, w = parse_dims(text, 2, option, "HxW like 512x1024", minimum=8)
    return h, w


def parse_shape(text: str, option: str) -> tuple[int, ...]:
    """'1x3x512x1024' -> (1, 3, 512, 1024)."""
    return parse_dims(text, 4, option, "4 positive dims like 1x3x512x1024")


__all__ = [
    "BLOCKS_PER_DEPTH",
    "CHANNEL_ATTENTIONS",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "POSITION_ATTENTIONS",
    "ModelConfig",
    "check_class_names",
    "default_class_names",
    "default_palette",
    "parse_dims",
    "parse_shape",
    "parse_size",
]
