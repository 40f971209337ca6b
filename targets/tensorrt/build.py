"""Building TensorRT engines from nnspec's ONNX: profiles from the spec's dims, precision, timing cache,
and the engine manifest.

`build_engine(onnx_path, out_dir, program=...)` lints the model, parses it with the chosen backend
(datacenter TensorRT on a GPU, or TensorRT-RTX ahead of time without one), adds one optimisation
profile whose min/opt/max come from the spec's `dims`, builds, writes `model.engine` atomically and
returns the manifest fields. A parser failure is reported as lint findings naming the IR nodes.
"""
from __future__ import annotations

from pathlib import Path

from nnspec.compiler.errors import LoweringError

from . import backends
from ..files import atomic_write, sha256_bytes, sha256_file
from .lint import LintReport, from_parser_errors, lint, lint_onnx

ENGINE_FILE = "model.engine"
PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_MAX = 64  # a symbolic dim's profile max when the spec gives none


class TensorRTBuildError(LoweringError):
    """TensorRT could not parse or build the model; `report` holds the findings by IR node."""

    def __init__(self, message: str, report: LintReport | None = None, **kw):
        super().__init__(message, **kw)
        self.report = report


def symbol_ranges(program=None, onnx_model=None, dims: dict | None = None) -> dict:
    """{symbol: (min, opt, max)} from the spec's `dims` (defaults: min 1, opt = min, max = max(2*opt, 64)),
    or from the ONNX inputs' dim_params when no program is given. `dims` overrides ({'N': 8} pins opt,
    {'N': (1, 8, 32)} sets all three)."""
    out = {}
    if program is not None:
        g = program.forward
        from nnspec.compiler.ir.dims import symbols
        names = set()
        for n in g.inputs():
            for d in n.outputs[0].shape:
                names |= symbols(d)
        for s in sorted(names):
            r = g.symbols.get(s, {}) or {}
            lo = int(r.get("min") if r.get("min") is not None else 1)
            opt = int(r.get("opt") if r.get("opt") is not None else lo)
            hi = int(r.get("max") if r.get("max") is not None else max(2 * opt, DEFAULT_MAX, lo))
            out[s] = (lo, opt, hi)
    elif onnx_model is not None:
        for vi in onnx_model.graph.input:
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param"):
                    out.setdefault(d.dim_param, (1, 1, DEFAULT_MAX))
    for s, v in (dims or {}).items():
        if isinstance(v, (list, tuple)):
            out[s] = tuple(int(x) for x in v)
        else:
            lo, _, hi = out.get(s, (1, int(v), max(int(v), DEFAULT_MAX)))
            out[s] = (min(lo, int(v)), int(v), max(hi, int(v)))
    for s, (lo, opt, hi) in out.items():
        if not lo <= opt <= hi:
            raise LoweringError(f"dim {s}: profile min/opt/max {lo}/{opt}/{hi} is not ordered",
                                expected="min <= opt <= max in the spec's `dims`")
    return out


def input_profiles(onnx_model, ranges: dict) -> dict:
    """{input name: {'min': [...], 'opt': [...], 'max': [...]}} for every input with a dynamic dim."""
    from nnspec.compiler.ir.dims import resolve

    profiles = {}
    for vi in onnx_model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if not any(d.HasField("dim_param") or not d.HasField("dim_value") for d in dims):
            continue
        prof = {}
        for k, which in (("min", 0), ("opt", 1), ("max", 2)):
            vals = {s: r[which] for s, r in ranges.items()}
            shape = []
            for d in dims:
                if d.HasField("dim_value"):
                    shape.append(int(d.dim_value))
                elif d.HasField("dim_param"):
                    try:
                        shape.append(int(resolve(d.dim_param, vals)))
                    except (KeyError, ValueError, SyntaxError):
                        raise LoweringError(f"input '{vi.name}': no range for dim '{d.dim_param}'",
                                            expected=f"a `dims: {{{d.dim_param}: {{min, opt, max}}}}` entry in the spec")
                else:
                    raise LoweringError(f"input '{vi.name}' has an unnamed dynamic dim", expected="named dims")
            prof[k] = shape
        profiles[vi.name] = prof
    return profiles


