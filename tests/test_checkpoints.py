"""load_checkpoint on the three layouts (official DANet, MMSegmentation, ours), strictness and safety.

Upstream checkpoints are produced by independent re-implementations of the upstream module trees
(`upstream_reference.py`, written from the facts file, not from danet_deploy's mapping), with random
weights, BN statistics and non-zero attention gammas, so that a wrong key mapping changes the outputs.
Outputs are compared in float64 (weights are saved in float32 and widened exactly on both sides).
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from danet_deploy.checkpoints import Layout, load_checkpoint, save_checkpoint
from danet_deploy.config import CONTRACTED_DILATIONS, MULTI_GRID_DILATIONS
from danet_deploy.errors import BadInputError

from .support.upstream_reference import MMSegDANet, OfficialDANet, randomize_

WIDTH = 8  # ResNet base width (64 in the real models)
NUM_CLASSES = 5
DEEP_STEM_OFFICIAL = (WIDTH, WIDTH, 2 * WIDTH)  # 64, 64, 128 scaled down
STEM_7X7 = (WIDTH,)  # 64 scaled down
DEEP_STEM_MMSEG = (WIDTH // 2, WIDTH // 2, WIDTH)  # 32, 32, 64 scaled down


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def image(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def official_reference(stem=DEEP_STEM_OFFICIAL, dilations=CONTRACTED_DILATIONS, with_fc=False, seed=0):
    model = OfficialDANet(NUM_CLASSES, 50, WIDTH, stem, dilations, with_fc=with_fc)
    return randomize_(model, seed=seed)


def mmseg_reference(depth=50, seed=0):
    return randomize_(MMSegDANet(NUM_CLASSES, depth, WIDTH), seed=seed)


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


@torch.no_grad()
def reference_outputs(reference: torch.nn.Module, x: torch.Tensor):
    ref = copy.deepcopy(reference).double().eval()
    out = ref(x)
    return out if isinstance(out, tuple) else (out,)


@torch.no_grad()
def mmseg_reference_all(reference: MMSegDANet, x: torch.Tensor):
    """(fused, pam_aux, cam_aux) at input size, as MMSeg resizes them (align_corners=False)."""
    ref = copy.deepcopy(reference).double().eval()
    outs = ref.decode_head(ref.backbone(x))
    return tuple(F.interpolate(o, x.shape[2:], mode="bilinear", align_corners=False) for o in outs)


@torch.no_grad()
def our_outputs(loaded, x: torch.Tensor):
    model = loaded.model.double().eval()
    fused = model(x)
    train = model.forward_train(x)
    torch.testing.assert_close(train[0], fused, rtol=0, atol=0)
    return train


def assert_outputs_equal(actual, expected):
    assert len(actual) >= len(expected)
    for a, e in zip(actual, expected, strict=False):
        assert float(e.std()) > 1e-3, "degenerate reference output: the comparison would prove nothing"
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


def outputs_differ(actual, expected) -> bool:
    return any(not torch.allclose(a, e, rtol=1e-4, atol=1e-5) for a, e in zip(actual, expected, strict=False))


# --- official layout ------------------------------------------------------------------------------------


def test_official_deep_stem_training_checkpoint(tmp_path):
    ref = official_reference(DEEP_STEM_OFFICIAL, CONTRACTED_DILATIONS)
    path = save({"epoch": 1, "state_dict": state_of(ref), "optimizer": {}, "best_pred": 0.5}, tmp_path / "ck.pth.tar")

    loaded = load_checkpoint(path)

    assert loaded.layout is Layout.OFFICIAL
    cfg = loaded.config
    assert (cfg.depth, cfg.base_width, cfg.stem_channels, cfg.num_classes) == (50, WIDTH, DEEP_STEM_OFFICIAL, 5)
    assert cfg.layer4_dilations == CONTRACTED_DILATIONS == (2, 4, 4)
    assert cfg.align_corners is True
    assert cfg.class_names == tuple(f"class_{i}" for i in range(NUM_CLASSES))
    assert loaded.model.training is False
    assert loaded.path == path
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = image()
    # fused, PAM aux (conv6) and CAM aux (conv7) all match the official model.
    assert_outputs_equal(our_outputs(loaded, x), reference_outputs(ref, x))


def test_official_7x7_stem_raw_state_dict_with_fc(tmp_path):
    ref = official_reference(STEM_7X7, MULTI_GRID_DILATIONS, with_fc=True)
    sd = state_of(ref)
    assert "pretrained.fc.weight" in sd and "pretrained.fc.bias" in sd
    path = save(sd, tmp_path / "released.pth")

    loaded = load_checkpoint(path)

    assert loaded.layout is Layout.OFFICIAL
    cfg = loaded.config
    assert (cfg.depth, cfg.base_width, cfg.stem_channels, cfg.num_classes) == (50, WIDTH, STEM_7X7, 5)
    assert cfg.layer4_dilations == MULTI_GRID_DILATIONS == (4, 8, 16)
    assert cfg.align_corners is True
    assert any("pretrained.fc" in note for note in loaded.notes), loaded.notes
    x = image()
    assert_outputs_equal(our_outputs(loaded, x), reference_outputs(ref, x))


def _module_prefix(sd):
    return {"module." + k: v for k, v in sd.items()}


def _no_num_batches_tracked(sd):
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize(
    "transform",
    [_module_prefix, _no_num_batches_tracked, lambda sd: _module_prefix(_no_num_batches_tracked(sd))],
    ids=["module-prefix", "no-num_batches_tracked", "both"],
)
@pytest.mark.parametrize("stem", [DEEP_STEM_OFFICIAL, STEM_7X7], ids=["deep-stem", "7x7-stem"])
def test_official_variants(tmp_path, transform, stem):
    dilations = CONTRACTED_DILATIONS if len(stem) == 3 else MULTI_GRID_DILATIONS
    ref = official_reference(stem, dilations)
    sd = transform(state_of(ref))
    path = save({"epoch": 3, "state_dict": sd, "optimizer": {}, "best_pred": 0.1}, tmp_path / "ck.pth")

    loaded = load_checkpoint(path)

    assert loaded.layout is Layout.OFFICIAL
    assert loaded.config.stem_channels == stem
    assert loaded.config.layer4_dilations == dilations
    x = image()
    assert_outputs_equal(our_outputs(loaded, x), reference_outputs(ref, x))


def test_official_dilation_override_matches_and_default_differs(tmp_path):
    """7x7 stem trained with 2, 4, 4: the override is honoured, and the dilation is visible in the outputs."""
    ref = official_reference(STEM_7X7, CONTRACTED_DILATIONS)
    path = save(state_of(ref), tmp_path / "ck.pth")
    x = image()
    expected = reference_outputs(ref, x)

    overridden = load_checkpoint(path, layer4_dilations=(2, 4, 4))
    assert overridden.config.layer4_dilations == (2, 4, 4)
    assert_outputs_equal(our_outputs(overridden, x), expected)

    default = load_checkpoint(path)
    assert default.config.layer4_dilations == (4, 8, 16)
    assert outputs_differ(our_outputs(default, x), expected)


@pytest.mark.parametrize(
    "a, b",
    [
        ("head.conv5a.", "head.conv5c."),  # PAM vs CAM input conv
        ("head.conv51.", "head.conv52."),  # PAM vs CAM output conv
        ("head.sa.gamma", "head.sc.gamma"),
        ("head.conv6.", "head.conv8."),  # PAM aux vs fused classifier
        ("pretrained.conv1.1.", "pretrained.conv1.4."),  # first vs second stem BN
    ],
)
def test_swapped_tensors_are_detected(tmp_path, a, b):
    """Sanity check of the method: a checkpoint with two same-shaped groups swapped no longer matches."""
    ref = official_reference()
    sd = state_of(ref)
    keys_a = sorted(k for k in sd if k.startswith(a))
    keys_b = sorted(k for k in sd if k.startswith(b))
    assert keys_a and len(keys_a) == len(keys_b)
    for ka, kb in zip(keys_a, keys_b, strict=True):
        assert sd[ka].shape == sd[kb].shape
        sd[ka], sd[kb] = sd[kb], sd[ka]
    path = save(sd, tmp_path / "swapped.pth")
    x = image()
    assert outputs_differ(our_outputs(load_checkpoint(path), x), reference_outputs(ref, x))


def test_official_numpy_best_pred(tmp_path):
    ref = official_reference()
    sd = state_of(ref)
    path = save(
        {"epoch": np.int64(7), "state_dict": sd, "optimizer": {}, "best_pred": np.float64(0.77)}, tmp_path / "c"
    )
    loaded = load_checkpoint(path)
    assert loaded.layout is Layout.OFFICIAL


# --- MMSegmentation layout ------------------------------------------------------------------------------


def mmseg_checkpoint(ref, meta=None):
    return {"meta": {"mmseg_version": "1.2.2", "iter": 80000} if meta is None else meta, "state_dict": state_of(ref)}


def test_mmseg_checkpoint(tmp_path):
    ref = mmseg_reference()
    ck = mmseg_checkpoint(ref)
    assert any(k.startswith("auxiliary_head.convs.0.conv.") for k in ck["state_dict"])
    assert ck["state_dict"]["decode_head.pam.gamma.scale"].shape == ()
    path = save(ck, tmp_path / "iter_80000.pth")

    loaded = load_checkpoint(path)

    assert loaded.layout is Layout.MMSEG
    cfg = loaded.config
    assert (cfg.depth, cfg.base_width, cfg.stem_channels, cfg.num_classes) == (50, WIDTH, DEEP_STEM_MMSEG, 5)
    assert cfg.layer4_dilations == (2, 4, 4)
    assert cfg.align_corners is False
    assert any("auxiliary_head" in note for note in loaded.notes), loaded.notes
    x = image()
    ours = our_outputs(loaded, x)
    assert_outputs_equal(ours[:1], reference_outputs(ref, x))
    assert_outputs_equal(ours, mmseg_reference_all(ref, x))


def test_mmseg_align_corners_matters(tmp_path):
    """The align_corners default is checked by the outputs, not only by the config field."""
    ref = mmseg_reference()
    path = save(mmseg_checkpoint(ref), tmp_path / "ck.pth")
    x = image()
    wrong = load_checkpoint(path, align_corners=True)
    assert wrong.config.align_corners is True
    assert outputs_differ(our_outputs(wrong, x)[:1], reference_outputs(ref, x))


def test_mmseg_resnet101_depth(tmp_path):
    ref = mmseg_reference(depth=101, seed=3)
    path = save(mmseg_checkpoint(ref), tmp_path / "r101.pth")
    loaded = load_checkpoint(path)
    assert loaded.config.depth == 101
    assert len(loaded.model.backbone.layer3) == 23
    x = image(2)
    assert_outputs_equal(our_outputs(loaded, x)[:1], reference_outputs(ref, x))


CLASSES = ["road", "car", "sky", "person", "tree"]
PALETTE = [[128, 64, 128], [0, 0, 142], [70, 130, 180], [220, 20, 60], [107, 142, 35]]


@pytest.mark.parametrize(
    "meta",
    [
        {"dataset_meta": {"classes": CLASSES, "palette": PALETTE}},  # MMSeg 1.x
        {"CLASSES": tuple(CLASSES), "PALETTE": PALETTE},  # MMSeg 0.x
    ],
    ids=["dataset_meta", "CLASSES"],
)
def test_mmseg_class_names_and_palette(tmp_path, meta):
    path = save(mmseg_checkpoint(mmseg_reference(), meta), tmp_path / "ck.pth")
    cfg = load_checkpoint(path).config
    assert cfg.class_names == tuple(CLASSES)
    assert cfg.palette == tuple(tuple(c) for c in PALETTE)


def test_mmseg_class_count_mismatch_falls_back(tmp_path):
    meta = {"dataset_meta": {"classes": CLASSES[:3], "palette": PALETTE[:3]}}
    path = save(mmseg_checkpoint(mmseg_reference(), meta), tmp_path / "ck.pth")
    cfg = load_checkpoint(path).config
    assert cfg.class_names == tuple(f"class_{i}" for i in range(NUM_CLASSES))
    assert len(cfg.palette) >= NUM_CLASSES


def test_mmseg_numpy_scalars_in_meta(tmp_path):
    meta = {
        "best_mIoU": np.float64(0.5),
        "best_iter": np.int64(80000),
        "lr": np.float32(1e-4),
        "flag": np.bool_(True),
        "hist": np.arange(4),
        "dataset_meta": {"classes": CLASSES, "palette": PALETTE},
    }
    ref = mmseg_reference()
    path = save(mmseg_checkpoint(ref, meta), tmp_path / "ck.pth")
    loaded = load_checkpoint(path)
    assert loaded.layout is Layout.MMSEG
    assert loaded.config.class_names == tuple(CLASSES)
    x = image()
    assert_outputs_equal(our_outputs(loaded, x)[:1], reference_outputs(ref, x))


# --- our layout -----------------------------------------------------------------------------------------


def test_ours_round_trip(tmp_path):
    ref = official_reference(STEM_7X7, MULTI_GRID_DILATIONS)
    first = load_checkpoint(save(state_of(ref), tmp_path / "official.pth"), class_names=CLASSES)
    assert first.config.class_names == tuple(CLASSES)
    ours_path = save_checkpoint(first.model, tmp_path / "ours.pt", extra={"note": "round trip"})

    again = load_checkpoint(ours_path)

    assert again.layout is Layout.OURS
    assert again.config == first.config
    assert again.config.align_corners is True and again.config.layer4_dilations == (4, 8, 16)
    x = image()
    assert_outputs_equal(our_outputs(again, x), reference_outputs(ref, x))
    # Overrides apply on top of the stored config.
    assert load_checkpoint(ours_path, align_corners=False).config.align_corners is False


def test_ours_raw_state_dict_is_detected(tmp_path):
    ref = mmseg_reference()
    loaded = load_checkpoint(save(mmseg_checkpoint(ref), tmp_path / "mm.pth"))
    raw = save(state_of(loaded.model), tmp_path / "raw.pt")
    again = load_checkpoint(raw)
    assert again.layout is Layout.OURS
    x = image()
    assert_outputs_equal(our_outputs(again, x)[:1], reference_outputs(ref, x))


# --- layout override ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["official", Layout.OFFICIAL])
def test_layout_override(tmp_path, layout):
    ref = official_reference()
    path = save({"state_dict": state_of(ref)}, tmp_path / "ck.pth")
    loaded = load_checkpoint(path, layout=layout)
    assert loaded.layout is Layout.OFFICIAL
    x = image()
    assert_outputs_equal(our_outputs(loaded, x), reference_outputs(ref, x))


@pytest.mark.parametrize("layout", ["mmseg", "ours", "bogus"])
def test_wrong_layout_override_on_official(tmp_path, layout):
    path = save({"state_dict": state_of(official_reference())}, tmp_path / "ck.pth")
    with pytest.raises(BadInputError) as info:
        load_checkpoint(path, layout=layout)
    assert str(path) in str(info.value)
    if layout == "bogus":
        assert "bogus" in str(info.value)


@pytest.mark.parametrize("layout", ["official", "ours"])
def test_wrong_layout_override_on_mmseg(tmp_path, layout):
    path = save(mmseg_checkpoint(mmseg_reference()), tmp_path / "ck.pth")
    with pytest.raises(BadInputError):
        load_checkpoint(path, layout=layout)


def test_unrecognised_layout(tmp_path):
    path = save({"state_dict": {"encoder.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(BadInputError, match="unrecognised checkpoint layout") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_class_names_override_count_checked(tmp_path):
    path = save(state_of(official_reference()), tmp_path / "ck.pth")
    with pytest.raises(BadInputError, match="class names"):
        load_checkpoint(path, class_names=["a", "b"])


# --- strictness -----------------------------------------------------------------------------------------

BACKBONE_KEY = "pretrained.layer2.1.conv2.weight"


def test_missing_tensor(tmp_path):
    sd = state_of(official_reference())
    del sd[BACKBONE_KEY]
    path = save(sd, tmp_path / "ck.pth")
    with pytest.raises(BadInputError, match="missing") as info:
        load_checkpoint(path)
    assert "layer2.1.conv2.weight" in str(info.value)
    assert str(path) in str(info.value)


def test_unexpected_tensor(tmp_path):
    sd = state_of(official_reference())
    sd["pretrained.layer4.0.se.fc1.weight"] = torch.zeros(4, 4)
    path = save(sd, tmp_path / "ck.pth")
    with pytest.raises(BadInputError, match="unexpected") as info:
        load_checkpoint(path)
    assert "layer4.0.se.fc1.weight" in str(info.value)


def test_misshaped_tensor(tmp_path):
    sd = state_of(official_reference())
    sd[BACKBONE_KEY] = torch.zeros(sd[BACKBONE_KEY].shape[0], sd[BACKBONE_KEY].shape[1], 1, 1)
    path = save(sd, tmp_path / "ck.pth")
    with pytest.raises(BadInputError, match="mis-shaped") as info:
        load_checkpoint(path)
    assert "layer2.1.conv2.weight" in str(info.value)


def test_mmseg_missing_and_misshaped(tmp_path):
    sd = mmseg_checkpoint(mmseg_reference())
    del sd["state_dict"]["decode_head.pam.query_project.weight"]
    sd["state_dict"]["decode_head.cam_out_conv.bn.weight"] = torch.ones(3)
    path = save(sd, tmp_path / "ck.pth")
    with pytest.raises(BadInputError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "pam.query_project.weight" in message and "missing" in message
    assert "cam_out_conv.bn.weight" in message and "mis-shaped" in message


def test_missing_official_head_tensor_named_as_in_file(tmp_path):
    sd = state_of(official_reference())
    del sd["head.sa.query_conv.bias"]
    path = save(sd, tmp_path / "ck.pth")
    with pytest.raises(BadInputError) as info:
        load_checkpoint(path)
    assert "sa.query_conv.bias" in str(info.value)


@pytest.mark.parametrize("which", ["official", "mmseg"])
def test_misshaped_gamma(tmp_path, which):
    if which == "official":
        sd = state_of(official_reference())
        key = "head.sa.gamma"
    else:
        sd = mmseg_checkpoint(mmseg_reference())["state_dict"]
        key = "decode_head.pam.gamma.scale"
    sd[key] = torch.full((2,), 0.5)
    path = save({"state_dict": sd}, tmp_path / "ck.pth")
    with pytest.raises(BadInputError, match="gamma"):
        load_checkpoint(path)


def test_aux_classifiers_absent_loads_with_note(tmp_path):
    ref = official_reference()
    sd = {k: v for k, v in state_of(ref).items() if not k.startswith(("head.conv6.1.", "head.conv7.1."))}
    assert len(sd) == len(ref.state_dict()) - 4
    path = save(sd, tmp_path / "ck.pth")
    loaded = load_checkpoint(path)
    assert any("auxiliary classifiers absent" in note for note in loaded.notes), loaded.notes
    x = image()
    assert_outputs_equal(our_outputs(loaded, x)[:1], reference_outputs(ref, x)[:1])


def test_fused_classifier_absent_is_an_error(tmp_path):
    sd = {k: v for k, v in state_of(official_reference()).items() if not k.startswith("head.conv8.")}
    with pytest.raises(BadInputError, match="classifier"):
        load_checkpoint(save(sd, tmp_path / "ck.pth"))


# --- safety and unreadable files ------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("where", ["top", "in-state-dict"])
def test_code_executing_checkpoint_refused(tmp_path, zip_format, where):
    marker = tmp_path / "pwned"
    sd = state_of(official_reference())
    payload = {"state_dict": sd, "epoch": 1}
    if where == "top":
        payload["hook"] = _RunsCode(marker)
    else:
        sd["head.sa.evil"] = _RunsCode(marker)
    path = tmp_path / "evil.pth"
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    assert not marker.exists()

    with pytest.raises(BadInputError) as info:
        load_checkpoint(path)

    message = str(info.value)
    assert "refused" in message
    assert str(path) in message
    assert not marker.exists()


def test_missing_path(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(BadInputError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_directory_path(tmp_path):
    with pytest.raises(BadInputError) as info:
        load_checkpoint(tmp_path)
    assert str(tmp_path) in str(info.value)


def _random_bytes(n: int = 4096, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corrupt_file(tmp_path, seed):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(_random_bytes(seed=seed))
    with pytest.raises(BadInputError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_truncated_checkpoint(tmp_path):
    good = save(state_of(official_reference()), tmp_path / "good.pth")
    path = tmp_path / "truncated.pth"
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_corrupt_file_not_reported_as_code_execution(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(bytes([201]) * 64)  # "Unsupported operand 201": garbage, not a global
    with pytest.raises(BadInputError) as info:
        load_checkpoint(path)
    assert "execute" not in str(info.value)
    assert "not a readable PyTorch checkpoint" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            "version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 170000000\n",
            id="git-lfs-pointer",
        ),
        pytest.param("<!DOCTYPE html>\n<html><body>Not Found</body></html>\n", id="html"),
        pytest.param('{"state_dict": {}}\n', id="json"),
        pytest.param("", id="empty"),
        pytest.param("this is not a checkpoint\n", id="plain-IndexError"),
        pytest.param("hello world\n", id="hello-KeyError"),
    ],
)
def test_text_file(tmp_path, text):
    path = tmp_path / "model.pth"
    path.write_text(text)
    with pytest.raises(BadInputError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "obj, match",
    [
        ([torch.zeros(1)], "expected a dict"),
        (torch.zeros(3), "expected a dict"),
        ({"epoch": 1, "state_dict": {}, "best_pred": 0.1}, "no tensors"),
    ],
    ids=["list", "tensor", "no-tensors"],
)
def test_not_a_state_dict(tmp_path, obj, match):
    path = save(obj, tmp_path / "ck.pth")
    with pytest.raises(BadInputError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
