"""Contract tests: the project's real build and load path against the TensorRT Python API of each release.

The plan (`engine.plan`), Polygraphy's loaders (`NetworkFromOnnxPath`, `SetLayerPrecisions`, `CreateConfig`,
`PostprocessConfig`, `EngineBytesFromNetwork`, `EngineFromBytes`, `TrtRunner`, all unmodified), our builder
configuration, the precision audit, the sidecar and the TensorRT runner's activation run against a stand-in
`tensorrt` module that has exactly one release's names (tests/support/trt_standin.py, generated from
tests/data/tensorrt_api_surface.json) and records every use. Releases: 8.6.1 (JetPack 6.0), 10.3 (JetPack
6.1/6.2), 10.13.3 (JetPack 7.0/7.1), 10.14, 11.0 and 11.1; configurations: fp16, int8, int8 on DLA core 1 with
GPU fallback, and the option set (workspace, timing cache, version compatible, optimization level, hardware
compatibility).

What this proves: every TensorRT name touched exists in that release (or is a feature probe that Polygraphy or
we guard with `except AttributeError` / `hasattr`, listed in GUARDED_PROBES), the calls come in an order that
works, and the configuration handed to the builder (network flags, builder flags, pinned layers, profile, DLA
core, memory pool, timing cache, optimization and compatibility levels, strongly typed or not) is what the
plan printed. What it does not prove: anything TensorRT computes. Parsing, kernels, precision and engine
contents are faked by the stand-in (its docstring lists each fake); the layer precisions the audit reads here
are the stand-in's echo of the build request. The CUDA parts are faked too (the GPU the CUDA runtime reports,
Polygraphy's CUDA stream): they are not TensorRT API. Real engines are built and run only by
tests/test_tensorrt_gpu.py on a GPU.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from danet_deploy import api
from danet_deploy.artifact import OnnxModel
from danet_deploy.engine import system
from danet_deploy.engine.build import build_engine
from danet_deploy.engine.calibration_cache import read_calibration_cache
from danet_deploy.engine.plan import BuildOptions, BuildPlan, parse_version, pinned_layers, plan_build
from danet_deploy.engine.sidecar import read_sidecar
from danet_deploy.engine.system import Gpu, running_system
from danet_deploy.errors import BadInputError, CheckFailedError
from danet_deploy.options import InspectOptions, Int8Options
from danet_deploy.runners.tensorrt import TensorRTRunner

from .support.fake_system import H100, ORIN, FakeCuda, FakeStream, jetson_root
from .support.trt_standin import RELEASES, SURFACE, Recorder, fake_layer_information, make_tensorrt

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = list(RELEASES)  # 8.6.1, 10.3.0, 10.13.3, 10.14.1, 11.0.0, 11.1.0, 11.4.0, 11.4.1
CONFIGS = ["fp16", "int8", "int8-dla1-fallback", "options"]

# Names absent from some releases that are touched only as feature probes, each guarded by its caller:
GUARDED_PROBES = {
    # ours: engine/build.py `_progress_monitor`, `hasattr(trt, "IProgressMonitor")` (added in 10.0)
    "tensorrt.IProgressMonitor",
    # Polygraphy CreateConfig: layers with a precision set, in `try ... except AttributeError` (gone in 11)
    "ILayer.precision_is_set",
    # Polygraphy try_setup_polygraphy_calibrator / str_from_config: `except AttributeError` / `hasattr` (gone in 11)
    "IBuilderConfig.int8_calibrator",
    # Polygraphy str_from_config: quantization flags inside `contextlib.suppress(AttributeError)` (gone in 11)
    "tensorrt.QuantizationFlag",
    # Polygraphy str_from_config: `hasattr(network, "get_flag")` (not in 8.6)
    "INetworkDefinition.get_flag",
    # Polygraphy TrtRunner.activate: `hasattr(self.context, "set_all_tensors_debug_state")` (added in 10.0)
    "IExecutionContext.set_all_tensors_debug_state",
    # Polygraphy datatype/tensorrt.py `_get_mapping`: `util.try_getattr(trt, ...)` for data types newer than the
    # release (its calibrator maps the network's input types through it: implicit INT8)
    "tensorrt.int64",
    "tensorrt.bfloat16",
    "tensorrt.int4",
    "tensorrt.fp4",
    "tensorrt.e8m0",
}


def _reset_polygraphy() -> None:
    """Polygraphy's lazy `tensorrt` imports cache the module they first loaded, and its logger subclasses that
    module's ILogger: forget both so the next stand-in is the one used."""
    import polygraphy.backend.trt.util as trt_util

    for module in [m for name, m in list(sys.modules.items()) if name.startswith("polygraphy") and m is not None]:
        for value in list(vars(module).values()):
            if type(value).__name__ == "LazyModule":
                loaded = value.__dict__.get("module")
                if loaded is not None and getattr(loaded, "__name__", None) == "tensorrt":
                    object.__setattr__(value, "module", None)
    trt_util.TRT_LOGGER = None


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[callable]:
    """Install a stand-in release as `tensorrt` (and a fake CUDA device); returns its recorder."""
    import polygraphy.cuda

    def install(
        version: str, gpu: Gpu = H100, layer_information=fake_layer_information, full_version: str | None = None
    ) -> Recorder:
        module, recorder = make_tensorrt(version, layer_information, full_version)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        monkeypatch.setattr(system, "cuda_devices", lambda: FakeCuda(gpu))
        _reset_polygraphy()
        return recorder

    monkeypatch.setattr(polygraphy.cuda, "Stream", FakeStream)
    yield install
    _reset_polygraphy()


