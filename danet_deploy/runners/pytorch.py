"""PyTorch reference runner: FP32 on the CPU, or FP16 on a CUDA GPU where one exists."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from danet_deploy.artifact import InputSpec, Precision
from danet_deploy.config import ModelConfig
from danet_deploy.errors import EXIT_MISSING_DEPENDENCY, DeployError
from danet_deploy.model.danet import PositionAttention, memory_efficient_attention
from danet_deploy.runners.base import Runner, cpu_device

if TYPE_CHECKING:  # checkpoints is imported at activation only
    from danet_deploy.checkpoints import LoadedCheckpoint

_FP16_NEEDS_CUDA = "PyTorch FP16 needs a CUDA GPU (none found, or torch is a CPU build)"


class PyTorchRunner(Runner):
    """The PyTorch model: from a checkpoint read at activation (`PyTorchRunner(path)`) or from memory
    (`PyTorchRunner(model, config)`, also `PyTorchRunner.from_model`)."""

    kind = "pytorch"

    def __init__(
        self,
        source: str | os.PathLike[str] | torch.nn.Module,
        config: ModelConfig | None = None,
        name: str = "pytorch",
        half: bool = False,
        threads: int | None = None,
        *,
        layout: str | None = None,
        overrides: dict[str, Any] | None = None,
    ):
        """`source`: a checkpoint path (loaded by `load_checkpoint(path, layout, **overrides)` at activation)
        or an in-memory model with its `config`. `half`: FP16 on a CUDA GPU. `threads`: torch CPU threads,
        set at activation."""
        if isinstance(source, torch.nn.Module):
            if config is None:
                raise ValueError("PyTorchRunner: an in-memory model needs its config")
            self._model: torch.nn.Module | None = source
            self.checkpoint: Path | None = None
        else:
            self._model, self.checkpoint = None, Path(source)
        if half and not torch.cuda.is_available():
            raise DeployError(_FP16_NEEDS_CUDA, EXIT_MISSING_DEPENDENCY)
        self.layout = layout
        self.overrides = dict(overrides or {})
        self.half = half
        self._threads = threads
        self.loaded: LoadedCheckpoint | None = None  # while active, when built from a checkpoint
        self._evaluated = "as trained"
        self._module: torch.nn.Module | None = None
        super().__init__(name, Precision.FP16 if half else Precision.FP32, InputSpec(), config)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        config: ModelConfig,
        name: str = "pytorch",
        half: bool = False,
        threads: int | None = None,
    ) -> PyTorchRunner:
        """A runner of an in-memory model (moved to the CPU, or copied to the GPU for FP16, at activation)."""
        return cls(model, config, name, half, threads)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        layout: str | None = None,
        overrides: dict[str, Any] | None = None,
        name: str = "pytorch",
        half: bool = False,
        threads: int | None = None,
    ) -> PyTorchRunner:
        """A runner that loads `path` (danet_deploy.checkpoints.load_checkpoint) when activated."""
        return cls(path, None, name, half, threads, layout=layout, overrides=overrides)

    @property
    def device(self) -> str:
        if self.half:
            return f"GPU: {torch.cuda.get_device_name()}"
        return cpu_device()

    @property
    def threads(self) -> int | None:
        return None if self.half else (self._threads or torch.get_num_threads())

    def activate_impl(self) -> None:
        if self.half and not torch.cuda.is_available():
            raise DeployError(_FP16_NEEDS_CUDA, EXIT_MISSING_DEPENDENCY)
        if self._threads:
            torch.set_num_threads(self._threads)
        model = self._model
        if model is None:
            from danet_deploy.checkpoints import load_checkpoint

            assert self.checkpoint is not None
            self.loaded = load_checkpoint(self.checkpoint, self.layout, **self.overrides)
            model, self._config = self.loaded.model, self.loaded.config
        if self.half:
            self._module = copy.deepcopy(model).half().to("cuda").eval()
        else:
            self._module = model.to("cpu").eval()

    def deactivate_impl(self) -> None:
        self._module = None
        self.loaded = None
        if self.half:
            torch.cuda.empty_cache()

    @property
    def module(self) -> torch.nn.Module | None:
        """The model as it runs (on the CPU in FP32, or the GPU FP16 copy) while active, else None."""
        return self._module

    @property
    def evaluated(self) -> str:
        """PAM as trained, or in query blocks where its map would be large (exact: `memory_efficient_attention`)."""
        return self._evaluated

    def infer_impl(self, feed: np.ndarray) -> Any:
        device = "cuda" if self.half else "cpu"
        x = torch.from_numpy(feed).to(device, torch.float16 if self.half else torch.float32)
        # PAM's N x N map as trained needs 8 GiB at 1024x2048; query blocks give the same result in 128 MiB.
        module = self._module
        assert module is not None, "infer on an active runner"
        with torch.inference_mode(), memory_efficient_attention(module):
            out = module(x)
        blocks = {
            m.last_block for m in module.modules() if isinstance(m, PositionAttention) and m.last_block is not None
        }
        self._evaluated = f"PAM in query blocks of {min(blocks)} (exact)" if blocks else "as trained"
        if self.half:
            torch.cuda.synchronize()
        return out

    def postprocess(self, output: Any) -> np.ndarray:
        return output.float().cpu().numpy()
