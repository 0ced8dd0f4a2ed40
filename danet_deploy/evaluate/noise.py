"""How far the reference's own FP32 computation is from the exact logits: the noise floor verify's FP32 gate is
derived from.

Two FP32 computations of one network (PyTorch and ONNX Runtime, or TensorRT) round differently: each is some
distance from the exact result, and their difference is at most the sum of those distances. That distance grows
with depth, resolution and logit magnitude (DANet-R101 at 1024x2048: 5.45e-4 for PyTorch, docs/benchmarks.md
"fp32-noise"), so a fixed logit tolerance either fails faithful deep models or lets broken small ones pass.
`reference_noise` measures it on one image: the reference model in FP32 and in float64 (the exact result to FP32's
eyes), PAM in query blocks in both (`memory_efficient_attention`, exact), so memory stays bounded at full
resolution; the float64 copy of the weights and its activations are dropped before verify goes on.

The rule (`fp32_tolerance`): max |diff| allowed for an FP32 backend = max(NOISE_FACTOR x noise, export's default
parity tolerance 1e-4 + 1e-4 x max |logit|). ONNX Runtime vs PyTorch differences on faithful exports measured
1.3x (a narrow random-weight R101 with data statistics at 64x128, tests/test_verify.py) to 6x (R101 at 1024x2048,
docs/benchmarks.md) PyTorch's own noise; 16 keeps more than twice that margin, while a broken layer or a wrong
normalization moves logits by percents of their magnitude, hundreds of times the noise.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from danet_deploy.model.danet import memory_efficient_attention

NOISE_FACTOR = 16.0  # FP32 tolerance = this x the reference's own FP32 rounding noise (module doc)


@dataclass
class Fp32Noise:
    """The reference's FP32 logits against the same model in float64 on one image."""

    image: str  # which image (relative to the data set root)
    input_size: list[int]  # (H, W) the model ran at
    max_abs: float  # max |FP32 - float64| over all logits
    mean_abs: float
    max_logit: float  # max |logit| (float64)
    seconds: float  # both runs

    def describe(self) -> str:
        h, w = self.input_size
        return f"max |FP32 - float64| of the PyTorch reference on {self.image} at {h}x{w}: {self.max_abs:.2e}"


def reference_noise(module: torch.nn.Module, feed: np.ndarray, image: str) -> Fp32Noise:
    """`module` (an FP32 model on the CPU, eval mode) on `feed` (its prepared 1 x 3 x H x W input) in FP32 and in
    float64; the float64 copy is made here and dropped before returning."""
    started = time.perf_counter()
    x = torch.from_numpy(np.ascontiguousarray(feed))
    with torch.inference_mode():
        with memory_efficient_attention(module):
            fp32 = module(x.float()).double()
        exact_model = copy.deepcopy(module).double()
        with memory_efficient_attention(exact_model):
            exact = exact_model(x.double())
        del exact_model
        diff = (fp32 - exact).abs_()
        result = Fp32Noise(
            image=image,
            input_size=list(feed.shape[-2:]),
            max_abs=float(diff.max()),
            mean_abs=float(diff.mean()),
            max_logit=float(exact.abs().max()),
            seconds=round(time.perf_counter() - started, 2),
        )
    return result


def fp32_tolerance(noise: Fp32Noise, factor: float = NOISE_FACTOR) -> float:
    """The FP32 max |diff| tolerance derived from `noise` (module doc): never below export's default parity
    tolerance, so a shallow model whose noise is almost nothing is not held to less than export checked."""
    return max(factor * noise.max_abs, 1e-4 + 1e-4 * noise.max_logit)