@pytest.fixture(scope="module")
def networks(fp32_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.onnx (FP32) with the FP16 and Q/DQ INT8 networks the plans parse beside it, made by the real
    precision stage (ONNX Runtime on the CPU)."""
    folder = tmp_path_factory.mktemp("contract")
    shutil.copy(fp32_onnx, folder / "tiny.onnx")
    api.quantize(folder / "tiny.onnx", folder / "tiny.fp16.onnx", api.Fp16Options())
    calib = api.Int8Options(calib=ROOT / "calibration" / "images", count=8, cache_dir=folder / "cache")
    api.quantize(folder / "tiny.onnx", folder / "tiny.int8.onnx", calib)
    # Strongly typed INT8: FP16 outside Q/DQ, the CAM chain FP32 (the same calibration, from the cache).
    api.quantize(folder / "tiny.onnx", folder / "tiny.int8-fp16.onnx", replace(calib, unquantized="fp16"))
    # Implicit INT8 (DLA, 8.6): Q/DQ on every tensor, whose scales become the calibration cache.
    api.quantize(folder / "tiny.onnx", folder / "tiny.int8-every.onnx", replace(calib, every_tensor=True))
    return folder


@pytest.fixture
def prepared(networks: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """`steps.engine.prepare_network` as a build runs it, with the quantize step answered by the networks made once
    per module (the real precision stage made them): the plan's files, pins and scale check are the real code's."""
    from danet_deploy.steps import engine as engine_step

    def quantize(source, output, options, progress):
        int8 = isinstance(options, Int8Options)
        made = "int8-fp16" if int8 and options.unquantized == "fp16" else "int8" if int8 else "fp16"
        made = "int8-every" if int8 and options.every_tensor else made
        shutil.copy(networks / f"tiny.{made}.onnx", output)

    monkeypatch.setattr(engine_step, "quantize", quantize)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return lambda plan: engine_step.prepare_network(plan, scratch)


def _options(config: str, version: str, tmp_path: Path) -> BuildOptions:
    calib = str(ROOT / "calibration" / "images")
    if config == "fp16":
        return BuildOptions(precision="fp16")
    if config == "int8":
        return BuildOptions(precision="int8", calib=calib)
    if config == "int8-dla1-fallback":
        return BuildOptions(precision="int8", calib=calib, dla_core=1, gpu_fallback=True)
    same_cc = parse_version(version) >= (10, 9)
    return BuildOptions(
        precision="fp16",
        workspace_mib=512,
        timing_cache=str(tmp_path / "timing.cache"),
        version_compatible=True,
        builder_opt_level=4,
        hardware_compat="same-cc" if same_cc else "ampere+",
    )


def _enum_names(values: object) -> list[str]:
    return sorted(v.name for v in values)  # type: ignore[attr-defined]


def _assert_configuration_is_the_plan(plan: BuildPlan, recorder: Recorder) -> None:
    """The builder got exactly what the plan printed."""
    network = recorder.last("INetworkDefinition").__dict__["_state"]
    config = recorder.last("IBuilderConfig").__dict__["_state"]
    # Polygraphy adds EXPLICIT_BATCH below TensorRT 10 (the only mode from 10 on).
    explicit_batch = {"EXPLICIT_BATCH"} if parse_version(plan.tensorrt_version) < (10, 0) else set()
    expected_network = set(plan.network_flags) | explicit_batch
    assert set(_enum_names(network["flag_set"])) == expected_network
    options = plan.options
    expected = set(plan.builder_flags)
    expected |= {"VERSION_COMPATIBLE"} if options.version_compatible else set()
    expected |= {"GPU_FALLBACK"} if options.gpu_fallback else set()
    expected |= {"TF32"} if options.tf32 else set()  # allowed for FP32 layers, as trtexec does
    assert set(_enum_names(config["flag_set"])) == expected  # one of OBEY/PREFER at most: OBEY where the plan says
    assert "PREFER_PRECISION_CONSTRAINTS" not in _enum_names(config["flag_set"])
    layers = [layer.__dict__["_state"] for layer in network["layers"]]
    pinned = {layer["name"]: layer["precision"].name for layer in layers if "precision" in layer}
    assert pinned == dict.fromkeys(plan.pinned_fp32_layers, "FLOAT")
    (profile,) = config["profiles"]
    assert profile.__dict__["_state"]["shapes"] == plan.profile
    assert config["profiling_verbosity"].name == "DETAILED"
    dla = options.dla_core is not None
    assert config.get("DLA_core", -1) == (options.dla_core if dla else -1)
    assert getattr(config.get("default_device_type"), "name", "GPU") == ("DLA" if dla else "GPU")
    pools = {pool.name: size for pool, size in config["pools"].items()}
    assert pools == ({"WORKSPACE": options.workspace_mib << 20} if options.workspace_mib else {})
    assert config.get("builder_optimization_level", 3) == (options.builder_opt_level or 3)
    level = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY", None: "NONE"}[options.hardware_compat]
    # Implicit INT8: a calibrator whose cache TensorRT read; never one on an explicitly quantized network.
    assert (config.get("int8_calibrator") is not None) == plan.implicit_int8
    assert getattr(config.get("hardware_compatibility_level"), "name", "NONE") == level


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("version", VERSIONS)
def test_build_and_load_against_the_release_api(
    version: str, config: str, networks: Path, tmp_path: Path, standin: callable, prepared: callable
) -> None:
    gpu = ORIN if config == "int8-dla1-fallback" else H100
    recorder = standin(version, gpu)
    options = _options(config, version, tmp_path)
    if config == "int8-dla1-fallback" and ((10, 8) <= parse_version(version) < (11, 4) or version == "11.4.0"):
        with pytest.raises(BadInputError, match="has no DLA support"):
            plan_build(networks / "tiny.onnx", options, sys.modules["tensorrt"].__version__)
        return
    plan = prepared(plan_build(networks / "tiny.onnx", options, sys.modules["tensorrt"].__version__))
    assert Path(plan.network_onnx).is_file()
    # DLA INT8 on the weakly typed releases (and 8.6 INT8 from FP32) is implicit: the FP32 network, Q/DQ scales.
    implicit = config.startswith("int8") and (parse_version(version) < (10, 0) or config == "int8-dla1-fallback")
    assert plan.implicit_int8 == (implicit and parse_version(version) < (10, 12))
    if plan.implicit_int8:
        assert plan.network_onnx == str(networks / "tiny.onnx") and Path(plan.scales_onnx).is_file()
    # JetPack 7.2.2 is not in the Jetson Linux table (unknown releases are allowed; TensorRT counts the cores).
    release = "# R39 (release), REVISION: 2.0, GCID: 1, BOARD: generic, EABI: aarch64" if version == "11.4.1" else None
    root = (
        (jetson_root(tmp_path / "orin", release) if release else jetson_root(tmp_path / "orin"))
        if gpu is ORIN
        else tmp_path / "x86"
    )
    here = running_system(root=root)
    engine = tmp_path / "tiny.engine"
    sidecar = build_engine(plan, engine, lambda phase, step, total: None, system=here)  # with a progress monitor

    unguarded = [name for name in recorder.missing if name not in GUARDED_PROBES]
    assert unguarded == [], f"TensorRT {version} has no {unguarded}"
    assert recorder.gaps == []  # nothing the stand-in could not answer was swallowed by a bare `except`
    for name in set(recorder.missing):  # each probe really is absent from this release (or the list is stale)
        owner, _, member = name.partition(".")
        release = SURFACE[RELEASES[version]]
        names = (
            set(release["classes"]) | set(release["enums"])
            if owner == "tensorrt"
            else set(release["classes"].get(owner, []))
        )
        assert member not in names, name
    _assert_configuration_is_the_plan(plan, recorder)
    assert recorder.calls("Builder.build_serialized_network")
    (inspected,) = recorder.calls("EngineInspector.get_engine_information")
    assert inspected[0][0].name == "JSON"
    if config == "options":
        assert (tmp_path / "timing.cache").read_bytes() == b"standin timing cache"  # Polygraphy saved ours

    assert engine.is_file() and read_sidecar(engine) == sidecar
    wanted = {"fp16": "FP16", "int8": "INT8"}[plan.precision]
    assert sidecar.engine_layers["compute_layers"].get(wanted) and not sidecar.engine_layers["failures"]
    assert sorted(sidecar.engine_layers["pinned_fp32"]) == sorted(plan.pinned_fp32_layers)
    assert sidecar.tensorrt_version == sys.modules["tensorrt"].__version__  # with patch and build
    # The layer information comes in the release's own layout (TensorRT 11 split "Format/Datatype").
    from danet_deploy.engine.build import engine_layer_information

    tensor = json.loads(engine_layer_information(engine.read_bytes()))["Layers"][0]["Inputs"][0]
    assert ("Datatype" in tensor, "Format/Datatype" in tensor) == (
        (True, False) if parse_version(version) >= (11, 0) else (False, True)
    )
    if plan.implicit_int8:
        cache = recorder.last("IBuilderConfig").__dict__["_state"]["int8_calibrator"].read_calibration_cache()
        major = parse_version(version)[0]
        header, scales = read_calibration_cache(bytes(cache).decode())
        assert header == ("TRT-8601-EntropyCalibration2" if major == 8 else "TRT-100300-EntropyCalibration2")
        network = OnnxModel.load(plan.network_onnx).proto
        tensors = {name for node in network.graph.node for name in node.output}
        assert len(scales) > len(tensors) / 2 and set(scales) <= tensors | {i.name for i in network.graph.input}
    if config == "int8-dla1-fallback":
        devices = sidecar.engine_layers["devices"]
        assert devices["DLA"].get("INT8"), devices  # INT8 landed on the DLA (implicit, or strongly typed 11.4.1)

    deserialized = len(recorder.calls("Runtime.deserialize_cuda_engine"))
    runner = TensorRTRunner(engine)
    with runner:  # sidecar check, EngineFromBytes, TrtRunner.activate against the release's names
        assert runner.device == here.device
    runtimes = recorder.instances["Runtime"]
    dla_core = [r.__dict__["_state"].get("DLA_core") for r in runtimes if "DLA_core" in r.__dict__["_state"]]
    assert dla_core == ([1] if config == "int8-dla1-fallback" else [])  # the runtime loads on the engine's core
    (args, _), *_ = recorder.calls("Runtime.deserialize_cuda_engine")[deserialized:]
    assert isinstance(args[0], bytes)  # from bytes: no IStreamReader (absent in 8.6, renamed in 11)
    assert [name for name in recorder.missing if name not in GUARDED_PROBES] == []
    before_10 = parse_version(version) < (10, 0)  # no IProgressMonitor: our monitor is left out, nothing breaks
    assert ("tensorrt.IProgressMonitor" in recorder.missing) == before_10
    monitor = recorder.last("IBuilderConfig").__dict__["_state"].get("progress_monitor")
    assert (monitor is None) == before_10 and (
        before_10 or isinstance(monitor, sys.modules["tensorrt"].IProgressMonitor)
    )


def test_polygraphy_engine_from_path_cannot_load_on_8_6(tmp_path: Path, standin: callable) -> None:
    """Why the runner loads from bytes: the stand-in shows the real incompatibility the issue reported."""
    from polygraphy.backend.trt import EngineFromPath

    recorder = standin("8.6.1")
    path = tmp_path / "m.engine"
    path.write_bytes(b"not read")
    with pytest.raises(AttributeError, match="IStreamReader"):
        EngineFromPath(str(path))()
    assert "tensorrt.IStreamReader" in recorder.missing


def test_polygraphy_use_dla_would_pick_core_0_and_add_prefer(tmp_path: Path, networks: Path, standin: callable) -> None:
    """Why DLA is configured in our PostprocessConfig callback: Polygraphy's use_dla ignores the core we want."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath

    recorder = standin("10.3.0", ORIN)
    config = CreateConfig(fp16=True, precision_constraints="obey", use_dla=True, allow_gpu_fallback=True)
    EngineBytesFromNetwork(NetworkFromOnnxPath(str(networks / "tiny.onnx")), config=config)()
    state = recorder.last("IBuilderConfig").__dict__["_state"]
    assert state["DLA_core"] == 0
    assert {"OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"} <= set(_enum_names(state["flag_set"]))


def _silent_fp32(payload: dict) -> str:
    """Layer information of an engine that ignored the precision request (seen with TensorRT 11 + flags)."""
    return fake_layer_information({**payload, "builder_flags": [], "network_flags": [], "onnx_fp16": False})


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_engine_that_ignored_the_precision_is_not_written(
    version: str, networks: Path, tmp_path: Path, standin: callable, prepared: callable
) -> None:
    standin(version, layer_information=_silent_fp32)
    plan = prepared(plan_build(networks / "tiny.onnx", BuildOptions(precision="fp16"), version))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckFailedError, match="the fp16 engine has no FP16 layer"):
        build_engine(plan, out / "tiny.engine", system=running_system(root=tmp_path))
    assert list(out.iterdir()) == []


