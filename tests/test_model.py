"""The model computes DANet as defined: PAM/CAM formulas, output stride 8, dilations, any input size."""

from __future__ import annotations

import pytest
import torch

from danet_deploy.config import ModelConfig
from danet_deploy.model import ChannelAttention, PositionAttention, build_danet

from .conftest import TINY, randomize


def test_pam_matches_the_formula() -> None:
    torch.manual_seed(1)
    pam = PositionAttention(32).eval()
    with torch.no_grad():
        pam.gamma.fill_(0.7)
    x = torch.randn(2, 32, 5, 7)
    q = pam.query_project(x).flatten(2)  # B, C', N
    k = pam.key_project(x).flatten(2)
    v = pam.value_project(x).flatten(2)  # B, C, N
    s = torch.softmax(torch.einsum("bcn,bcm->bnm", q, k), dim=-1)  # no 1/sqrt(d) scaling
    e = torch.einsum("bcm,bnm->bcn", v, s).reshape(x.shape)  # E = V S^T
    torch.testing.assert_close(pam(x), 0.7 * e + x)


def test_cam_matches_the_formula_and_its_shift_invariance() -> None:
    torch.manual_seed(2)
    cam = ChannelAttention().eval()
    with torch.no_grad():
        cam.gamma.fill_(0.4)
    x = torch.randn(2, 16, 6, 5)
    flat = x.flatten(2)
    energy = flat @ flat.transpose(1, 2)
    as_trained = torch.softmax(energy.amax(-1, keepdim=True) - energy, -1)
    torch.testing.assert_close(as_trained, torch.softmax(-energy, -1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cam(x), 0.4 * (as_trained @ flat).reshape(x.shape) + x)


@pytest.mark.parametrize("size", [(64, 128), (61, 99), (33, 47)])
def test_output_has_input_size_and_feature_stride_8(size: tuple[int, int]) -> None:
    model = randomize(build_danet(TINY))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feature = model.backbone(x)
        logits = model(x)
    assert logits.shape == (1, TINY.num_classes, *size)
    assert feature.shape[-2:] == tuple(-(-s // 8) for s in size)  # ceil(s / 8)


@pytest.mark.parametrize(
    ("depth", "dilations", "expected_layer4"),
    [(50, (4, 8, 16), [4, 8, 16]), (50, (2, 4, 4), [2, 4, 4]), (101, (2, 4, 4), [2, 4, 4]), (18, (2, 4, 4), [2, 4])],
)
def test_dilations_per_block(depth: int, dilations: tuple[int, ...], expected_layer4: list[int]) -> None:
    cfg = ModelConfig(depth=depth, base_width=8, stem_channels=(8,), layer4_dilations=dilations)
    backbone = build_danet(cfg).backbone
    conv = "conv2" if cfg.bottleneck else "conv1"
    layer3 = [getattr(b, conv).dilation[0] for b in backbone.layer3]
    layer4 = [getattr(b, conv).dilation[0] for b in backbone.layer4]
    assert layer3 == [1] + [2] * (len(layer3) - 1)  # contracted first block, as both upstream projects
    assert layer4 == expected_layer4
    assert all(getattr(b, conv).stride == (1, 1) for b in [*backbone.layer3, *backbone.layer4])


def test_forward_train_returns_fused_and_both_aux_outputs() -> None:
    model = build_danet(TINY).train()
    outputs = model.forward_train(torch.randn(2, 3, 32, 48))
    assert [o.shape for o in outputs] == [torch.Size([2, 19, 32, 48])] * 3


def test_config_json_round_trip_and_validation() -> None:
    cfg = TINY.with_overrides(class_names=tuple(f"c{i}" for i in range(19)), align_corners=True)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="class names"):
        ModelConfig(num_classes=3)
    with pytest.raises(ValueError, match="depth"):
        ModelConfig(depth=42)
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_dict({"depth": 50, "colour": 1})
