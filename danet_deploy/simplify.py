"""The simplify stage: cleanup -> CAM -> PAM (form chosen per target) -> GroupNorm (form chosen per target) ->
channel shuffle, each pass checked with ONNX Runtime. Passes whose sites a model lacks are not run.

After every pass the model runs on real images and is compared with its state before the pass; a pass
whose max abs difference exceeds tolerance fails the stage and nothing is written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from danet_deploy.artifact import META_GRAPH, InputSpec, OnnxModel, Precision, read_metadata, write_metadata
from danet_deploy.bounded_ort.query_blocks import bounded_session
from danet_deploy.config import ModelConfig
from danet_deploy.data.preprocess import resize_image
from danet_deploy.errors import BadInputError, CheckFailedError, DeployError
from danet_deploy.files import atomic_path, sha256_file
from danet_deploy.graph.cam import simplify_cam
from danet_deploy.graph.cleanup import cleanup
from danet_deploy.graph.editor import opset_of
from danet_deploy.graph.group_norm import (
    GROUP_NORMALIZATION_OPSET,
    check_model,
    to_decomposed,
    to_group_normalization,
)
from danet_deploy.graph.pam import RewriteError, pam_to_blocked, pam_to_mha, pam_to_onnx_attention
from danet_deploy.graph.shuffle import simplify_shuffles
from danet_deploy.graph.sites import find_light_sites, find_sites
from danet_deploy.graph.targets import choose_attention, choose_group_norm, get_target
from danet_deploy.options import ATTENTION_FORMS, GROUP_NORM_FORMS, SimplifyOptions


@dataclass
class PassReport:
    name: str
    detail: str
    nodes_before: int
    nodes_after: int
    max_abs_diff: float
    tolerance: float
    seconds: float
    evaluated: str = "as written"  # how the check ran the graph after the pass (`bounded_ort.query_blocks`)


@dataclass
class SimplifyReport:
    target: str
    attention: str
    reason: str
    check_input: list[int]
    passes: list[PassReport] = field(default_factory=list)
    group_norm: str | None = None  # light variants only
    group_norm_reason: str | None = None
    check_images: int = 0
    input_evaluated: str = "as written"  # how the checks ran the input graph


def _input_feed(model: onnx.ModelProto, config: ModelConfig | None, images: list[np.ndarray]) -> list[np.ndarray]:
    """Check inputs: real images at the model's static size (or the config's input size), preprocessed.

    A foreign model (no danet-deploy config) is checked at 64x128 with RGB scaled to [0, 1]."""
    spec = InputSpec.from_onnx(model)
    config = config or ModelConfig(input_size=(64, 128), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    size = spec.size_or(config.input_size)
    batch = spec.batch or 1
    return [np.repeat(spec.prepare(resize_image(image, size), config), batch, axis=0) for image in images]


def _run(model: onnx.ModelProto, feeds: list[np.ndarray], logits: list[np.ndarray]) -> tuple[float, float, str]:
    """Run `model` on each feed and replace `logits` (the graph before's, on the same feeds) by its own, one image
    at a time; returns the max abs difference, the max |logit| before, and how the check evaluated the model: at
    the feed's size, as written, or with large attention in query blocks (exact; `bounded_ort.query_blocks`): the N x N
    maps of a 1024x2048 input need 8 GiB as written, per head in the multi-head forms. An empty `logits` is
    filled (the input model's run).

    Every graph runs without ONNX Runtime's NCHWc layout pass, so that before and after run the same Conv kernels
    and the difference is the rewrite's: that pass only takes Conv versions it knows, so it leaves out a model the
    `onnx-attention` rewrite converts to opset 23, and its kernels round differently (DANet-R101 at 1024x2048:
    5.3e-3 from that alone, twice the default tolerance; the Attention node itself: 0)."""
    session, evaluation = bounded_session(model, list(feeds[0].shape), layout=False)
    name = session.get_inputs()[0].name
    diff = peak = 0.0
    for i, feed in enumerate(feeds):
        out = session.run(["logits"], {name: feed})[0]
        if i < len(logits):
            before = logits[i]
            peak = max(peak, float(np.abs(before).max()))
            planes = zip(out.reshape(-1, *out.shape[2:]), before.reshape(-1, *before.shape[2:]))  # one at a time
            diff = max(diff, max(float(np.abs(o.astype(np.float64) - b).max()) for o, b in planes))
            logits[i] = out
        else:
            logits.append(out)
    return diff, peak, evaluation.describe()


def simplify_model(
    model: onnx.ModelProto,
    options: SimplifyOptions = SimplifyOptions(),
    images: list[np.ndarray] | None = None,
    on_pass: Callable[[PassReport], None] | None = None,
    on_check: Callable[[int, int, str], None] | None = None,
) -> tuple[onnx.ModelProto, SimplifyReport]:
    """Run the passes for `target` (PAM form `attention`, GroupNorm form `group_norm` or the target's defaults),
    checking each one.

    Without a target and explicit forms, PAM and GroupNorm stay as exported (cleanup, CAM and shuffle only).
    Channel shuffles fold into the Conv that reads them unless `fold_shuffle` is False. Every check runs at the
    model's own size; attention too large to hold as written is evaluated in query blocks (exact), and each
    report line says how. `on_check(done, total, what)` is called before each check run.
    """
    options.check()
    target, attention, group_norm = options.target, options.attention, options.group_norm
    block, heads, atol, rtol, fold_shuffle = (
        options.block,
        options.heads,
        options.atol,
        options.rtol,
        options.fold_shuffle,
    )
    tgt = get_target(target) if target else None
    meta = read_metadata(model)
    original_props = [onnx.StringStringEntryProto(key=p.key, value=p.value) for p in model.metadata_props]
    try:  # simplify_file prefixes the path
        config = ModelConfig.from_dict(meta["model_config"]) if "model_config" in meta else None
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"invalid model config in the ONNX metadata ({exc})") from None
    input_dims = model.graph.input[0].type.tensor_type.shape.dim
    static = all(d.HasField("dim_value") for d in input_dims)
    if attention is None and tgt is None:
        attention, reason = "naive", "no --target given: PAM left as trained"
    elif attention is None:
        assert tgt is not None
        attention, reason = choose_attention(tgt, static)
    elif attention not in ATTENTION_FORMS:
        raise BadInputError(f"unknown attention form {attention!r}; choose from {', '.join(ATTENTION_FORMS)}")
    else:
        reason = "chosen with --attention"
    passes: list[tuple[str, Callable[[onnx.ModelProto], tuple[onnx.ModelProto, str]]]] = [
        ("cleanup", lambda m: (cleanup(m), "onnxslim: constant folding, shape ops, dead nodes")),
        ("cam", lambda m: _counted(simplify_cam(m), "CAM site(s): rowmax chain removed")),
    ]
    existing = {s.form for s in find_sites(model) if s.kind == "pam"}
    if not existing:  # a light variant: no PAM to rewrite
        attention, reason = "none", "no PAM in this model"
    if attention == "mha":
        passes.append(("pam-mha", lambda m: _counted(pam_to_mha(m, heads), "PAM site(s) -> 4-D multi-head")))
    elif attention == "onnx-attention":
        passes.append(
            ("pam-onnx-attention", lambda m: _counted(pam_to_onnx_attention(m, heads), "PAM site(s) -> Attention"))
        )
    elif attention == "blocked":
        passes.append(
            ("pam-blocked", lambda m: _counted(pam_to_blocked(m, block), f"PAM site(s) -> Scan, block {block}"))
        )

    light = {s.kind for s in find_light_sites(model)}
    light |= {"group-norm", "channel-shuffle"} if config and config.position_attention == "shuffle" else set()
    gn_reason = None
    if group_norm is not None and group_norm not in GROUP_NORM_FORMS:
        raise BadInputError(f"unknown GroupNorm form {group_norm!r}; choose from {', '.join(GROUP_NORM_FORMS)}")
    if "group-norm" in light and (group_norm or tgt):
        opset = opset_of(model)
        if group_norm is None:
            group_norm, gn_reason = choose_group_norm(tgt, opset)
        elif group_norm == "group-normalization" and opset < GROUP_NORMALIZATION_OPSET:
            raise BadInputError(f"GroupNormalization needs opset >= 18; this model is opset {opset}")
        else:
            gn_reason = "chosen with --group-norm"
        rewrite = to_group_normalization if group_norm == "group-normalization" else to_decomposed
        passes.append(("group-norm", lambda m: _counted(rewrite(m), f"GroupNorm site(s) -> {group_norm}")))
    if "channel-shuffle" in light:
        passes.append(("channel-shuffle", lambda m: _shuffles(m, fold_shuffle)))
    if attention != "naive" and existing and existing != {"naive"} and existing != {attention}:
        raise BadInputError(
            f"PAM is already in the {', '.join(sorted(existing))} form; simplify the raw export to get {attention!r}"
        )

    from danet_deploy.data.bundled import sample_images

    feeds = _input_feed(model, config, images if images is not None else sample_images(2))
    report = SimplifyReport(
        tgt.name if tgt else "any", attention, reason, list(feeds[0].shape), [], group_norm, gn_reason, len(feeds)
    )
    runs = len(passes) + 1
    if on_check:
        on_check(0, runs, "running the input model")
    logits: list[np.ndarray] = []  # the latest graph's, per image
    report.input_evaluated = _run(model, feeds, logits)[2]
    for done, (name, apply) in enumerate(passes, start=1):
        started = time.perf_counter()
        nodes_before = len(model.graph.node)
        try:
            candidate, detail = apply(onnx.ModelProto.FromString(model.SerializeToString()))
        except RewriteError as exc:
            raise BadInputError(str(exc)) from None
        del model  # the graph before lives on in `logits`; its weights are not needed during the check
        if on_check:
            on_check(done, runs, f"checking pass {name}")
        diff, peak, evaluated = _run(candidate, feeds, logits)
        tolerance = atol + rtol * peak
        result = PassReport(
            name,
            detail,
            nodes_before,
            len(candidate.graph.node),
            diff,
            tolerance,
            round(time.perf_counter() - started, 2),
            evaluated,
        )
        if on_pass:
            on_pass(result)
        if not np.isfinite(diff) or diff > tolerance:
            raise CheckFailedError(f"pass {name}: max abs diff {diff:.3g} vs before exceeds tolerance {tolerance:.3g}")
        report.passes.append(result)
        model = candidate
    if on_check:
        on_check(runs, runs, "checked")
    if not model.metadata_props:  # a rewrite rebuilt the model; carry the config and provenance over
        model.metadata_props.extend(original_props)
    write_metadata(model, {META_GRAPH: json.dumps(asdict(report))})
    return model, report


def _counted(result: tuple[onnx.ModelProto, int], what: str) -> tuple[onnx.ModelProto, str]:
    model, count = result
    return model, f"{count} {what}"


def _shuffles(model: onnx.ModelProto, fold: bool) -> tuple[onnx.ModelProto, str]:
    model, folded, reshaped = simplify_shuffles(model, fold)
    return model, f"{folded} channel shuffle(s) folded into the next Conv, {reshaped} as one 4-D reshape/transpose"


def simplify_file(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: SimplifyOptions = SimplifyOptions(),
    on_pass: Callable[[PassReport], None] | None = None,
    on_check: Callable[[int, int, str], None] | None = None,
) -> tuple[SimplifyReport, dict[str, Any]]:
    """File to file; nothing is written unless every pass passes its check."""
    where = Path(in_path)
    source = OnnxModel.load(in_path)
    source.require_runnable()
    if source.precision is not Precision.FP32:  # the passes and their checks are written for the FP32 graph
        raise BadInputError(
            f"{where}: is an {source.precision.value.upper()} model; simplify the FP32 model, then convert that one"
        )
    protos = [source.proto]
    del source
    try:
        # Only simplify_model holds the input model, so it is freed once the first pass has copied it.
        simplified, report = simplify_model(protos.pop(), options, on_pass=on_pass, on_check=on_check)
    except DeployError as exc:  # name the file, as every user-facing error does
        raise type(exc)(f"{where}: {exc}", exc.exit_code) from None
    with atomic_path(out_path) as tmp:
        check_model(simplified)
        onnx.save(simplified, str(tmp))
    return report, {"onnx_sha256": sha256_file(out_path), "size_bytes": Path(out_path).stat().st_size}