def test_dla_and_hardware_compatibility_are_refused_where_the_platform_has_none(
    networks: Path, tmp_path: Path, standin: callable, prepared: callable
) -> None:
    standin("10.3.0")
    int8_dla = BuildOptions(precision="int8", calib="calibration/images", dla_core=0, gpu_fallback=True)
    plan = plan_build(networks / "tiny.onnx", int8_dla, "10.3")
    x86 = running_system(root=tmp_path / "x86")
    with pytest.raises(BadInputError, match="DLA cores exist only on Jetson"):
        build_engine(plan, tmp_path / "a.engine", system=x86)
    thor_release = "# R38 (release), REVISION: 2.0, GCID: 1, BOARD: generic, EABI: aarch64"
    thor = running_system(root=jetson_root(tmp_path / "thor", thor_release, "NVIDIA Jetson AGX Thor Developer Kit"))
    with pytest.raises(BadInputError, match="Jetson Thor has no DLA"):
        build_engine(plan, tmp_path / "b.engine", system=thor)
    orin = running_system(root=jetson_root(tmp_path / "orin"))
    compat = plan_build(networks / "tiny.onnx", BuildOptions(precision="fp16", hardware_compat="ampere+"), "10.3")
    with pytest.raises(BadInputError, match="not supported on Jetson"):
        build_engine(compat, tmp_path / "c.engine", system=orin)
    core2 = prepared(
        plan_build(
            networks / "tiny.onnx",
            BuildOptions(precision="int8", calib="calibration/images", dla_core=2, gpu_fallback=True),
            "10.3",
        )
    )
    with pytest.raises(BadInputError, match="this device has 2 DLA core"):
        build_engine(core2, tmp_path / "d.engine", system=orin)
    assert not list(tmp_path.glob("*.engine*"))


