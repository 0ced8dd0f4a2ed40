"""danet-deploy: from a trained DANet checkpoint to verified ONNX and TensorRT inference engines.

The steps, their option and result types are importable from here (`danet_deploy.api` lists them); they load on
first use, so `import danet_deploy` alone stays light (no torch, onnx or ONNX Runtime):

```python
import danet_deploy as dd
dd.export("danet.pth", "danet.onnx", dd.ExportOptions(input_size=(512, 1024)))
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from danet_deploy.version import __version__ as __version__

if TYPE_CHECKING:
    from danet_deploy.api import *  # noqa: F403


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    api = importlib.import_module("danet_deploy.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'danet_deploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *importlib.import_module("danet_deploy.api").__all__])
