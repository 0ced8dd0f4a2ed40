"""The user-level steps as functions: what each `danet-deploy` command does, callable from Python.

```python
from danet_deploy import api
exported = api.export("danet.pth", "danet.onnx")
api.quantize("danet.onnx", "danet.int8.onnx", "int8", api.QuantizeOptions(calib="calibration/images"))
result = api.verify("cityscapes/", checkpoint="danet.pth", onnx=["danet.onnx", "danet.int8.onnx"])
print(result.report.passed)
```

Each function checks its outputs before the work starts (`files.check_output`: never an input, a writable
folder), runs the stages and returns a typed record; the CLI only parses options, calls one of these and
prints the record. Long steps report through a `Progress` (silent unless the caller passes one).
"""

from __future__ import annotations

from danet_deploy.steps.benchmark import BenchmarkResult, benchmark
from danet_deploy.steps.demo import DemoResult, demo
from danet_deploy.steps.deploy import DeepStreamOptions, DeployResult, TritonOptions, deploy_deepstream, deploy_triton
from danet_deploy.steps.engine import EngineResult, build_engine, plan_engine, prepare_network
from danet_deploy.steps.export import (
    ExportResult,
    SimplifyOptions,
    SimplifyResult,
    export,
    load_checkpoint,
    simplify_model_file,
)
from danet_deploy.steps.inspect import EngineInspectResult, InspectResult, inspect, inspect_engine
from danet_deploy.steps.predict import PredictOptions, PredictResult, predict
from danet_deploy.steps.quantize import QuantizeOptions, QuantizeResult, quantize
from danet_deploy.steps.verify import VerifyOptions, VerifyResult, check_verify_passed, verify

__all__ = [
    "BenchmarkResult",
    "DeepStreamOptions",
    "DemoResult",
    "DeployResult",
    "EngineInspectResult",
    "EngineResult",
    "ExportResult",
    "InspectResult",
    "PredictOptions",
    "PredictResult",
    "QuantizeOptions",
    "QuantizeResult",
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