def test_inspect_reads_the_engine_layers_where_tensorrt_is_present(
    networks: Path, tmp_path: Path, standin: callable
) -> None:
    recorder = standin("10.3.0")
    plan = plan_build(networks / "tiny.onnx", BuildOptions(precision="fp16"), "10.3")
    engine = tmp_path / "tiny.engine"
    build_engine(plan, engine, system=running_system(root=tmp_path))
    result = api.inspect(engine)
    assert result.notes == [] and result.live is not None
    assert result.live.to_dict() == result.sidecar.engine_layers
    assert len(recorder.calls("EngineInspector.get_engine_information")) == 2  # after the build, and now
    assert [name for name in recorder.missing if name not in GUARDED_PROBES] == []


@pytest.mark.parametrize(
    ("release", "built", "running"),
    [("10.3.0", "10.3.0.30", "10.3.0.26"), ("8.6.1", "8.6.1", "8.6.0"), ("11.4.1", "11.4.1.5", "11.4.0.106")],
)
def test_engine_from_another_build_of_the_release_is_refused_before_deserializing(
    release: str, built: str, running: str, networks: Path, tmp_path: Path, standin: callable, prepared: callable
) -> None:
    """TensorRT ties a plan to major.minor.patch.build: refused with what to do, exit 2, never deserialized."""
    standin(release, full_version=built)
    plan = prepared(plan_build(networks / "tiny.onnx", BuildOptions(precision="fp16"), built))
    engine = tmp_path / "tiny.engine"
    build_engine(plan, engine, system=running_system(root=tmp_path))
    recorder = standin(release, full_version=running)
    expected = re.escape(f"rebuild: built with TensorRT {built}, running {running}")
    with pytest.raises(BadInputError, match=expected) as raised:
        TensorRTRunner(engine).activate()
    assert raised.value.exit_code == 2 and recorder.calls("Runtime.deserialize_cuda_engine") == []


