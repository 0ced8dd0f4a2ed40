"""Checkpoint layouts (ours, official DANet, MMSegmentation): detection, key mapping, strict loading.

Checkpoints are untrusted input: they are read with `torch.load(weights_only=True)` only, so a file whose
unpickling would run code is refused before anything of it runs.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danet_deploy.config import (
    BASIC_BLOCK_DEPTHS,
    BLOCKS_PER_DEPTH,
    CONTRACTED_DILATIONS,
    MULTI_GRID_DILATIONS,
    ModelConfig,
    default_class_names,
    default_palette,
)
from danet_deploy.errors import BadInputError, OptionError
from danet_deploy.files import atomic_path, sha256_file
from danet_deploy.model import DANet, build_danet
from danet_deploy.options import LAYOUTS

OURS_FORMAT = "danet-deploy"
OURS_FORMAT_VERSION = 1


class Layout(str, Enum):
    OURS = "ours"
    OFFICIAL = "official"
    MMSEG = "mmseg"


assert tuple(layout.value for layout in Layout) == LAYOUTS  # options.py names them without importing torch


@dataclass
class LoadedCheckpoint:
    model: DANet
    config: ModelConfig
    layout: Layout
    path: Path
    sha256: str
    notes: list[str] = field(default_factory=list)

    def provenance(self) -> dict[str, Any]:
        return {"checkpoint": self.path.name, "checkpoint_sha256": self.sha256, "checkpoint_layout": self.layout.value}


# --- reading -------------------------------------------------------------------------------------------


def _numpy_safe_globals() -> list[Any]:
    """numpy scalars/dtypes that MMSegmentation and old training scripts leave in checkpoint metadata.

    They reconstruct plain values only; everything else outside torch's weights-only allowlist is refused.
    """
    safe: list[Any] = [np.dtype, np.ndarray]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["scalar", "_reconstruct"])
            safe += [module.scalar, module._reconstruct]
            break
        except (ImportError, AttributeError):
            continue
    safe += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool")]
    return safe


def read_checkpoint_file(path: str | os.PathLike[str]) -> Any:
    """torch.load with weights_only=True and clear one-line errors."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such checkpoint file")
    if not p.is_file():
        raise BadInputError(f"{p}: not a file")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch raises UnpicklingError both for corrupt pickles and for globals outside its allowlist
        # ("unsupported GLOBAL posix.system ..."); only the latter means the file asks to run code.
        text = str(exc)
        match = re.search(r"GLOBAL ([\w.]+)", text)
        if match:
            raise BadInputError(
                f"{p}: refused: loading this checkpoint would import or run {match.group(1)}; "
                "only plain tensors and containers are accepted (torch.load weights_only=True)"
            ) from None
        operand = re.search(r"Unsupported operand \d+", text)
        detail = operand.group(0) if operand else "corrupt pickle data"
        raise BadInputError(f"{p}: not a readable PyTorch checkpoint ({detail})") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise BadInputError(f"{p}: not a readable PyTorch checkpoint (truncated or corrupt: {exc})") from None
    except Exception as exc:  # torch's unpickler raises KeyError/IndexError/RuntimeError/... on arbitrary bytes
        first = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise BadInputError(f"{p}: not a readable PyTorch checkpoint ({type(exc).__name__} {first})".rstrip()) from None


