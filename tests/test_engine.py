"""Engine stage without TensorRT: build plans per version path, profiles, option rules, sidecars, errors."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from danet_deploy.data.synthetic import generate_scene
from danet_deploy.engine.plan import BuildOptions, plan_build
from danet_deploy.engine.sidecar import EngineSidecar, RunningSystem, check_compatible, read_sidecar, write_sidecar
from danet_deploy.errors import BadInputError, DeployError
from danet_deploy.onnx_export import InputSpec

from .conftest import TINY

IMAGE = generate_scene(9, 64, 128).image


@pytest.fixture(scope="module")
def static_onnx(fp32_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's static tiny export, in this module's own folder (plans write beside it)."""
    return Path(shutil.copy(fp32_onnx, tmp_path_factory.mktemp("engine") / "static.onnx"))


@pytest.fixture(scope="module")
def dynamic_onnx(dynamic_fp32_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(shutil.copy(dynamic_fp32_onnx, tmp_path_factory.mktemp("engine") / "dynamic.onnx"))


@pytest.mark.parametrize(
    ("version", "precision", "path", "builder_flags", "network_suffix", "pinned"),
    [
        ("8.6", "fp16", "weakly typed", ["FP16", "OBEY_PRECISION_CONSTRAINTS"], ".onnx", True),
        ("10.3", "fp16", "weakly typed", ["FP16", "OBEY_PRECISION_CONSTRAINTS"], ".onnx", True),
        ("10.3", "int8", "weakly typed", ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"], "", True),
        ("10.14", "fp16", "strongly typed", [], "", False),
        ("11.4", "fp16", "strongly typed", [], "", False),
        ("11.4", "int8", "strongly typed", [], "", False),
        ("11.4", "fp32", "strongly typed", [], ".onnx", False),
    ],
)
def test_precision_path_per_tensorrt_version(
    static_onnx: Path,
    version: str,
    precision: str,
    path: str,
    builder_flags: list[str],
    network_suffix: str,
    pinned: bool,
) -> None:
    options = BuildOptions(precision=precision, calib="calibration/images" if precision == "int8" else None)
    plan = plan_build(static_onnx, options, version)
    assert plan.path == path
    assert plan.builder_flags == builder_flags
    assert plan.network_flags == (["STRONGLY_TYPED"] if path == "strongly typed" else [])
    # A prepared network ONNX goes to a scratch folder chosen at build time ("" until then), never beside the input.
    assert plan.network_onnx == (str(static_onnx) if network_suffix else "") and bool(plan.prepare) != bool(
        network_suffix
    )
    if pinned:  # the whole CAM chain: energy MatMul, ReduceMax, the Expand of the row max, Sub, Softmax, product
        assert len(plan.pinned_fp32_layers) == 6 and any("expand" in n.lower() for n in plan.pinned_fp32_layers)
    else:
        assert plan.pinned_fp32_layers == []


def test_profiles(static_onnx: Path, dynamic_onnx: Path) -> None:
    assert plan_build(static_onnx, BuildOptions(), "10.3").profile == {"image": [[1, 3, 64, 128]] * 3}
    # Dynamic model: explicit ranges; opt defaults to min, max to opt; the default is the config size, batch 1.
    plan = plan_build(dynamic_onnx, BuildOptions(min_shape=(1, 3, 256, 512), max_shape=(4, 3, 512, 1024)), "10.3")
    assert plan.profile["image"] == [[1, 3, 256, 512], [1, 3, 256, 512], [4, 3, 512, 1024]]
    assert plan_build(dynamic_onnx, BuildOptions(), "10.3").profile["image"][0] == [1, 3, 64, 128]
    with pytest.raises(BadInputError, match="min <= opt <= max"):
        plan_build(dynamic_onnx, BuildOptions(min_shape=(2, 3, 64, 64), max_shape=(1, 3, 64, 64)), "10.3")
    with pytest.raises(BadInputError, match="dim 2 is fixed to 64"):
        plan_build(static_onnx, BuildOptions(min_shape=(1, 3, 128, 128)), "10.3")


@pytest.mark.parametrize(
    ("options", "version", "message"),
    [
        (BuildOptions(precision="int8"), "11.4", "needs calibration images"),
        (BuildOptions(dla_core=0), "10.3", "DLA runs only FP16 or INT8"),
        (BuildOptions(gpu_fallback=True), "10.3", "GPU fallback only applies to a DLA build"),
        (BuildOptions(precision="fp16", dla_core=0, gpu_fallback=True), "10.13", "has no DLA support"),
        (BuildOptions(precision="fp16", dla_core=0, gpu_fallback=True), "11.4.0.106", "11.4.0 has no DLA support"),
        (BuildOptions(precision="fp16", dla_core=0), "10.3", "allow GPU fallback"),
        (BuildOptions(hardware_compat="same-cc"), "10.3", "needs TensorRT >= 10.9"),
        (BuildOptions(hardware_compat="turing+"), "10.3", "ampere+ or same-cc"),
        (BuildOptions(builder_opt_level=9), "10.3", "0..5"),
    ],
)
def test_impossible_requests_are_refused(static_onnx: Path, options: BuildOptions, version: str, message: str) -> None:
    with pytest.raises(BadInputError, match=re.escape(message)):
        plan_build(static_onnx, options, version)


def test_dla_plan_notes(static_onnx: Path) -> None:
    plan = plan_build(static_onnx, BuildOptions(precision="fp16", dla_core=0, gpu_fallback=True), "10.3")
    assert plan.options.dla_core == 0 and any("fall back to the GPU" in n for n in plan.notes)


def _sidecar(**changes: object) -> EngineSidecar:
    base = EngineSidecar(
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        cuda_version="12.6",
        precision="fp16",
        build_path="weakly typed",
        profiles=[{"image": [[1, 3, 64, 128]] * 3}],
        source_onnx="m.onnx",
        source_onnx_sha256="a" * 64,
        network_onnx_sha256="a" * 64,
        model_config=TINY.to_dict(),
        build_options={},
        build_seconds=1.0,
        engine_sha256="b" * 64,
        created="2026-11-21T00:00:00+00:00",
        input_spec=InputSpec(batch=1, height=64, width=128).to_dict(),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_sidecar_round_trip_and_corrupt(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    write_sidecar(engine, _sidecar())
    assert asdict(read_sidecar(engine)) == json.loads(json.dumps(asdict(_sidecar())))  # tuples come back as lists
    assert json.loads((tmp_path / "m.engine.json").read_text())["compute_capability"] == "8.7"
    (tmp_path / "m.engine.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not a valid engine sidecar"):
        read_sidecar(engine)
    with pytest.raises(BadInputError, match="no sidecar"):
        read_sidecar(tmp_path / "other.engine")


@pytest.mark.parametrize(
    ("sidecar", "running", "error"),
    [
        (_sidecar(), RunningSystem("10.3.0", "Orin", "8.7"), None),
        (_sidecar(), RunningSystem("10.4.1", "Orin", "8.7"), "rebuild: built with TensorRT 10.3.0, running 10.4.1"),
        (
            _sidecar(tensorrt_version="10.3.0.30"),
            RunningSystem("10.3.0.26", "Orin", "8.7"),
            "rebuild: built with TensorRT 10.3.0.30, running 10.3.0.26",
        ),
        (_sidecar(tensorrt_version="10.3.0.26"), RunningSystem("10.3.0.26", "Orin", "8.7"), None),
        # Version-compatible engines run on later releases of the same major and the next one (8 -> 10, 10 -> 11).
        (
            _sidecar(tensorrt_version="8.6.1.6", build_options={"version_compatible": True}),
            RunningSystem("10.3.0.26", "Orin", "8.7"),
            None,
        ),
        (
            _sidecar(tensorrt_version="8.6.1.6", build_options={"version_compatible": True}),
            RunningSystem("11.4.0.106", "Orin", "8.7"),
            "8.x >= 8.6.1.6 and 10.x",
        ),
        (
            _sidecar(build_options={"version_compatible": True}),
            RunningSystem("10.2.0", "Orin", "8.7"),
            "running 10.2.0",
        ),
        (_sidecar(), RunningSystem("10.3.0", "NVIDIA A100", "8.0"), "SM 8.7"),
        (_sidecar(build_options={"version_compatible": True}), RunningSystem("10.8.0", "Orin", "8.7"), None),
        (_sidecar(build_options={"version_compatible": True}), RunningSystem("11.4.0", "Orin", "8.7"), None),
        (
            _sidecar(tensorrt_version="11.4.0", build_options={"version_compatible": True}),
            RunningSystem("10.16.0", "Orin", "8.7"),
            "11.x >= 11.4.0",
        ),
        (_sidecar(build_options={"hardware_compat": "ampere+"}), RunningSystem("10.3.0", "NVIDIA L4", "8.9"), None),
        (_sidecar(build_options={"hardware_compat": "ampere+"}), RunningSystem("10.3.0", "Tesla T4", "7.5"), "Ampere"),
        (_sidecar(build_options={"hardware_compat": "same-cc"}), RunningSystem("10.3.0", "Other", "8.6"), "8.7"),
    ],
)
def test_mismatch_detection(sidecar: EngineSidecar, running: RunningSystem, error: str | None) -> None:
    if error is None:
        check_compatible(sidecar, running, "m.engine")
    else:
        with pytest.raises(DeployError, match=re.escape(error)) as raised:
            check_compatible(sidecar, running, "m.engine")
        if "rebuild" in error:  # refused before deserializing, as bad input (never TensorRT's internal error)
            assert raised.value.exit_code == 2


def test_same_compute_capability_other_gpu_model_is_a_warning() -> None:
    warnings = check_compatible(_sidecar(), RunningSystem("10.3.0", "Jetson AGX Orin 64GB", "8.7"), "m.engine")
    assert warnings and "rebuild" in warnings[0]


@pytest.mark.slow
def test_cli_without_tensorrt(static_onnx: Path, tmp_path: Path) -> None:
    from danet_deploy.engine.build import require_tensorrt

    from .support.cli import assert_one_line_error, run

    try:
        require_tensorrt()
        pytest.skip("TensorRT is installed here: the missing-TensorRT error cannot be shown")
    except DeployError:
        pass
    engine = tmp_path / "m.engine"
    assert_one_line_error(
        run("build-engine", static_onnx, "--fp16", "-o", engine),
        3,
        "TensorRT is not installed",
        "danet-deploy[tensorrt]",
    )
    assert list(tmp_path.iterdir()) == []
    result = run(
        "build-engine",
        static_onnx,
        "--fp16",
        "--dry-run",
        "--tensorrt-version",
        "10.3",
        "--plan-json",
        tmp_path / "plan.json",
    )
    assert result.returncode == 0, result.stderr
    assert "weakly typed" in result.stdout and "pinned FP32" in result.stdout
    assert json.loads((tmp_path / "plan.json").read_text())["builder_flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    write_sidecar(engine, _sidecar())
    engine.write_bytes(np.zeros(16, np.uint8).tobytes())
    assert_one_line_error(run("verify", "--engine", engine, "--data", tmp_path), 3, "TensorRT is not installed")


@pytest.mark.slow
def test_prepared_network_goes_to_a_scratch_folder_or_a_named_new_file(static_onnx: Path, tmp_path: Path) -> None:
    """The step before TensorRT runs here: the plan's FP16 network ONNX is produced by the precision stage, in the
    scratch folder the build gives it; a user's `m.fp16.onnx` beside the input is never replaced."""
    import shutil

    from danet_deploy.artifact import OnnxModel
    from danet_deploy.steps.engine import prepare_network

    source = tmp_path / "m.onnx"
    shutil.copy(static_onnx, source)
    users = tmp_path / "m.fp16.onnx"
    users.write_bytes(b"the user's own file")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    plan = prepare_network(plan_build(source, BuildOptions(precision="fp16"), "11.4"), scratch)
    assert Path(plan.network_onnx).parent == scratch and OnnxModel.load(plan.network_onnx).precision == "fp16"
    assert users.read_bytes() == b"the user's own file"
    named = BuildOptions(precision="fp16", network_onnx=str(users))
    with pytest.raises(BadInputError, match="exists already"):
        prepare_network(plan_build(source, named, "11.4"), scratch)
    assert users.read_bytes() == b"the user's own file"


def test_sidecar_records_the_input_spec_instead_of_guessing_it() -> None:
    spec = InputSpec(layout="NHWC", dtype="uint8", batch=1, height=64, width=128)
    sidecar = _sidecar(input_spec=spec.to_dict())
    assert sidecar.spec == spec and sidecar.spec.static_size == (64, 128) and sidecar.spec.uint8
    with pytest.raises(BadInputError, match="rebuild"):
        _ = _sidecar(input_spec={}).spec


@pytest.mark.slow
def test_inspect_engine_without_tensorrt_shows_the_sidecar(tmp_path: Path) -> None:
    from danet_deploy.engine.audit import audit_engine, parse_layer_information
    from danet_deploy.engine.system import require_tensorrt

    from .support.cli import run

    try:
        require_tensorrt()
        pytest.skip("TensorRT is installed here: inspect would read the engine itself")
    except DeployError:
        pass
    layers = parse_layer_information((Path(__file__).parent / "data" / "engine_layers_fp16_trt10.json").read_text())
    audit = audit_engine(layers, "fp16", ["/head/cam/MatMul", "/head/cam/Softmax"])
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan bytes")
    write_sidecar(
        engine,
        _sidecar(
            engine_layers=audit.to_dict(),
            platform="Jetson AGX Orin Developer Kit (JetPack 6.2, Jetson Linux 36.4.3)",
            build_options={"workspace_mib": 512},
        ),
    )
    result = run("inspect", engine, "--json", tmp_path / "inspect.json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{engine}: TensorRT 10.3.0 engine, fp16 (weakly typed build)"
    assert "Orin (SM 8.7), Jetson AGX Orin Developer Kit (JetPack 6.2, Jetson Linux 36.4.3), CUDA 12.6" in lines[1]
    assert "  options        workspace_mib=512" in lines
    assert "  layers (build) FP16 4, FP32 2 compute layers; pinned FP32 2/2 confirmed" in lines
    assert any("sidecar only: TensorRT is not installed" in line for line in lines)
    assert any("not the one its sidecar describes" in line for line in lines)  # engine_sha256 "b" differs
    saved = json.loads((tmp_path / "inspect.json").read_text())
    assert saved["sidecar"]["engine_layers"]["compute_layers"] == {"FP16": 4, "FP32": 2}
    assert saved["live_layers"] is None
    assert_missing = run("inspect", tmp_path / "other.engine")
    assert assert_missing.returncode == 2 and "no such engine file" in assert_missing.stderr


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"profiles": None}, "profiles"),
        ({"profiles": [{"image": [[1, 3, 64, 128]] * 3}] * 2}, "profiles"),
        ({"profiles": [{"image": [[1, 3, 64, 128]] * 2}]}, "profiles[0]['image']"),
        ({"profiles": [{"image": [[1, 3, 64, 128], [1, 3, 32, 128], [1, 3, 64, 128]]}]}, "profiles[0]['image']"),
        ({"precision": "int4"}, "precision"),
        ({"schema": 99}, "schema"),
        ({"schema": "2"}, "schema"),
        ({"gpu_memory_bytes": -1}, "gpu_memory_bytes"),
        ({"gpu_memory_bytes": 1.5}, "gpu_memory_bytes"),
        ({"engine_sha256": ""}, "engine_sha256"),
        ({"build_seconds": "fast"}, "build_seconds"),
        ({"tensorrt_version": 10.3}, "tensorrt_version"),
        ({"compute_capability": "sm87"}, "compute_capability"),
        ({"build_path": "typed"}, "build_path"),
        ({"model_config": []}, "model_config"),
        ({"pinned_fp32_layers": "a,b"}, "pinned_fp32_layers"),
        ({"build_options": {"dla_core": "1"}}, "build_options.dla_core"),
        ({"build_options": {"version_compatible": 1}}, "build_options.version_compatible"),
        ({"build_options": {"hardware_compat": "turing+"}}, "build_options.hardware_compat"),
        ({"engine_layers": {"compute_layers": {"FP16": -2}, "total_layers": 3}}, "engine_layers"),
        ({"engine_layers": {"nonsense": 1}}, "engine_layers"),
    ],
)
def test_sidecar_with_a_wrong_field_is_bad_input_naming_file_and_field(
    tmp_path: Path, change: dict, field: str
) -> None:
    """One validator, run whenever a sidecar is read: exact types and ranges, exit 2 naming the file and field."""
    engine = tmp_path / "m.engine"
    data = {**json.loads(json.dumps(asdict(_sidecar()))), **change}
    (tmp_path / "m.engine.json").write_text(json.dumps(data))
    with pytest.raises(BadInputError) as raised:
        read_sidecar(engine)
    message = str(raised.value)
    assert raised.value.exit_code == 2 and "\n" not in message
    assert message.startswith(f"{tmp_path / 'm.engine.json'}: not a valid engine sidecar: {field} ")


def test_sidecar_with_a_missing_field_names_it(tmp_path: Path) -> None:
    data = json.loads(json.dumps(asdict(_sidecar())))
    del data["engine_sha256"]
    (tmp_path / "m.engine.json").write_text(json.dumps(data))
    with pytest.raises(BadInputError, match="engine_sha256 must be present"):
        read_sidecar(tmp_path / "m.engine")


def test_runner_refuses_an_image_outside_the_engine_profile(tmp_path: Path) -> None:
    """Checked before TensorRT sees it (Polygraphy would fail with "failed to set shape", an internal error)."""
    from danet_deploy.runners.tensorrt import TensorRTRunner

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, _sidecar(profiles=[{"image": [[1, 3, 64, 64], [1, 3, 64, 128], [1, 3, 128, 128]]}]))
    runner = TensorRTRunner(engine)
    runner.check_shape((1, 3, 64, 96))
    with pytest.raises(BadInputError, match=re.escape("input 1x3x256x512 is outside the engine's profile for image")):
        runner.check_shape((1, 3, 256, 512))


def test_dla_plan_is_implicit_int8_with_a_static_profile(static_onnx: Path, dynamic_onnx: Path) -> None:
    """DLA runs INT8 only by implicit quantization: the FP32 network, INT8 + FP16 flags, scales from calibration."""
    options = BuildOptions(precision="int8", calib="calibration/images", dla_core=1, gpu_fallback=True)
    plan = plan_build(static_onnx, options, "10.3")
    assert plan.implicit_int8 and plan.network_onnx == str(static_onnx)
    assert plan.builder_flags == ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert any("calibration cache" in step for step in plan.prepare)
    ranged = replace(options, min_shape=(1, 3, 64, 128), max_shape=(1, 3, 128, 256))
    with pytest.raises(BadInputError, match=re.escape("DLA needs a static profile (min = opt = max)")):
        plan_build(dynamic_onnx, ranged, "10.3")
    # TensorRT 11.4.1+: strongly typed DLA (explicit Q/DQ), as NVIDIA documents it for JetPack 7.2.2+.
    strongly = plan_build(static_onnx, options, "11.4.1")
    assert not strongly.implicit_int8 and strongly.path == "strongly typed"
    assert any("JetPack 7.2.2" in note for note in strongly.notes)


def test_layers_per_device_are_shown_by_inspect_and_verify_lines() -> None:
    """A DLA build's sidecar records the layers per device; `inspect` and the `verify --engine` line show them."""
    from danet_deploy.engine.audit import EngineAudit
    from danet_deploy.report.text import engine_audit_line, engine_inspect_lines

    audit = EngineAudit(
        compute_layers={"INT8": 30, "FP32": 6},
        total_layers=40,
        devices={"GPU": {"FP32": 6}, "DLA": {"INT8": 30}},
    )
    sidecar = _sidecar(precision="int8", engine_layers=audit.to_dict(), build_options={"dla_core": 0})
    line = engine_audit_line("tensorrt:m.engine", sidecar)
    assert "(GPU: FP32 6; DLA: INT8 30)" in line
    lines = engine_inspect_lines("m.engine", sidecar)
    assert "  devices        GPU: FP32 6; DLA: INT8 30" in lines
    assert any(text.startswith("  options        dla_core=0") for text in lines)  # core 0 is not "unset"


def test_a_missing_calibration_folder_fails_the_dry_run(static_onnx: Path, tmp_path: Path) -> None:
    """`build-engine --int8 --calib /missing --dry-run` is exit 2, as the build would be: not a plan on nothing."""
    from danet_deploy.errors import OptionError
    from danet_deploy.steps.engine import plan_engine

    options = BuildOptions(precision="int8", calib=str(tmp_path / "missing"))
    with pytest.raises(OptionError, match="no such folder of calibration images") as raised:
        plan_engine(static_onnx, options, "10.3", dry_run=True)
    assert raised.value.exit_code == 2 and raised.value.as_flag("--calib").startswith("--calib ")