@pytest.mark.parametrize(("built", "running"), [("8.6.1", "10.3.0"), ("10.3.0", "11.4.0")])
def test_version_compatible_engine_loads_on_the_next_major(
    built: str, running: str, networks: Path, tmp_path: Path, standin: callable, prepared: callable
) -> None:
    standin(built)
    options = BuildOptions(precision="fp16", version_compatible=True)
    plan = prepared(plan_build(networks / "tiny.onnx", options, sys.modules["tensorrt"].__version__))
    engine = tmp_path / "tiny.engine"
    build_engine(plan, engine, system=running_system(root=tmp_path))
    recorder = standin(running)
    with TensorRTRunner(engine):
        pass
    assert len(recorder.calls("Runtime.deserialize_cuda_engine")) == 1


def test_engine_tensorrt_cannot_deserialize_is_one_line_exit_2(tmp_path: Path, standin: callable) -> None:
    """A plan TensorRT refuses (damaged, or from a build the sidecar does not name) is bad input, never exit 4."""
    import dataclasses
    import hashlib

    from danet_deploy.engine.sidecar import write_sidecar

    from .test_engine import _sidecar

    standin("10.3.0")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not a TensorRT plan")
    sidecar = _sidecar(tensorrt_version="10.3.0.26", gpu_name=H100.name, compute_capability=H100.compute_capability)
    write_sidecar(engine, dataclasses.replace(sidecar, engine_sha256=hashlib.sha256(engine.read_bytes()).hexdigest()))
    with pytest.raises(BadInputError) as raised:
        TensorRTRunner(engine).activate()
    message = str(raised.value)
    assert raised.value.exit_code == 2 and "\n" not in message
    assert message.startswith(f"{engine}: TensorRT 10.3.0 could not load the engine (") and "rebuild it" in message


