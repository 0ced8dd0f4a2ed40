"""Presenting results: Rich tables for the terminal, JSON files written atomically."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from danet_deploy.artifact import precision_label
from danet_deploy.engine.plan import BuildPlan
from danet_deploy.engine.sidecar import EngineSidecar
from danet_deploy.evaluate.verify import VerifyReport
from danet_deploy.graph.lint import LintReport
from danet_deploy.onnx_export import ExportRecord
from danet_deploy.progress import format_bytes
from danet_deploy.simplify import SimplifyReport


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def verify_table(report: VerifyReport) -> Table:
    """Every backend against the reference: mIoU and its delta, label agreement, logit differences, the verdict.
    Backend names are shown whole (folded onto a second line if need be, never cut); why a backend failed is in
    `failure_lines`, below the table, so a long reason never squeezes the columns."""
    size = "x".join(map(str, report.input_size)) if report.input_size else "native"
    title = f"verify: {report.images} images, {report.protocol}, input {size}, reference {report.reference}"
    table = Table(title=escape(title))
    longest = max(len(b.name) for b in report.backends)
    table.add_column("backend", overflow="fold", min_width=min(longest, 64))
    table.add_column("precision", no_wrap=True)
    for column in ("mIoU %", "delta mIoU", "agreement", "labels changed", "max |diff|", "p99 |diff|", "cosine"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("NaN/Inf", justify="right", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for b in report.backends:
        table.add_row(
            escape(b.name),
            escape(b.precision_label),
            _fmt(b.miou, ".2f"),
            _fmt(b.miou_delta, "+.2f"),
            f"{b.pixel_agreement:.4%}",
            f"{1 - b.pixel_agreement:.4%}",
            f"{b.max_abs_diff:.2e}",
            f"{b.p99_abs_diff:.1e}",
            f"{b.cosine:.6f}",
            str(b.nonfinite_values),
            "[green]pass[/]" if b.passed else "[red]FAIL[/]",
        )
    return table


def failure_lines(report: VerifyReport) -> list[str]:
    """One line per failed backend: what it missed (names from files: print escaped)."""
    return [f"{b.name} FAILED: {'; '.join(b.failures)}" for b in report.backends if not b.passed]


def per_class_table(report: VerifyReport) -> Table:
    """Per-class IoU of the reference and each backend's delta against it (points)."""
    table = Table(title="per-class IoU % (reference) and delta per backend (points)")
    table.add_column("class")
    table.add_column(escape(report.backends[0].name), justify="right", overflow="fold")
    for b in report.backends[1:]:
        table.add_column(f"delta {escape(b.name)}", justify="right", overflow="fold")
    names = list(report.backends[0].per_class_iou)
    for name in names:  # class names come from the model file: escaped, so "[...]" is not Rich markup
        table.add_row(
            escape(name),
            _fmt(report.backends[0].per_class_iou.get(name), ".2f"),
            *[_fmt(b.per_class_iou_delta.get(name), "+.2f") for b in report.backends[1:]],
        )
    return table


def threshold_table(report: VerifyReport) -> Table:
    """The thresholds each precision was judged by and where each came from."""
    table = Table(title="thresholds in force")
    for column in ("precision", "threshold", "value", "from"):
        table.add_column(column, overflow="fold")
    for t in report.thresholds_in_force:
        table.add_row(t.precision, t.name, threshold_value(t.name, t.value), escape(t.source))
    return table


def threshold_value(name: str, value: float | None) -> str:
    """'not checked', '99.9000%' for agreement, '0.1 points' for mIoU, '8.29e-03' for logits."""
    if value is None:
        return "not checked"
    if name == "min_pixel_agreement":
        return f">= {value:.4%}"
    if name == "max_miou_drop":
        return f"<= {value:g} points"
    return f"<= {value:.3g}"


def locate_lines(report: VerifyReport) -> list[str]:
    """Where each located backend's error jumps (names from model files: print escaped)."""
    return [line for result in report.located for line in result.lines()]


def export_summary(record: ExportRecord) -> list[str]:
    lines = [
        f"wrote {record.onnx_path} ({record.size_bytes / 2**20:.1f} MiB, opset {record.opset}, "
        f"{record.exporter} exporter, {record.export_seconds:.1f} s)",
        "inputs: " + ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in record.inputs.items()),
        "outputs: " + ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in record.outputs.items()),
    ]
    for p in record.parity:
        lines.append(
            f"parity ONNX Runtime vs PyTorch at {list(p.shape)}: max abs diff {p.max_abs_diff:.3g} "
            f"(tolerance {p.tolerance:.3g}), mean {p.mean_abs_diff:.3g}, label agreement {p.label_agreement:.4%}"
        )
        lines.append(f"  evaluated: ONNX Runtime: {p.onnx_evaluation}; PyTorch: {p.reference}")
    return lines


