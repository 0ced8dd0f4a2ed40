"""ONNX Runtime's calibrators, which both INT8 quantizers use (ModelOpt patches them; `quantize_static` runs them), in
bounded memory.

A calibrator runs an augmented copy of the model whose outputs are the tensors to calibrate: MinMax adds a
ReduceMin / ReduceMax pair per tensor (scalars), the histogram calibrators (entropy, percentile, distribution)
output the tensors themselves, so one image holds every calibrated activation of the network at once (about
6 GiB for DANet-R50 at 1024x2048), and the model's N x N attention maps besides. While `bounded_calibrators` is
active:
- every calibrator session, and the one ModelOpt runs to measure attention shapes, evaluates attention too large
  to hold in query blocks (`bounded_ort.query_blocks`), so MinMax needs one inference's memory;
- histogram calibrators collect segment by segment (`bounded_ort.segments`): the augmented model runs in consecutive
  pieces whose calibrated tensors fit a budget, each piece's tensors go to the calibrator's own collector before
  the next runs, and are dropped. A collector treats every tensor on its own, in image order, so its histograms
  (and the ranges it computes from them) are those of the whole-model run.
ModelOpt installs its calibrator code inside `quantize`; ours is installed after it (around its
`patch_ort_modules`). Everything installed is undone when the block ends (ModelOpt's own changes to ONNX
Runtime's classes are undone by the callers: `onnxruntime_quantization_restored`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx

from danet_deploy.artifact import onnxruntime_session
from danet_deploy.bounded_ort.query_blocks import bounded_model
from danet_deploy.bounded_ort.segments import SegmentedRun

CALIBRATION_SEGMENT_BYTES = 256 << 20  # calibrated tensors held at once by a histogram calibrator


def _bounded_copy(path: str) -> str:
    """The augmented model beside itself with large attention in query blocks (or the path itself)."""
    model = onnx.load(path)
    checked, evaluation, _ = bounded_model(model, copy=False)
    if not evaluation.blocked:
        return path
    target = str(Path(path).with_suffix(".bounded.onnx"))
    onnx.save(checked, target)
    return target


def _install(budget: int, replace: Callable[[Any, str, Any], None]) -> None:
    from onnxruntime.quantization.calibrate import CalibraterBase, HistogramCalibrater, HistogramCollector

    library_session = CalibraterBase.create_inference_session

    def create_inference_session(self: Any, *args: Any, **kwargs: Any) -> None:
        saved = self.augmented_model_path
        self.augmented_model_path = _bounded_copy(saved)
        try:
            library_session(self, *args, **kwargs)  # and whatever else the library records (ModelOpt's groups)
            self.infer_session = None
            if not isinstance(self, HistogramCalibrater):  # those collect segment by segment instead
                # MinMax's ReduceMin / ReduceMax probes run right after each tensor's producer (`in_order`).
                self.infer_session = onnxruntime_session(self.augmented_model_path, arena=False, in_order=True)
        finally:
            self.augmented_model_path = saved

    def collect_data(self: Any, data_reader: Any) -> None:
        run = getattr(self, "_danet_segments", None)
        if run is None:  # the augmented model is not used after collection: edit it rather than copy it
            model, _, _ = bounded_model(self.model, copy=False)
            run = self._danet_segments = SegmentedRun(model, sorted(self.tensors_to_calibrate), budget)
            del model
        groups: dict[str, list[str]] = getattr(self, "group_qdq_tensors", None) or {}
        grouped = set(groups) | {t for members in groups.values() for t in members}
        while (inputs := data_reader.get_next()) is not None and inputs:
            held = {}
            for chunk in run.run(inputs):
                values = {name: [value] for name, value in chunk.items() if name in self.tensors_to_calibrate}
                held.update({name: chunk[name] for name in values if name in grouped})
                values = {name: v for name, v in values.items() if name not in grouped}
                del chunk
                if values:
                    _collector(self, HistogramCollector).collect(values)
                del values
            # ModelOpt's concat groups share one scale: each member also collects the others' values.
            for name in sorted(held):
                others = [held[o] for o in groups.get(name, []) if o != name and o in held]
                _collector(self, HistogramCollector).collect({name: [held[name], *others]})
            del held
        self.clear_collected_data()

    replace(CalibraterBase, "create_inference_session", create_inference_session)
    replace(HistogramCalibrater, "collect_data", collect_data)


def _collector(calibrator: Any, collector_class: type) -> Any:
    if not calibrator.collector:
        calibrator.collector = collector_class(
            method=calibrator.method,
            symmetric=calibrator.symmetric,
            num_bins=calibrator.num_bins,
            num_quantized_bins=calibrator.num_quantized_bins,
            percentile=calibrator.percentile,
            scenario=calibrator.scenario,
        )
    return calibrator.collector


@contextlib.contextmanager
def bounded_calibrators(budget: int | None = None, modelopt: bool = False) -> Iterator[None]:
    """Within the block, ONNX Runtime's calibrators run in bounded memory (see the module doc); with `modelopt`
    also as ModelOpt patches them, and ModelOpt's attention-shape run. `budget`: calibrated bytes held at once
    (default `CALIBRATION_SEGMENT_BYTES`)."""
    budget = CALIBRATION_SEGMENT_BYTES if budget is None else budget
    saved: list[tuple[Any, str, Any]] = []

    def replace(owner: Any, name: str, value: Any) -> None:
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    _install(budget, replace)  # ONNX Runtime's own quantize_static
    if modelopt:
        from modelopt.onnx.quantization import graph_utils, ort_utils

        patch = ort_utils.patch_ort_modules

        def patch_then_bound(*args: Any, **kwargs: Any) -> None:
            patch(*args, **kwargs)
            _install(budget, replace)

        session = graph_utils.create_inference_session

        def bounded_session(model: str | bytes, *args: Any, **kwargs: Any) -> Any:
            proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
            checked, _, _ = bounded_model(proto, copy=False)
            return session(checked.SerializeToString(), *args, **kwargs)

        replace(ort_utils, "patch_ort_modules", patch_then_bound)
        replace(graph_utils, "create_inference_session", bounded_session)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