def test_a_pin_that_matches_no_layer_fails_the_build_and_writes_nothing(
    networks: Path, tmp_path: Path, standin: callable, prepared: callable
) -> None:
    import dataclasses

    recorder = standin("10.3.0")
    plan = prepared(plan_build(networks / "tiny.onnx", BuildOptions(precision="fp16"), "10.3"))
    wrong = dataclasses.replace(plan, pinned_fp32_layers=[*plan.pinned_fp32_layers, "/head/cam/NotInTheNetwork"])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckFailedError, match=r"1 pinned FP32 layer.*match no layer TensorRT parsed") as raised:
        build_engine(wrong, out / "tiny.engine", system=running_system(root=tmp_path))
    assert raised.value.exit_code == 1 and list(out.iterdir()) == []
    assert recorder.calls("Builder.build_serialized_network") == []


def test_a_timing_cache_tensorrt_refuses_is_bad_input(
    networks: Path, tmp_path: Path, standin: callable, prepared: callable
) -> None:
    """Polygraphy ignores set_timing_cache's result; the build checks it (a stale cache is not silently dropped)."""
    standin("10.3.0")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"STALE cache from another GPU")
    options = BuildOptions(precision="fp16", timing_cache=str(cache))
    plan = prepared(plan_build(networks / "tiny.onnx", options, "10.3"))
    with pytest.raises(BadInputError, match="TensorRT refused this timing cache"):
        build_engine(plan, tmp_path / "tiny.engine", system=running_system(root=tmp_path))
    assert cache.read_bytes() == b"STALE cache from another GPU" and not (tmp_path / "tiny.engine").exists()