def simplify_lines(report: SimplifyReport) -> list[str]:
    lines = [f"target {report.target}: PAM form '{report.attention}' ({report.reason})"]
    if report.group_norm:
        lines.append(f"  GroupNorm form '{report.group_norm}' ({report.group_norm_reason})")
    if report.passes:
        size = "x".join(str(d) for d in report.check_input[-2:])
        lines.append(
            f"  every pass checked with ONNX Runtime on {report.check_images} bundled image(s) at {size} "
            f"(the model's size), each against the graph before it; input graph evaluated "
            f"{report.input_evaluated}"
        )
    for p in report.passes:
        how = "" if p.evaluated == "as written" else f"  [evaluated: {p.evaluated}]"
        lines.append(
            f"  {p.name:<20} {p.nodes_before:>4} -> {p.nodes_after:<4} nodes  max abs diff {p.max_abs_diff:.2e} "
            f"(tolerance {p.tolerance:.1e})  {p.detail}{how}"
        )
    return lines


def inspect_tables(
    path: str, meta: dict[str, Any], report: LintReport, precision: str | None = None, kernels: list[Any] | None = None
) -> list[Any]:
    """Everything `inspect` shows: config, precision, ops, attention sites, lint findings, memory per form, and for
    INT8 models the kernel ONNX Runtime's CPU provider picks for each Conv / MatMul."""
    items: list[Any] = []
    config = meta.get("model_config")
    # Every string below comes from the model file (metadata, node names): escaped, never read as Rich markup.
    summary = Table(title=escape(f"{path}"), show_header=False)
    summary.add_column("field")
    summary.add_column("value")
    if config:
        arch = f"danet r{config['depth']} width {config['base_width']}, {config['num_classes']} classes"
        position, channel = config.get("position_attention", "pam"), config.get("channel_attention", "cam")
        if (position, channel) != ("pam", "cam"):
            groups = f" (G={config.get('sa_groups')})" if position == "shuffle" else ""
            arch += f", head: position {position}{groups} + channel {channel}"
        summary.add_row(
            "model", escape(f"{arch}, stem {config['stem_channels']}, layer4 dilations {config['layer4_dilations']}")
        )
        summary.add_row(
            "preprocessing",
            escape(
                f"mean {config['mean']} std {config['std']}, align_corners "
                f"{config['align_corners']}, config input {config['input_size']}"
            ),
        )
    else:
        summary.add_row("model config", "none (not exported by danet-deploy)")
    provenance = meta.get("provenance", {})
    if provenance:
        sha = str(provenance.get("checkpoint_sha256", ""))[:12]
        summary.add_row(
            "provenance",
            escape(
                f"{provenance.get('checkpoint', '?')} (sha256 {sha}...), "
                f"{provenance.get('exporter', '?')}, {provenance.get('created', '')}"
            ),
        )
    graph = meta.get("graph")
    if graph:
        gn = f", GroupNorm {graph['group_norm']}" if graph.get("group_norm") else ""
        summary.add_row(
            "graph passes",
            escape(
                f"target {graph['target']}, PAM {graph['attention']}{gn}: "
                + ", ".join(str(p["name"]) for p in graph["passes"])
            ),
        )
    if precision is not None:
        summary.add_row("precision", escape(precision))
    summary.add_row("lint input", escape(f"{report.input_shape} for target {report.target}"))
    items.append(summary)
    ops = Table(title="operators")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in report.op_histogram.items():
        ops.add_row(escape(op), str(count))
    items.append(ops)
    sites = Table(title="attention sites")
    for column in ("kind", "form", "node", "N", "channels", "TensorRT MHA fusion"):
        sites.add_column(column)
    for s in report.sites:
        fusion = "-" if s.mha_fusable is None else ("meets the rules" if s.mha_fusable else "no")
        if s.mha_reasons:
            fusion += ": " + "; ".join(s.mha_reasons)
        sites.add_row(s.kind, s.form, escape(s.node), str(s.seq_len or "-"), str(s.channels or "-"), escape(fusion))
    items.append(sites)
    findings = Table(title=f"TensorRT readiness ({report.target})" if report.target != "ort" else "findings")
    findings.add_column("level")
    findings.add_column("check")
    findings.add_column("finding")
    colour = {"error": "red", "warning": "yellow", "info": "blue"}
    for f in report.findings:
        findings.add_row(f"[{colour[f.level]}]{f.level}[/]", f.code, escape(f.message))
    if not report.findings:
        findings.add_row("[green]ok[/]", "-", "no findings")
    items.append(findings)
    if report.memory:
        memory = Table(title=f"estimated peak PAM attention memory at {report.input_shape}")
        for column in ("form", "memory", "note"):
            memory.add_column(column)
        for m in report.memory:
            memory.add_row(m.form, format_bytes(m.bytes), m.note)
        items.append(memory)
    if kernels:
        integer = sum(k.integer for k in kernels)
        table = Table(title=f"ONNX Runtime CPU kernels: {integer} of {len(kernels)} Conv/MatMul/Gemm nodes integer")
        for column in ("node", "op", "kernel", "computes in"):
            table.add_column(column)
        for k in kernels:
            table.add_row(escape(k.node), escape(k.op_type), escape(k.kernel), "int8" if k.integer else "float")
        items.append(table)
    return items


