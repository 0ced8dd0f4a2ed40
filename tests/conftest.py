"""Shared fixtures: a tiny DANet with active attention, its checkpoint, and small labeled data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from danet_deploy.checkpoints import save_checkpoint
from danet_deploy.config import ModelConfig
from danet_deploy.data.synthetic import generate_scene, write_cityscapes_split
from danet_deploy.model import DANet, build_danet
from danet_deploy.model.danet import ChannelAttention, PositionAttention
from danet_deploy.onnx_export import ExportOptions, export_onnx

from .support.tensorrt_gate import TensorRTGate, tensorrt_required

TINY = ModelConfig(depth=18, base_width=8, stem_channels=(8, 8, 16), input_size=(64, 128))


def randomize(model: DANet, seed: int = 0) -> DANet:
    """Random BN statistics, non-zero attention gammas and random light-attention gates (their upstream
    initialisation makes them constant), so every part of the graph shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        if isinstance(getattr(model.head, "pam", None), PositionAttention):
            model.head.pam.gamma.fill_(0.5)
        if isinstance(getattr(model.head, "cam", None), ChannelAttention):
            model.head.cam.gamma.fill_(0.3)
        if hasattr(model.head, "sa"):
            for name in ("cweight", "cbias", "sweight", "sbias"):
                getattr(model.head.sa, name).copy_(torch.randn(getattr(model.head.sa, name).shape, generator=g))
            model.head.sa.gn.weight.copy_(torch.rand(model.head.sa.gn.weight.shape, generator=g) + 0.5)
            model.head.sa.gn.bias.copy_(torch.randn(model.head.sa.gn.bias.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model() -> DANet:
    torch.manual_seed(0)
    return randomize(build_danet(TINY))


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_model: DANet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture(scope="session")
def fp32_onnx(tiny_model: DANet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny DANet exported to ONNX (static 1 x 3 x 64 x 128), as `danet-deploy export` writes it."""
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny_model, TINY, path, ExportOptions(), generate_scene(1, 64, 128).image)
    return path


@pytest.fixture(scope="session")
def dynamic_fp32_onnx(tiny_model: DANet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny DANet exported with dynamic batch, height and width. Shared: copy it before writing beside it."""
    path = tmp_path_factory.mktemp("onnx") / "tiny.dynamic.onnx"
    export_onnx(tiny_model, TINY, path, ExportOptions(dynamic=True), generate_scene(1, 64, 128).image)
    return path


@pytest.fixture(scope="session")
def city_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three labeled synthetic scenes in the Cityscapes layout (labelTrainIds and labelIds)."""
    return write_cityscapes_split(tmp_path_factory.mktemp("city"), "val", 3, 64, 128, label_ids=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --- GPU CI: with DANET_DEPLOY_REQUIRE_TENSORRT=1 a skipped (or absent) tensorrt test fails the run --------------

_GATE = TensorRTGate(tensorrt_required())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _GATE.report(report.nodeid, report.keywords, report.when, report.outcome)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    selected = "tensorrt" in (session.config.getoption("markexpr") or "")
    reason = _GATE.failure(selected)
    if reason is not None:
        session.config.get_terminal_writer().line(f"FAILED (tensorrt gate): {reason}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