def test_tensorrt_8_6_int8_refuses_opset_19_qdq_and_builds_implicit_from_fp32(networks: Path) -> None:
    """onnx-tensorrt 8.6 ignores the axes input of opset >= 18 ReduceMax/ReduceMean; ModelOpt writes opset 19."""
    with pytest.raises(BadInputError, match="ignores the axes input"):
        plan_build(networks / "tiny.int8.onnx", BuildOptions(precision="int8"), "8.6")
    plan = plan_build(networks / "tiny.onnx", BuildOptions(precision="int8", calib="calibration/images"), "8.6")
    assert plan.implicit_int8 and plan.network_onnx == str(networks / "tiny.onnx")


def test_dry_run_fails_on_the_readiness_lint_of_the_chosen_release(networks: Path) -> None:
    """`build-engine --dry-run` runs what `inspect --target` runs for that release (opset > 17 on 8.6 is an error)."""
    from danet_deploy.graph.editor import opset_of
    from danet_deploy.steps.engine import plan_engine
    from danet_deploy.steps.inspect import inspect

    model = networks / "tiny.onnx"
    opset = opset_of(OnnxModel.load(model).proto)
    assert opset > 17
    assert [f.code for f in inspect(model, InspectOptions(target="trt8.6")).lint.errors] == ["opset"]
    with pytest.raises(CheckFailedError, match=rf"TensorRT readiness error.*trt8\.6.*opset {opset}") as raised:
        plan_engine(model, BuildOptions(precision="fp16"), "8.6", dry_run=True)
    assert raised.value.exit_code == 1
    assert plan_engine(model, BuildOptions(precision="fp16"), "10.3", dry_run=True).lint.errors == []


def test_strongly_typed_int8_network_runs_fp16_outside_qdq_with_the_cam_chain_fp32(
    networks: Path, tmp_path: Path, standin: callable, prepared: callable
) -> None:
    """Benchmark-free: the network ONNX TensorRT 11 parses carries FP16 outside Q/DQ, FP32 in the CAM chain."""
    import onnx

    from danet_deploy.precision.fp16 import node_precisions

    standin("11.4.0")
    plan = prepared(plan_build(networks / "tiny.onnx", BuildOptions(precision="int8", calib="c"), "11.4"))
    model = onnx.load(plan.network_onnx)
    precisions = node_precisions(model)
    cam = set(pinned_layers(onnx.load(networks / "tiny.onnx")))
    computing = {n.name for n in model.graph.node if n.op_type in ("Conv", "Relu", "Add", "Resize")}
    assert any(precisions.get(name) == onnx.TensorProto.FLOAT16 for name in computing)
    assert all(precisions.get(name) == onnx.TensorProto.FLOAT for name in cam if name in precisions)