def plan_lines(plan: BuildPlan) -> list[str]:
    """The build plan as a user reads it (what `build-engine --dry-run` prints)."""
    shape = lambda dims: "x".join(map(str, dims))  # noqa: E731
    lines = [
        f"TensorRT {plan.tensorrt_version}: {plan.path} network, {plan.precision} engine",
        f"  source ONNX    {plan.source_onnx} ({plan.source_precision})",
    ]
    lines += [f"  prepare        {step}" for step in plan.prepare]
    lines += [
        f"  parse          {plan.network_onnx or 'the prepared ONNX (scratch folder, removed after the build)'}",
        f"  network flags  {', '.join(plan.network_flags) or 'none'}",
        f"  builder flags  {', '.join(plan.builder_flags) or 'none (precision from the ONNX tensor types)'}",
    ]
    for name, (lo, opt, hi) in plan.profile.items():
        lines.append(f"  profile        {name}: min {shape(lo)}, opt {shape(opt)}, max {shape(hi)}")
    pinned = ", ".join(plan.pinned_fp32_layers) if plan.pinned_fp32_layers else "none"
    lines.append(f"  pinned FP32    {pinned}")
    options = {
        k: v
        for k, v in plan.options.to_dict().items()
        if v is not None and v is not False and k not in ("precision", "tf32")
    }
    lines.append(f"  options        {', '.join(f'{k}={v}' for k, v in options.items()) or 'defaults'}")
    lines += [f"  note           {note}" for note in plan.notes]
    return lines


def engine_audit_line(name: str, sidecar: EngineSidecar) -> str:
    """'tensorrt:m.engine: fp16 engine (weakly typed, TensorRT 10.3.0), audited: FP16 212, FP32 14 compute layers'."""
    audit = sidecar.audit
    audited = f"audited: {audit.summary()}" if audit else "not audited (built by an older danet-deploy)"
    return f"{name}: {sidecar.precision} engine ({sidecar.build_path}, TensorRT {sidecar.tensorrt_version}), {audited}"


def engine_inspect_lines(
    path: str, sidecar: EngineSidecar, live: Any = None, notes: tuple[str, ...] | list[str] = ()
) -> list[str]:
    """What `inspect model.engine` prints: the sidecar's facts, then the engine's own layers where TensorRT read
    them. Every string comes from files: the caller prints them escaped."""
    shape = lambda dims: "x".join(map(str, dims))  # noqa: E731
    memory = f", {sidecar.gpu_memory_bytes / 2**30:.1f} GiB" if sidecar.gpu_memory_bytes else ""
    lines = [
        f"{path}: TensorRT {sidecar.tensorrt_version} engine, {sidecar.precision} ({sidecar.build_path} build)",
        f"  built on       {sidecar.gpu_name} (SM {sidecar.compute_capability}{memory}), "
        f"{sidecar.platform or 'platform not recorded'}, CUDA {sidecar.cuda_version or '?'}",
        f"  built          {sidecar.created} in {sidecar.build_seconds:.0f} s from {sidecar.source_onnx} "
        f"(sha256 {sidecar.source_onnx_sha256[:12]}...)",
    ]
    for profile in sidecar.profiles:
        for name, (lo, opt, hi) in profile.items():
            lines.append(f"  profile        {name}: min {shape(lo)}, opt {shape(opt)}, max {shape(hi)}")
    options = {
        k: v
        for k, v in sidecar.build_options.items()
        if v is not None and v is not False and k not in ("precision", "tf32")
    }
    lines.append(f"  options        {', '.join(f'{k}={v}' for k, v in options.items()) or 'defaults'}")
    lines.append(f"  pinned FP32    {len(sidecar.pinned_fp32_layers) or 'none'}")
    audit = sidecar.audit
    lines.append(f"  layers (build) {audit.summary() if audit else 'not recorded (sidecar from before the audit)'}")
    if audit is not None and audit.devices:
        lines.append(f"  devices        {audit.device_summary()}")
    if live is not None:
        lines.append(f"  layers (now)   {live.summary()} (read from the engine by TensorRT here)")
        lines += [f"  FAILED         {failure}" for failure in live.failures]
    lines += [f"  note           {note}" for note in notes]
    return lines