class _Log:
    """A TensorRT logger that keeps the messages, so a failure can quote them."""

    def __new__(cls, trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.messages = []

            def log(self, severity, msg):
                if severity <= trt.ILogger.Severity.WARNING:
                    self.messages.append(str(msg))

        return Logger()


def _progress_monitor(trt, backend: str):
    """A TensorRT progress monitor drawing one tqdm bar per top-level build phase (None when this
    TensorRT has no progress API). Builds of large models take tens of seconds; this says where."""
    if not hasattr(trt, "IProgressMonitor"):
        return None
    from tqdm import tqdm

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.bars = {}
            self.seen = set()

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.seen.add(phase_name)
            # Only outermost phases (TensorRT-RTX does not announce its root phase, so a phase whose
            # parent was never started counts as outermost); nested ones would make a wall of bars.
            if parent_phase is None or parent_phase not in self.seen:
                self.bars[phase_name] = tqdm(total=num_steps, desc=f"{backend}: {phase_name}", unit="step",
                                             leave=False, disable=None)

        def step_complete(self, phase_name, step):
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.update(1)
            return True  # keep building

        def phase_finish(self, phase_name):
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

        def close(self):
            for bar in self.bars.values():
                bar.close()
            self.bars.clear()

    return Monitor()


def build_engine(onnx_path, out_dir, program=None, precision: str = "fp32", workspace: int | None = None,
                 dims: dict | None = None, opt_level: int = 3, timing_cache=None, backend: str | None = None,
                 run_lint: bool = True, workspace_mb: int | None = None, progress: bool = True) -> dict:
    """Build `out_dir/model.engine` from `onnx_path`; returns the manifest fields under `tensorrt`.

    precision: fp32 | fp16 | bf16. workspace (bytes) or workspace_mb: builder scratch memory (None: TensorRT's
    default).
    dims: profile overrides per symbol (see `symbol_ranges`). opt_level: builder optimisation level 0-5.
    progress: a progress bar per top-level build phase on stderr (shown only on a terminal).
    timing_cache: a file reused across builds (read when present, written back after the build; datacenter
    TensorRT only: TensorRT-RTX has no timing cache). backend: 'trt' | 'trt-rtx' | None (auto).
    Raises TensorRTUnavailable (exit 3) when no TensorRT can build, TensorRTBuildError on lint errors or
    parser/builder failures (`.report` lists the IR nodes).
    """
    import onnx

    from .precision import lower_precision

    if workspace is None and workspace_mb:
        workspace = int(workspace_mb) << 20
    if precision not in PRECISIONS:
        raise LoweringError(f"unknown precision '{precision}'", expected=", ".join(PRECISIONS))
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    model = onnx.load(str(onnx_path))
    report = lint(program, model) if (run_lint and program is not None) else LintReport()
    if not report.ok:
        raise TensorRTBuildError(report.render(), report)
    name = backends.resolve_backend(backend)
    trt = backends.module(name)
    p = backends.probe()

    ranges = symbol_ranges(program, model, dims)
    profiles = input_profiles(model, ranges)
    fed = lower_precision(model, precision)

    log = _Log(trt)
    builder = trt.Builder(log)
    flags = 0
    if name == "trt" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse(fed.SerializeToString(), str(onnx_path.parent)):
        # The parser does not always say which node failed; the ONNX lint of the same model usually can.
        rep = LintReport(findings=lint_onnx(model, program) + from_parser_errors(parser, program, fed))
        raise TensorRTBuildError(f"{name} could not parse {onnx_path.name}:\n{rep.render()}", rep)
    config = builder.create_builder_config()
    if workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(opt_level)
    cache_used = None
    if timing_cache and name == "trt":
        tc_path = Path(timing_cache)
        cache = config.create_timing_cache(tc_path.read_bytes() if tc_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        cache_used = str(tc_path)
    monitor = _progress_monitor(trt, name) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    if profiles:
        prof = builder.create_optimization_profile()
        for inp, pr in profiles.items():
            prof.set_shape(inp, pr["min"], pr["opt"], pr["max"])
        config.add_optimization_profile(prof)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if monitor is not None:
            monitor.close()
    if serialized is None:
        msgs = "\n".join("  " + m for m in log.messages[-10:]) or "  (no message from TensorRT)"
        raise TensorRTBuildError(f"{name} failed to build the engine:\n{msgs}")
    data = bytes(serialized)
    engine_path = atomic_write(out_dir / ENGINE_FILE, data)
    if cache_used:
        atomic_write(Path(cache_used), bytes(config.get_timing_cache().serialize()))

    gpu = p.gpu if name == "trt" else "none (AOT, TensorRT-RTX)"
    cc = p.compute_capability if name == "trt" else None
    return {
        "backend": name,
        "version": getattr(trt, "__version__", "?"),
        "gpu": gpu,
        "compute_capability": cc,
        "precision": precision,
        "profiles": profiles,
        "dims": {s: {"min": r[0], "opt": r[1], "max": r[2]} for s, r in sorted(ranges.items())},
        "opt_level": int(opt_level),
        "workspace": workspace,
        "timing_cache": cache_used,
        "engine": engine_path.name,
        "engine_sha256": sha256_bytes(data),
        "onnx_sha256": sha256_file(onnx_path),
        "spec_sha256": program.spec.sha256() if program is not None else None,
        "lint": [f.line() for f in report.findings],
    }