def _state_dict_and_meta(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not isinstance(obj, dict):
        raise BadInputError(f"{path}: checkpoint holds a {type(obj).__name__}, expected a dict of tensors")
    meta: dict[str, Any] = {}
    state: Any = obj
    for key in ("state_dict", "model", "model_state_dict"):
        if key in obj and isinstance(obj[key], dict):
            state = obj[key]
            meta = {k: v for k, v in obj.items() if k != key}
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BadInputError(f"{path}: checkpoint contains no tensors")
    # DataParallel / DistributedDataParallel prefix.
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors, meta


# --- layouts ---------------------------------------------------------------------------------------------


def detect_layout(keys: list[str] | set[str], meta: dict[str, Any] | None = None) -> Layout:
    if meta and meta.get("format") == OURS_FORMAT:
        return Layout.OURS
    keyset = set(keys)
    if any(k.startswith("decode_head.") for k in keyset):
        return Layout.MMSEG
    if any(k.startswith("pretrained.") for k in keyset) or any(k.startswith("head.conv5a.") for k in keyset):
        return Layout.OFFICIAL
    if any(k.startswith("head.pam_in_conv.") for k in keyset):
        return Layout.OURS
    sample = ", ".join(sorted(keyset)[:3])
    raise BadInputError(
        "unrecognised checkpoint layout (expected keys starting with pretrained./head. (official DANet), "
        f"backbone./decode_head. (MMSegmentation) or a danet-deploy checkpoint); first keys: {sample}"
    )


_OFFICIAL_HEAD = {
    "conv5a.0.": "pam_in_conv.conv.",
    "conv5a.1.": "pam_in_conv.bn.",
    "conv5c.0.": "cam_in_conv.conv.",
    "conv5c.1.": "cam_in_conv.bn.",
    "conv51.0.": "pam_out_conv.conv.",
    "conv51.1.": "pam_out_conv.bn.",
    "conv52.0.": "cam_out_conv.conv.",
    "conv52.1.": "cam_out_conv.bn.",
    "sa.query_conv.": "pam.query_project.",
    "sa.key_conv.": "pam.key_project.",
    "sa.value_conv.": "pam.value_project.",
    "sa.gamma": "pam.gamma",
    "sc.gamma": "cam.gamma",
    "conv8.1.": "classifier.",
    "conv6.1.": "pam_aux_classifier.",
    "conv7.1.": "cam_aux_classifier.",
}
_OFFICIAL_DEEP_STEM = {
    "conv1.0.": "stem.0.",
    "conv1.1.": "stem.1.",
    "conv1.3.": "stem.3.",
    "conv1.4.": "stem.4.",
    "conv1.6.": "stem.6.",
    "bn1.": "stem.7.",
}
_MMSEG_HEAD = {
    "conv_seg.": "classifier.",
    "pam_conv_seg.": "pam_aux_classifier.",
    "cam_conv_seg.": "cam_aux_classifier.",
    "pam.gamma.scale": "pam.gamma",
    "cam.gamma.scale": "cam.gamma",
}


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key == old or key.startswith(old):
            return new + key[len(old) :]
    return None


def _scalar_as_1d(value: torch.Tensor) -> torch.Tensor:
    """Gammas are [1] (official) or 0-d (MMSeg); other shapes are left for the strict check to report."""
    return value.reshape(1) if value.numel() == 1 else value


_STEM_7X7 = {"conv1.": "stem.0.", "bn1.": "stem.1."}


def official_key(key: str, deep_stem: bool) -> str | None:
    """Our name for an official DANet key; None for keys dropped on purpose (the unused `fc`)."""
    if key.startswith("pretrained.fc."):
        return None
    if key.startswith("pretrained."):
        rest = key[len("pretrained.") :]
        return "backbone." + (_rename(rest, _OFFICIAL_DEEP_STEM if deep_stem else _STEM_7X7) or rest)
    if key.startswith("head."):
        rest = key[len("head.") :]
        return "head." + (_rename(rest, _OFFICIAL_HEAD) or rest)
    return key  # left for the strict check to report


def mmseg_key(key: str, deep_stem: bool) -> str | None:
    """Our name for an MMSegmentation key; None for the training-only FCN `auxiliary_head.*` and `fc`."""
    if key.startswith("auxiliary_head.") or key.startswith("backbone.fc."):
        return None
    if key.startswith("backbone."):
        rest = key[len("backbone.") :]
        return "backbone." + ((None if deep_stem else _rename(rest, _STEM_7X7)) or rest)  # ResNetV1b 7x7 stem
    if key.startswith("decode_head."):
        rest = key[len("decode_head.") :]
        return "head." + (_rename(rest, _MMSEG_HEAD) or rest)
    return key


def map_state(
    state: dict[str, torch.Tensor], layout: Layout
) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    """Rename a checkpoint's tensors to our layout: (mapped, dropped keys, our key -> the file's key)."""
    if layout is Layout.OURS:
        return dict(state), [], {}
    deep_stem = any(k.endswith("conv1.0.weight") or k.endswith("stem.0.weight") for k in state)
    rename = official_key if layout is Layout.OFFICIAL else mmseg_key
    mapped: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    origin: dict[str, str] = {}
    for key, value in state.items():
        ours = rename(key, deep_stem)
        if ours is None:
            dropped.append(key)
            continue
        mapped[ours] = _scalar_as_1d(value) if ours.endswith(("pam.gamma", "cam.gamma")) else value
        origin[ours] = key
    return mapped, dropped, origin


def _inverse(table: dict[str, str]) -> dict[str, str]:
    return {new: old for old, new in table.items()}


def source_key(key: str, layout: Layout, deep_stem: bool) -> str:
    """The name a tensor of our model has in the user's checkpoint layout (for error messages)."""
    if layout is Layout.OURS:
        return key
    if key.startswith("backbone."):
        rest = key[len("backbone.") :]
        if layout is Layout.OFFICIAL:
            return "pretrained." + (_rename(rest, _inverse(_OFFICIAL_DEEP_STEM if deep_stem else _STEM_7X7)) or rest)
        return "backbone." + ((None if deep_stem else _rename(rest, _inverse(_STEM_7X7))) or rest)
    if key.startswith("head."):
        rest = key[len("head.") :]
        if layout is Layout.OFFICIAL:
            return "head." + (_rename(rest, _inverse(_OFFICIAL_HEAD)) or rest)
        return "decode_head." + (_rename(rest, _inverse(_MMSEG_HEAD)) or rest)
    return key


# --- config inference -----------------------------------------------------------------------------------


def _blocks_in(state: dict[str, torch.Tensor], layer: int) -> int:
    pattern = re.compile(rf"^backbone\.layer{layer}\.(\d+)\.")
    indices = [int(m.group(1)) for k in state if (m := pattern.match(k))]
    return max(indices) + 1 if indices else 0


def _require(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise BadInputError(f"checkpoint is missing {key!r}, needed to infer the architecture")
    return state[key]


def infer_architecture(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Depth, width, stem and class count from tensor names and shapes (keys in our layout)."""
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    blocks = tuple(_blocks_in(state, i) for i in range(1, 5))
    candidates = [d for d, b in BLOCKS_PER_DEPTH.items() if b == blocks and (d not in BASIC_BLOCK_DEPTHS) == bottleneck]
    if not candidates:
        kind = "bottleneck" if bottleneck else "basic"
        raise BadInputError(f"checkpoint has {kind} blocks per layer {blocks}, which matches no ResNet depth")
    if "backbone.stem.6.weight" in state:
        stem = tuple(int(_require(state, f"backbone.stem.{i}.weight").shape[0]) for i in (0, 3, 6))
    else:
        stem = (int(_require(state, "backbone.stem.0.weight").shape[0]),)
    return {
        "depth": candidates[0],
        "base_width": int(_require(state, "backbone.layer1.0.conv1.weight").shape[0]),
        "stem_channels": stem,
        "num_classes": int(_require(state, "head.classifier.weight").shape[0]),
        **_head_variant(state),
    }


def _head_variant(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Which attention each head branch holds, from the module names the variants save under."""
    variant: dict[str, Any] = {}
    channels = int(_require(state, "head.classifier.weight").shape[1])
    if "head.sa.cweight" in state:
        variant["position_attention"] = "shuffle"
        variant["sa_groups"] = channels // (2 * int(state["head.sa.cweight"].shape[1]))
    elif "head.spatial_gate.gate.weight" in state:
        variant["position_attention"] = "spatial-gate"
    if "head.se.fc1.weight" in state:
        variant["channel_attention"] = "se"
        variant["se_reduction"] = channels // int(state["head.se.fc1.weight"].shape[0])
    return variant


def _classes_from_mmseg_meta(meta: dict[str, Any]) -> tuple[tuple[str, ...] | None, Any]:
    inner = meta.get("meta", {}) if isinstance(meta.get("meta"), dict) else {}
    dataset_meta = inner.get("dataset_meta", {}) if isinstance(inner.get("dataset_meta"), dict) else {}
    classes = dataset_meta.get("classes") or inner.get("CLASSES")
    palette = dataset_meta.get("palette") or inner.get("PALETTE")
    names = tuple(str(c) for c in classes) if isinstance(classes, (list, tuple)) else None
    return names, palette


def _colour(value: Any) -> Any:
    """An MMSeg palette entry as a tuple (lists and numpy arrays), its values left for ModelConfig to check."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _check_class_count(overrides: dict[str, Any], num_classes: int) -> None:
    """Class names of the wrong length are the option's error, not the checkpoint's."""
    names = overrides.get("class_names")
    if names is not None and len(names) != num_classes:
        raise OptionError("class_names", "", f"{len(names)} class names for a model with {num_classes} classes")


def config_for(
    layout: Layout, state: dict[str, torch.Tensor], meta: dict[str, Any], overrides: dict[str, Any]
) -> ModelConfig:
    """The model config: stored (ours) or inferred from tensors plus each project's released defaults."""
    if layout is Layout.OURS and "config" in meta:
        try:
            stored = ModelConfig.from_dict(dict(meta["config"]))
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"stored model config is invalid: {exc}") from None
        _check_class_count(overrides, stored.num_classes)
        try:
            return stored.with_overrides(**overrides)
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"invalid option for this model: {exc}") from None
    arch = infer_architecture(state)
    if layout is Layout.OFFICIAL:
        # Released Cityscapes model: 7x7 stem with multi-grid; 2020-code models (deep stem): 2, 4, 4.
        dilations = MULTI_GRID_DILATIONS if len(arch["stem_channels"]) == 1 else CONTRACTED_DILATIONS
        defaults: dict[str, Any] = {"layer4_dilations": dilations, "align_corners": True}
    else:
        defaults = {"layer4_dilations": CONTRACTED_DILATIONS, "align_corners": False}
    names, palette = _classes_from_mmseg_meta(meta) if layout is Layout.MMSEG else (None, None)
    n = arch["num_classes"]
    if names is None or len(names) != n:
        names = default_class_names(n)
    defaults["class_names"] = names
    if isinstance(palette, (list, tuple)) and len(palette) >= n:
        # Not coerced with int(): ModelConfig refuses strings, floats and bools in a colour (untrusted file).
        defaults["palette"] = tuple(_colour(c) for c in palette[:n])
    else:
        defaults["palette"] = default_palette(n)
    merged = {**arch, **defaults, **{k: v for k, v in overrides.items() if v is not None}}
    _check_class_count(overrides, n)
    try:
        return ModelConfig(**merged)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"invalid model config: {exc}") from None


