"""Worker: run one ONNX model with ONNX Runtime (CPU) in a fresh process; print latency and peak RSS as JSON.

python bench/run_onnx.py model.onnx --input x.npy --iters 3 --warmup 1 --save out.npy
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from danet_deploy.evaluate.benchmark import peak_rss_bytes
from danet_deploy.onnx_export import onnxruntime_session


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--input", required=True)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--save")
    args = parser.parse_args()
    x = np.load(args.input)
    started = time.perf_counter()
    session = onnxruntime_session(args.model)
    load_seconds = time.perf_counter() - started
    name = session.get_inputs()[0].name
    out = None
    for _ in range(args.warmup):
        out = session.run(["logits"], {name: x})[0]
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        out = session.run(["logits"], {name: x})[0]
        times.append(time.perf_counter() - t)
    if args.save and out is not None:
        np.save(args.save, out)
    peak = peak_rss_bytes()
    print(
        json.dumps(
            {
                "median_s": statistics.median(times),
                "times_s": times,
                "peak_rss_bytes": peak,
                "load_s": load_seconds,
                "providers": session.get_providers(),
            }
        )
    )


if __name__ == "__main__":
    main()