def _agreement(agreement: Any) -> str:
    if agreement is None:
        return "not measured"
    return (
        f"label agreement {agreement.label_agreement:.4%}, max |diff| {agreement.max_abs_diff:.3g}, "
        f"NaN/Inf {agreement.nonfinite} on {agreement.images} calibration images"
    )


def int8_lines(record: Any, budget: Any = None) -> list[str]:
    calib = record.calibration
    profile = record.cpu_profile
    if profile is None:
        what = "INT8 Q/DQ for TensorRT (symmetric, per-channel weights)"
    else:
        bits = ", 7-bit range" if profile.reduce_range else ""
        what = (
            f"INT8 QDQ for ONNX Runtime on {profile.description} ({profile.activation_type} activations, "
            f"{profile.weight_type} per-channel weights{bits})"
        )
    lines = [
        f"wrote {record.onnx_path}: {what}, method {record.method}, "
        f"{calib.images} images from {calib.source} (seed {calib.seed}), "
        f"cache {'hit' if record.cache_hit else 'miss'}, "
        f"{record.seconds:.1f} s",
        f"vs FP32: {_agreement(record.agreement)}",
    ]
    if profile is not None:
        lines += kernel_lines(record.kernels)
        by_rule = {reason: len(names) for reason, names in record.float_nodes.items() if names}
        lines.append("kept float by rule: " + ", ".join(f"{n} {reason} node(s)" for reason, n in by_rule.items()))
    if record.nodes_to_exclude:
        lines.append(f"kept in higher precision: {', '.join(record.nodes_to_exclude)}")
    if budget is not None:
        lines.append(
            f"mIoU budget {budget.max_miou_drop:g} points vs FP32 {budget.fp32_miou:.2f} on "
            f"{budget.eval_images} images of {budget.eval_data}:"
        )
        for i, step in enumerate(budget.steps):
            kept = f"{len(step.excluded)} layers kept FP32" if step.excluded else "all layers INT8"
            lines.append(
                f"  step {i}: {kept}: mIoU {step.miou:.2f} (drop {step.drop:.2f}) "
                f"{'meets' if step.passed else 'misses'} the budget"
            )
    return lines


def kernel_lines(kernels: list[Any]) -> list[str]:
    """How many Conv / MatMul nodes ONNX Runtime's CPU provider runs as integer kernels, and which stay float
    (`inspect` lists them all)."""
    if not kernels:
        return []
    integer = [k for k in kernels if k.integer]
    lines = [f"ONNX Runtime CPU kernels: {len(integer)} of {len(kernels)} Conv/MatMul/Gemm nodes are integer kernels"]
    lines += [f"  float: {k.node} ({k.op_type} -> {k.kernel})" for k in kernels if not k.integer]
    return lines


def fp16_lines(record: Any) -> list[str]:
    lines = [
        f"wrote {record.onnx_path}: FP16 ({record.mode}), FP32 I/O, {len(record.fp32_nodes)} nodes kept FP32 "
        f"({len(record.cam_nodes)} CAM or GroupNorm by rule), {record.fp16_nodes} in FP16, {record.seconds:.1f} s",
        f"vs FP32: {_agreement(record.agreement)}",
    ]
    report = record.range_report
    if report is None:
        lines.append("range report: none (give --calib to measure magnitudes)")
        return lines
    counts = f"{len(report.overflow)} tensors beyond the FP16 range, {len(report.unprotected)} left in FP16"
    lines.append(f"range report ({report.images} images, FP16 max {report.fp16_max:g}): {counts}")
    for t in report.tensors:
        where = {True: "kept FP32", False: "FP16 (unprotected)", None: "?"}[t.kept_fp32]
        lines.append(f"  {t.tier:<8} {t.absmax:>12.4g}  {t.op_type:<10} {t.tensor} -> {where}")
    return lines


def benchmark_table(results: list[dict[str, Any]], device: str) -> Table:
    first = results[0]
    table = Table(title=f"benchmark: {first['warmup']} warm-up + {first['iterations']} timed runs, {device}")
    for column in (
        "backend",
        "precision",
        "input",
        "median ms",
        "p90 ms",
        "p99 ms",
        "end-to-end ms",
        "images/s",
        "peak RSS",
        "threads",
    ):
        table.add_column(column, justify="left" if column in ("backend", "precision", "input") else "right")
    for r in results:
        shape = "x".join(map(str, r["input_shape"]))
        times = [f"{r[k]:.1f}" for k in ("median_ms", "p90_ms", "p99_ms", "end_to_end_median_ms")]
        memory = f"{r['peak_rss_mib']:.0f} MiB"
        label = precision_label(r["precision"], r.get("quantized_for"))
        table.add_row(
            escape(str(r["name"])), label, shape, *times, f"{r['throughput_ips']:.2f}", memory, str(r["threads"] or "-")
        )
    return table