# --- strict loading -------------------------------------------------------------------------------------

# The two per-branch classifiers are used only for the auxiliary training losses; a checkpoint stripped
# of them still deploys exactly, so their absence is noted rather than fatal.
_OPTIONAL_MISSING = re.compile(r"^head\.(pam|cam)_aux_classifier\.")


def load_state_strict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, name: Callable[[str], str] = str
) -> list[str]:
    """Load `state` into `model`; any missing, unexpected or mis-shaped tensor is one error listing them all.

    `name` turns our key into the name the user's file uses, so the error speaks the file's language.
    """
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    optional = [k for k in missing if _OPTIONAL_MISSING.match(k)]
    missing = [name(k) for k in missing if k not in optional]
    unexpected = [name(k) for k in state if k not in expected]
    mismatched = [
        f"{name(k)} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise BadInputError(f"{source}: checkpoint does not match the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    notes = []
    if optional:
        notes.append("auxiliary classifiers absent from the checkpoint (training-only, not exported)")
    return notes


def load_checkpoint(
    path: str | os.PathLike[str], layout: Layout | str | None = None, **overrides: Any
) -> LoadedCheckpoint:
    """Read, detect the layout (unless given), map keys, build the model and load it strictly.

    `overrides` set config fields the weights cannot tell (layer4_dilations, align_corners, class_names,
    mean, std, input_size, ...); None values are ignored.
    """
    p = Path(path)
    obj = read_checkpoint_file(p)
    state, meta = _state_dict_and_meta(obj, p)
    if isinstance(obj, dict) and obj.get("format") == OURS_FORMAT:
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
    try:
        detected = Layout(layout) if layout is not None else detect_layout(list(state), meta)
    except BadInputError as exc:
        raise BadInputError(f"{p}: {exc}") from None
    except ValueError:
        raise BadInputError(f"{p}: unknown layout {layout!r}; choose from ours, official, mmseg") from None
    notes: list[str] = []
    mapped, dropped, origin = map_state(state, detected)
    if dropped:
        groups = sorted({".".join(k.split(".")[:2]) for k in dropped})
        notes.append(f"ignored {len(dropped)} unused tensors ({', '.join(groups)})")
    try:
        config = config_for(detected, mapped, meta, overrides)
    except OptionError:
        raise  # an option's own problem names the option (the CLI shows its flag)
    except BadInputError as exc:
        raise BadInputError(f"{p}: {exc}") from None  # anything else is the file's
    model = build_danet(config)
    deep_stem = len(config.stem_channels) == 3
    notes += load_state_strict(model, mapped, str(p), lambda k: origin.get(k) or source_key(k, detected, deep_stem))
    model.eval()
    return LoadedCheckpoint(model=model, config=config, layout=detected, path=p, sha256=sha256_file(p), notes=notes)


def save_checkpoint(model: DANet, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Our layout: format tag, the model config and the weights (plus optional plain-data `extra`)."""
    payload: dict[str, Any] = {
        "format": OURS_FORMAT,
        "format_version": OURS_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    if extra:
        payload["extra"] = extra
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)
