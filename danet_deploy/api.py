"""The user-level steps as functions: what each `danet-deploy` command does, callable from Python.

```python
import danet_deploy as dd
dd.export("danet.pth", "danet.onnx", dd.ExportOptions(input_size=(512, 1024)))
dd.quantize("danet.onnx", "danet.int8.onnx", dd.Int8Options(calib="calibration/images"))
result = dd.verify("cityscapes/", checkpoint="danet.pth", onnx=["danet.onnx", "danet.int8.onnx"])
print(result.report.passed)
```

Each step takes its input artifact (a file), an output, one frozen options object (`danet_deploy.options`: it
owns the defaults, documents every field and checks itself) and a progress reporter; it checks its options and
outputs before any work (never over an input, a writable folder), runs the stages and returns a typed result.
The CLI only parses flags into these options, calls one step and prints the result. Long steps report through
a `Progress` (silent unless the caller passes one). Errors: `BadInputError` (an `OptionError` names the option
field), `CheckFailedError` when a check ran and failed, `DeployError` for the rest (each with its exit code).
"""

from __future__ import annotations

from danet_deploy.errors import BadInputError, CheckFailedError, DeployError, OptionError
from danet_deploy.options import (
    BenchmarkOptions,
    BudgetOptions,
    ExportOptions,
    Fp16Options,
    InspectOptions,
    Int8Options,
    ModelOverrides,
    SimplifyOptions,
)
from danet_deploy.predict.segmenter import Prediction, Segmenter, SegmenterOptions
from danet_deploy.progress import Progress
from danet_deploy.steps.benchmark import BenchmarkResult, benchmark
from danet_deploy.steps.demo import DemoResult, demo
from danet_deploy.steps.deploy import DeepStreamOptions, DeployResult, TritonOptions, deploy_deepstream, deploy_triton
from danet_deploy.steps.engine import EngineResult, build_engine, plan_engine, prepare_network
from danet_deploy.steps.export import (
    ExportResult,
    SimplifyResult,
    export,
    load_checkpoint,
    simplify_model_file,
)
from danet_deploy.steps.inspect import EngineInspectResult, InspectResult, inspect, inspect_engine
from danet_deploy.steps.predict import PredictOptions, PredictResult, predict
from danet_deploy.steps.quantize import QuantizeResult, quantize
from danet_deploy.steps.verify import VerifyOptions, VerifyResult, check_verify_passed, verify

__all__ = [
    "BadInputError",
    "BenchmarkOptions",
    "BenchmarkResult",
    "BudgetOptions",
    "CheckFailedError",
    "DeepStreamOptions",
    "DemoResult",
    "DeployError",
    "DeployResult",
    "EngineInspectResult",
    "EngineResult",
    "ExportOptions",
    "ExportResult",
    "Fp16Options",
    "InspectOptions",
    "InspectResult",
    "Int8Options",
    "ModelOverrides",
    "OptionError",
    "PredictOptions",
    "PredictResult",
    "Prediction",
    "Progress",
    "QuantizeResult",
    "Segmenter",
    "SegmenterOptions",
    "SimplifyOptions",
    "SimplifyResult",
    "TritonOptions",
    "VerifyOptions",
    "VerifyResult",
    "benchmark",
    "build_engine",
    "check_verify_passed",
    "demo",
    "deploy_deepstream",
    "deploy_triton",
    "export",
    "inspect",
    "inspect_engine",
    "load_checkpoint",
    "plan_engine",
    "predict",
    "prepare_network",
    "quantize",
    "simplify_model_file",
    "verify",
]
