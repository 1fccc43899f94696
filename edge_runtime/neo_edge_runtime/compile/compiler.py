"""The local compiler: SageMaker Neo's job, done by TVM on the build machine.

``compile_model(model, target, output_dir)`` reads an ONNX, XGBoost or PyTorch
(``torch.export`` archive) model, compiles it for a Neo target name, and
writes an artifact folder (see :mod:`neo_edge_runtime.artifact`).

Build machine only: this module imports the full TVM compiler.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from .. import artifact
from ..errors import CompileError, TargetError
from ..targets import Target, framework as framework_spec, host_arch, resolve
from . import rnn
from .rnn import onnx_converters as _with_rnn_converters

_SUFFIX_FRAMEWORK = {
    ".onnx": "ONNX", ".json": "XGBOOST", ".ubj": "XGBOOST", ".xgb": "XGBOOST",
    ".pt2": "PYTORCH", ".tflite": "TFLITE", ".pb": "TENSORFLOW", ".h5": "KERAS",
    ".keras": "KERAS", ".params": "MXNET", ".weights": "DARKNET",
}

TUNING_MARKER = "neo_edge_tuning.json"


def detect_framework(path: str | os.PathLike) -> str:
    """The Neo framework name for a model file, from its suffix."""
    p = Path(path)
    if p.is_dir() and (p / "saved_model.pb").exists():
        return "TENSORFLOW"
    fw = _SUFFIX_FRAMEWORK.get(p.suffix.lower())
    if fw is None:
        raise CompileError(f"cannot tell the framework of {p.name!r} from its suffix; pass "
                           f"framework= (one of ONNX, XGBOOST, PYTORCH)")
    return fw


# ---------------------------------------------------------------------------------------
# Frontends: every framework becomes a Relax IRModule with its weights detached.


def _served_dtype(value_info, role: str) -> str:
    """The numpy name of an ONNX graph input's or output's element type; a
    :class:`CompileError` naming the tensor and its type if the edge runtime cannot take
    or return it (bfloat16, float8, int4, float4, strings, ...: numpy has no such dtype,
    or the device's runtime none)."""
    from onnx import helper

    elem = value_info.type.tensor_type.elem_type
    try:
        dtype = helper.tensor_dtype_to_np_dtype(elem).name
    except KeyError:
        dtype = None
    if dtype not in artifact.DTYPES:
        try:
            kind = helper.tensor_dtype_to_string(elem).replace("TensorProto.", "")
        except (KeyError, ValueError):
            kind = f"element type {elem}"
        raise CompileError(f"{role} {value_info.name!r} is a tensor of {kind}; the edge "
                           f"runtime's inputs and outputs are tensors of "
                           f"{', '.join(artifact.DTYPES)}")
    return dtype


def _onnx_io(model) -> tuple[list[dict], list[str]]:
    init_names = {i.name for i in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tt.shape.dim]
        inputs.append({"name": vi.name, "shape": dims, "dtype": _served_dtype(vi, "input")})
    for vo in model.graph.output:
        _served_dtype(vo, "output")
    return inputs, [o.name for o in model.graph.output]


def _static_inputs(declared: list[dict], shapes: Optional[Mapping[str, Sequence[int]]],
                   dtypes: Optional[Mapping[str, str]]) -> list[dict]:
    shapes, dtypes = dict(shapes or {}), dict(dtypes or {})
    known = {i["name"] for i in declared}
    for name in list(shapes) + list(dtypes):
        if name not in known:
            raise CompileError(f"input_shapes/input_dtypes name {name!r}, which is not an input "
                               f"of the model; its inputs are {', '.join(sorted(known))}")
    out = []
    for i in declared:
        name, model_shape = i["name"], i["shape"]
        if name in shapes:
            shape = list(shapes[name])
            if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
                raise CompileError(f"input_shapes[{name!r}] must be a list of sizes of 0 or "
                                   f"more; got {shapes[name]!r}")
            if len(shape) != len(model_shape):
                raise CompileError(f"input_shapes[{name!r}] is {shape}, {len(shape)} "
                                   f"dimensions; the model's input {name!r} has "
                                   f"{len(model_shape)}: {model_shape}")
        else:
            shape = list(model_shape)
        # A size of 0 is as static as any other: the tensor is empty.
        symbolic = [d for d in shape if not isinstance(d, int)]
        if symbolic:
            dim = symbolic[0]
            what = f"its dimension {dim!r} is symbolic" if dim else "a dimension of unknown size"
            example = [d if isinstance(d, int) else 1 for d in shape]
            raise CompileError(
                f"input {name!r} has a dynamic shape {shape} ({what}); the edge runtime "
                f"serves static shapes: pass input_shapes={{{name!r}: {example}}} "
                f"(neo-edge compile --input-shape {name}={','.join(map(str, example))})")
        dtype = str(dtypes.get(name, i["dtype"]))
        if dtype not in artifact.DTYPES:
            raise CompileError(f"input_dtypes[{name!r}] must be one of "
                               f"{', '.join(artifact.DTYPES)}; got {dtype!r}")
        out.append({"name": name, "shape": shape, "dtype": dtype})
    return out


def _onnx_nodes(graph) -> list[tuple[str, str]]:
    """(op type, node name) of every node of ``graph`` and of its subgraphs (If, Loop,
    Scan bodies), in graph order."""
    nodes = []
    for node in graph.node:
        nodes.append((node.op_type, node.name or (node.output[0] if node.output else "")))
        for a in node.attribute:
            for g in [a.g] if a.HasField("g") else list(a.graphs):
                nodes += _onnx_nodes(g)
    return nodes


def _describe_nodes(nodes: list[tuple[str, str]]) -> str:
    """``LSTM (node /rnn/LSTM), GRU (nodes /a/GRU, /b/GRU)``, op types in first-seen order."""
    by_op: dict[str, list[str]] = {}
    for op, name in nodes:
        by_op.setdefault(op, []).append(name)
    parts = []
    for op, names in by_op.items():
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        parts.append(f"{op} (node{'s' if len(names) > 1 else ''} {shown})")
    return ", ".join(parts)


def _source_nodes(path: Path, fw: str) -> list[tuple[str, str]]:
    """(op type, node name) of the ONNX nodes the model at ``path`` is imported from:
    none for PyTorch."""
    if fw == "ONNX":
        return _onnx_nodes(_load_onnx(path).graph)
    if fw == "XGBOOST":
        from .xgboost_onnx import load_xgboost_json, xgboost_to_onnx
        return _onnx_nodes(xgboost_to_onnx(load_xgboost_json(str(path)), path.stem).graph)
    return []


def _check_onnx_operators(onnx_model, model_name: str) -> None:
    """Raise :class:`CompileError` naming the operators (and their nodes) TVM's ONNX
    importer has no converter for."""
    try:
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
    except ImportError:  # another TVM layout: its importer reports them itself
        return
    known = set(_get_convert_map()) | {"Constant", "If"}
    missing = [(op, name) for op, name in _onnx_nodes(onnx_model.graph) if op not in known]
    if missing:
        raise CompileError(f"{model_name}: ONNX operators not supported by TVM's importer: "
                           f"{_describe_nodes(missing)}")


@_with_rnn_converters()  # TVM's importer lacks LSTM, GRU and RNN: ours, for this import
def _import_onnx(onnx_model, shapes, dtypes, model_name: str = "model.onnx"):
    from tvm.relax.frontend.onnx import from_onnx

    from .onnx_ml import lower_onnx_ml
    from .onnx_static import make_static

    onnx_model = lower_onnx_ml(onnx_model, model_name)  # ai.onnx.ml into standard ONNX
    declared, output_names = _onnx_io(onnx_model)
    inputs = _static_inputs(declared, shapes, dtypes)
    _check_onnx_operators(onnx_model, model_name)
    try:
        onnx_model = make_static(onnx_model, {i["name"]: i["shape"] for i in inputs})
    except CompileError as exc:
        raise CompileError(f"{model_name}: {exc}") from None
    try:
        mod = from_onnx(onnx_model, shape_dict={i["name"]: i["shape"] for i in inputs},
                        dtype_dict={i["name"]: i["dtype"] for i in inputs},
                        keep_params_in_input=True)
    except Exception as exc:  # the frontend raises many kinds; name the model's problem
        raise CompileError(f"{model_name}: TVM's ONNX frontend could not import the model: "
                           f"{_first_line(exc)}") from exc
    return mod, inputs, output_names


def _load_onnx(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, ValueError) as exc:
        raise CompileError(f"{path.name!r} is not a valid ONNX model: {exc}") from None
    if not model.graph.node:
        raise CompileError(f"{path.name!r} is not a valid ONNX model: its graph has no nodes")
    return model


def _import(path: Path, fw: str, shapes, dtypes):
    """(IRModule with params as inputs, input specs, output names)."""
    if fw == "ONNX":
        return _import_onnx(_load_onnx(path), shapes, dtypes, path.name)
    if fw == "XGBOOST":
        if shapes:
            raise CompileError("XGBoost models take no input_shapes: the input is "
                               "[1, num_feature] float32, read from the model")
        from .xgboost_onnx import load_xgboost_json, xgboost_to_onnx
        return _import_onnx(xgboost_to_onnx(load_xgboost_json(str(path)), path.stem), None, None,
                            path.name)
    if fw == "PYTORCH":
        return _import_pytorch(path)
    if fw in ("TENSORFLOW", "TFLITE", "KERAS"):
        from .tf_convert import to_onnx
        with tempfile.TemporaryDirectory(prefix="neo-edge-tf2onnx-") as tmp:
            return _import_onnx(_load_onnx(to_onnx(path, fw, tmp)), shapes, dtypes, path.name)
    spec = framework_spec(fw)
    raise CompileError(f"the local compiler does not read {fw} models: {spec.export_hint}, "
                       "then compile the .onnx file")


def _import_pytorch(path: Path):
    try:
        import torch
    except ImportError:
        raise CompileError("compiling PyTorch models needs the torch extra: "
                           "pip install 'neo-edge[torch]' (torch==2.13.0)") from None
    from tvm.relax.frontend.torch import from_exported_program

    from . import torch_frontend  # converters correcting TVM's

    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise CompileError(f"{path.name!r} is not a torch.export archive (.pt2 from "
                           f"torch.export.save): {exc}") from None
    inputs = []
    for spec in program.graph_signature.input_specs:
        if spec.kind.name != "USER_INPUT":
            continue
        meta = program.graph.find_nodes(op="placeholder", target=spec.arg.name)[0].meta["val"]
        inputs.append({"name": spec.arg.name, "shape": [int(d) for d in meta.shape],
                       "dtype": str(meta.dtype).replace("torch.", "")})
    try:
        mod = from_exported_program(program, keep_params_as_input=True,
                                    custom_convert_map=torch_frontend.CONVERT_MAP)
    except Exception as exc:  # the frontend raises many kinds; name the model's problem
        raise CompileError(f"{path.name}: TVM's PyTorch frontend could not import the "
                           f"model: {_first_line(exc)}") from exc
    n_out = len(program.graph_signature.user_outputs)
    return mod, inputs, [f"output{i}" for i in range(n_out)]


# ---------------------------------------------------------------------------------------
# Build


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message (TVM's carry a C++ traceback)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else ""


class _PassFailed(Exception):
    """A step of the optimized build failed: the module is built by TVM's stock pipeline."""

    def __init__(self, name: str, exc: BaseException):
        super().__init__(f"{name}: {type(exc).__name__}: {_first_line(exc)}")
        self.name, self.exc = name, exc


class _Passes:
    """Runs the compiler's own passes, which make a model faster, never decide whether
    it compiles.

    :meth:`run` runs an optional pass: if it raises, or leaves a module that is not
    well formed, the module goes on without it. :meth:`require` runs a step the
    optimized build cannot do without: if it fails, the optimized build is abandoned
    and the model is built by TVM's stock pipeline (:func:`_build`). Either way the
    pass and the reason are logged through ``log`` and listed in :attr:`skipped`
    (``[{"pass": name, "reason": "<exception type>: <first line of its message>"}]``),
    which the manifest records.
    """

    def __init__(self, log: Callable[[str], None] = lambda msg: None):
        self.log = log
        self.skipped: list[dict] = []

    def skip(self, name: str, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        if {"pass": name, "reason": reason} not in self.skipped:
            self.skipped.append({"pass": name, "reason": reason})
            self.log(f"skipped {name}: {reason}")

    def run(self, name: str, fn: Callable, mod, *args):
        """``fn(mod, *args)``, a module; ``mod`` unchanged if it fails."""
        try:
            out = fn(mod, *args)
            _check_well_formed(out, mod)
            return out
        except Exception as exc:  # any failure of an optimization leaves the module as it was
            self.skip(name, exc)
            return mod

    def attempt(self, name: str, fn: Callable, *args) -> bool:
        """Call ``fn(*args)`` for its effect; False if it failed."""
        try:
            fn(*args)
            return True
        except Exception as exc:  # the build goes on without what it would have added
            self.skip(name, exc)
            return False

    def require(self, name: str, fn: Callable, *args):
        """``fn(*args)``; raises :class:`_PassFailed` if it fails."""
        try:
            return fn(*args)
        except _PassFailed:
            raise
        except Exception as exc:  # the optimized build cannot go on: _build falls back
            raise _PassFailed(name, exc) from exc


def _check_well_formed(mod, before) -> None:
    """Raise ValueError if a pass turned the well-formed module ``before`` into ``mod``,
    which is not."""
    import tvm
    from tvm import relax

    if mod is before or not isinstance(mod, tvm.IRModule):
        return
    if not relax.analysis.well_formed(mod) and relax.analysis.well_formed(before):
        raise ValueError("the pass produced a module that is not well formed")


#: Relax operators (as TVM's messages name them) and the ONNX operators they come from,
#: where the names differ beyond case, underscores and a ``2d`` suffix.
_RELAX_TO_ONNX = {
    "matmul": ["MatMul", "Gemm"], "linear": ["Gemm", "MatMul"], "permute_dims": ["Transpose"],
    "take": ["Gather"], "layer_norm": ["LayerNormalization"],
    "batch_norm": ["BatchNormalization"], "strided_slice": ["Slice"], "concat": ["Concat"],
    "max_pool2d": ["MaxPool"], "avg_pool2d": ["AveragePool"], "maximum": ["Max", "Relu"],
    "minimum": ["Min"], "nn.relu": ["Relu"], "nn.softmax": ["Softmax"], "nn.gelu": ["Gelu"],
    "adaptive_avg_pool2d": ["GlobalAveragePool"], "conv1d": ["Conv"], "conv2d": ["Conv"],
    "conv3d": ["Conv"], "conv2d_transpose": ["ConvTranspose"], "clip": ["Clip"],
    "astype": ["Cast"], "broadcast_to": ["Expand"], "expand_dims": ["Unsqueeze"],
}


def _build_failure(model_name: str, nodes: list[tuple[str, str]], exc: BaseException) -> str:
    """The message of a model TVM cannot build: the Relax operator TVM's message names
    and the ONNX nodes of the type it comes from."""
    import re

    text = str(exc)
    ops = list(dict.fromkeys(re.findall(r"relax\.((?:nn\.|image\.)?[a-z_0-9]+)", text)))
    ops = [op for op in ops if op not in ("call_tir", "call_packed", "call_dps_packed")]
    where = ""
    if ops:
        op = ops[0]
        short = op.split(".")[-1]

        def norm(name: str) -> str:
            return re.sub(r"[0-9]d$", "", name.lower().replace("_", ""))

        onnx_types = set(_RELAX_TO_ONNX.get(op, _RELAX_TO_ONNX.get(short, [])))
        matched = [(t, n) for t, n in nodes if t in onnx_types or norm(t) == norm(short)]
        where = f" at Relax operator {op}" + (
            f", from ONNX {_describe_nodes(matched)}" if matched else "")
    return (f"{model_name}: TVM could not build the model{where}: "
            f"{type(exc).__name__}: {_first_line(exc)}")


def _tvm_target(target: Target) -> dict:
    """The TVM target JSON, with the build host's CPU filled in for ``host``."""
    spec = json.loads(json.dumps(dict(target.tvm_target)))
    if spec.get("mcpu") == "native":
        from tvm.target import codegen
        spec["mcpu"] = codegen.llvm_get_system_cpu()
    return spec


def _output_specs(mod, names: list[str]) -> list[dict]:
    from tvm import relax

    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for k, f in enumerate(fields):
        if not isinstance(f, relax.TensorType) or f.shape is None:
            raise CompileError(f"output {k} of the model has no static tensor shape")
        shape = [int(d) for d in f.shape.values]
        name = names[k] if k < len(names) else f"output{k}"
        specs.append({"name": name, "shape": shape, "dtype": str(f.dtype)})
    return specs


class _TuningProgress:
    """A tqdm counter of the candidate schedules measured, fed by the tuning database
    growing on disk (MetaSchedule runs in C++). No total: the convolutions' template
    candidates come on top of the MetaSchedule trials asked for."""

    def __init__(self, db: Path, enabled: bool):
        self.db, self.enabled = db, enabled
        self._stop = threading.Event()

    def _count(self) -> int:
        f = self.db / "database_tuning_record.json"
        try:
            with open(f, "rb") as fh:
                return sum(1 for _ in fh)
        except FileNotFoundError:
            return 0

    def __enter__(self):
        if not self.enabled:
            return self
        from tqdm import tqdm

        self._start = self._count()
        self._bar = tqdm(desc="tuning: schedules measured", unit="schedule")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(1.0):
            self._bar.n = self._count() - self._start
            self._bar.refresh()

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self._bar.n = self._count() - self._start
            self._bar.close()


def _tuning_key(mod, target_spec: dict) -> str:
    """How the tuning marker names a model compiled for ``target_spec``.

    Not the exact CPU (``mcpu``): the schedules in a database are valid on every CPU of
    the architecture, and which kernels there are depends only on the vector units the
    compiler sizes them for (float32 lanes and vector registers, :func:`.schedules
    .vector_config`: convolutions are padded to whole vectors, Winograd tiles chosen by
    lanes). A database measured on one AVX-512 x86_64 CPU thus serves another, and the
    manifest says which CPU measured it (``tuned_on``).
    """
    import tvm

    from . import schedules

    h = hashlib.sha256(tvm.ir.save_json(mod).encode())
    spec = {k: v for k, v in target_spec.items() if k not in ("mcpu", "num-cores")}
    spec["vector_units"] = list(schedules.vector_config(tvm.target.Target(target_spec)))
    h.update(json.dumps(spec, sort_keys=True).encode())
    return h.hexdigest()


def _legacy_tuning_key(mod, target_spec: dict, mcpu: str) -> str:
    """The key databases tuned before :func:`_tuning_key` left out the CPU used: the
    whole target with the measuring CPU as ``mcpu``."""
    import tvm

    h = hashlib.sha256(tvm.ir.save_json(mod).encode())
    h.update(json.dumps({**target_spec, "mcpu": mcpu}, sort_keys=True).encode())
    return h.hexdigest()


def _record_cpus(db: Path) -> list[str]:
    """The ``mcpu`` of the targets the tuning records in ``db`` were measured for, in
    first-seen order."""
    cpus: dict = {}
    try:
        with open(Path(db) / "database_tuning_record.json") as fh:
            for line in fh:
                if line.strip():
                    target = json.loads(line)[1][2]
                    cpus.setdefault(str(target.get("mcpu", "")), None)
    except (OSError, ValueError, IndexError, TypeError, AttributeError):
        pass
    return [c for c in cpus if c]


def _adopt_legacy_trials(state: dict, db: Path, mod, target_spec: dict, key: str) -> bool:
    """Rename ``state``'s trials recorded under a legacy key (:func:`_legacy_tuning_key`,
    for any CPU the records name) to ``key``, noting that CPU as the one that measured
    them. True if it did."""
    done = state["trials"]
    if key in done or not done:
        return False
    for cpu in _record_cpus(db):
        old = _legacy_tuning_key(mod, target_spec, cpu)
        if old in done:
            done[key] = done.pop(old)
            state["measured_on"][key] = {cpu: done[key]}
            return True
    return False


def host_cpu() -> str:
    """This machine's CPU as LLVM names it (``znver4``, ``emeraldrapids``,
    ``cortex-a72``): the CPU tuning measures on."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


#: Layouts MetaSchedule tunes CPU convolutions in: channels last, so the innermost loop
#: (output channels) vectorizes for every conv kind, depthwise included.
#: Transposed convolutions stay channels first: TVM lowers them in NCHW/IOHW only (one
#: that layout conversion turned NHWC reaches the VM's code generator unlowered).
CPU_CONV_LAYOUT = {"relax.nn.conv2d": ["NHWC", "OHWI"],
                   "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}


@contextlib.contextmanager
def _zeroed_allocations():
    """Have glibc's malloc hand out zeroed memory for the duration.

    MetaSchedule's weight layout rewrites may pad (144 channels packed as 3 x 64); the
    kernels never use the padding, but TVM leaves it unwritten, and an artifact must be
    byte-identical for the same inputs. ``mallopt(M_PERTURB, 0xFF)`` makes malloc fill
    new blocks with 0x00 (big blocks come from mmap, zeroed anyway). Elsewhere than glibc
    this does nothing.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        yield
        return
    m_perturb = -6
    mallopt(m_perturb, 0xFF)
    try:
        yield
    finally:
        mallopt(m_perturb, 0)


def _precompute_transform(mod, params: list, tvm_target):
    """Weight prepacking done once on the build machine.

    Runs ``main_transform_params`` (weight layout changes, constant folds of batch-norm
    statistics, MetaSchedule's layout rewrites) here and drops it from ``mod``: the
    artifact ships weights already in the layout its kernels read, so a device neither
    transforms them at load nor holds two copies. Tuning only ever targets this machine's
    architecture, so the result is what the device would compute.
    """
    import tvm
    from tvm import relax

    name = "main_transform_params"
    if name not in [gv.name_hint for gv in mod.get_global_vars()]:
        return mod, params
    tmod = relax.transform.DeadCodeElimination([name])(mod)
    tmod = tvm.IRModule({"main": tmod[name].with_attr("global_symbol", "main"),
                         **{gv: f for gv, f in tmod.functions.items()
                            if gv.name_hint not in (name, "main")}})
    # Run here, on this machine, whatever the target: the transform only moves and folds
    # weights, and the device receives its results.
    host = tvm.target.Target(_tvm_target(resolve("host")))
    vm = relax.VirtualMachine(tvm.compile(tmod, target=host), tvm.cpu())
    with _zeroed_allocations():
        out = vm["main"]([tvm.runtime.tensor(p) if not isinstance(p, tvm.runtime.Tensor)
                          else p for p in params])
        new_params = [tvm.runtime.tensor(o.numpy()) for o in out]
    keep = {gv: f for gv, f in mod.functions.items() if gv.name_hint != name}
    mod = relax.transform.DeadCodeElimination(["main"])(tvm.IRModule(keep, attrs=mod.attrs))
    return mod, new_params


#: Trials each kernel gets first, so pooling, concatenation and residual adds are
#: parallelized and vectorized too; what remains goes to the matmuls.
COVERAGE_TRIALS_PER_TASK = 8
HEAVY_OPS = ["matmul", "dense"]
#: Template schedules measured per kernel, at most (see :mod:`.schedules`).
TEMPLATE_CANDIDATES = 12
#: Template candidates are measured in this many passes over the whole batch, and each is
#: timed by its fastest run. A shared machine's neighbours slow a run down for seconds at
#: a time (by up to 50% here) and never speed it up: one pass compares candidates measured
#: in quiet and busy periods, and picked (for SqueezeNet's classifier) a tile 15% slower
#: on two cores and 30% slower on one than the best. Each pass runs them on all cores and
#: on one: a device may give a model fewer threads than it has cores (several models, or
#: a component configured so), and the tile that is fastest on two cores can be 20%
#: slower than the best on one. A candidate's time is the mean of its time on all cores
#: and its time on one (so the one-core time weighs more in the choice).
MEASURING_PASSES = 2


def _build_candidate(mod, target, _params):
    """MetaSchedule's default candidate build, minus its ``import tvm.s_tir.tensor_intrin``.

    That import registers every tensor intrinsic TVM has and costs about a minute of CPU
    in each builder process, and MetaSchedule starts fresh builder processes for every
    batch of candidates; float32 CPU kernels use no tensor intrinsic.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _measurers(cold_weights: bool = False, template: bool = False):
    """MetaSchedule's builder and runner. ``cold_weights``: each run starts with the
    weights (every argument but the first) flushed from the CPU caches, as they are inside
    a network whose weights outgrow the caches (ResNet-18: 45-80 MB); a kernel measured
    alone otherwise keeps its weights in the last-level cache across runs. ``template``:
    several short runs per candidate (see :data:`MEASURING_PASSES`) instead of
    MetaSchedule's one 100 ms run."""
    from tvm.s_tir import meta_schedule as ms

    evaluator = None
    if cold_weights:
        evaluator = ms.runner.EvaluatorConfig(number=1, repeat=10, min_repeat_ms=0,
                                              enable_cpu_cache_flush=True)
    elif template:
        evaluator = ms.runner.EvaluatorConfig(number=1, repeat=5, min_repeat_ms=20)
    return (ms.builder.LocalBuilder(timeout_sec=300, f_build=_build_candidate),
            ms.runner.LocalRunner(timeout_sec=120, evaluator_config=evaluator))


def _scheduled(kernel, config):
    """``kernel`` (a task's IRModule) with the template schedule ``config``, and the
    arguments it takes as built: weights already in the layout the tile reads."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from . import schedules

    sch = s_tir.Schedule(kernel)
    schedules.apply(sch, config)
    return sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)


def _kernel_key(kernel, cold_weights: bool = False) -> str:
    """How the tuning marker names a kernel (a task's IRModule) measured with warm or cold
    weights (see :func:`_measurers`)."""
    import tvm_ffi

    key = f"{tvm_ffi.structural_hash(kernel) & 0xFFFFFFFFFFFFFFFF:016x}"
    return f"{key} cold" if cold_weights else key


def _measure_templates(tasks, tvm_target, db: Path, searched: dict,
                       log: Callable[[str], None], cold_weights: bool = False) -> list:
    """Measure the template schedules (:mod:`.schedules`: convolutions, pooling windows,
    channel concatenations) of every kernel in ``tasks`` they cover, commit them to the
    database in ``db`` and note the fastest in ``searched`` (which also lists what was
    measured before: only new candidates are). All candidates are built as one batch and
    run in :data:`MEASURING_PASSES` passes over it, on all of ``tvm_target``'s cores and on
    one (each batch starts its own builder and runner processes); a candidate's time is
    its fastest run, and so is its database record's. ``cold_weights``: see
    :func:`_measurers` (noted in ``searched`` apart from warm measurements; all cores
    only). Returns the tasks for MetaSchedule's search: those no template covers, and those
    whose template is the default schedule (:class:`.schedules.DefaultConfig`)."""
    from tvm.s_tir import meta_schedule as ms

    from . import schedules

    lanes, registers = schedules.vector_config(tvm_target)
    database = ms.database.JSONDatabase(work_dir=str(db))
    keys = []  # per task: its key in ``searched``, None if no template covers it
    defaults = set()  # keys whose one candidate is the default schedule
    measured, pending = set(), []  # keys measured now; (key, workload, config, sch, args)
    for task in tasks:
        mod = task.dispatched[0]
        configs = schedules.candidates(mod["main"], lanes, registers, TEMPLATE_CANDIDATES,
                                       target=None if cold_weights else tvm_target)
        key = _kernel_key(mod, cold_weights) if configs else None
        keys.append(key)
        if key is None:
            continue
        if isinstance(configs[0], schedules.DefaultConfig):
            defaults.add(key)
        entry = searched.setdefault(key, {"kernel": task.task_name, "measured": []})
        new = [c for c in configs if str(c) not in entry["measured"]]
        if new and key not in measured:
            measured.add(key)
            workload = database.commit_workload(mod)
            for c in new:
                try:
                    pending.append((key, workload, c, *_scheduled(mod, c)))
                except Exception:  # a template that does not fit: not measured
                    pass
            entry["measured"] = sorted(set(entry["measured"]) | {str(c) for c in new})
    if pending:
        builder, _ = _measurers(cold_weights, template=True)
        built = builder.build([ms.builder.BuilderInput(sch.mod, tvm_target)
                               for *_, sch, _ in pending])
        ok = [(*p, b) for p, b in zip(pending, built) if b.error_msg is None]
        cores = int(tvm_target.attrs.get("num-cores") or 1)
        threads = [cores, 1] if cores > 1 and not cold_weights else [cores]
        fastest = {n: [float("inf")] * len(ok) for n in threads}
        for n in threads:
            with _measuring_threads(n):
                _, runner = _measurers(cold_weights, template=True)
                for _ in range(MEASURING_PASSES):
                    futures = runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu", a)
                                          for *_, a, b in ok])
                    for i, future in enumerate(futures):
                        result = future.result()
                        if result.error_msg is None and result.run_secs:
                            fastest[n][i] = min(fastest[n][i],
                                                *(float(s) for s in result.run_secs))
        for i, (key, workload, config, sch, args_info, _) in enumerate(ok):
            # The record's times, whose mean ranks it: on all cores, and on one; the
            # default schedule's on all cores only, as MetaSchedule measures the
            # schedules it searches for the same kernel.
            secs = [fastest[n][i] for n in (threads[:1] if key in defaults else threads)]
            if float("inf") in secs:
                continue
            database.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, workload, secs, tvm_target, args_info))
            t = round(sum(secs) / len(secs) * 1e3, 6)  # ms, to the ns: tiny kernels too
            entry = searched[key]
            if "ms" not in entry or t < entry["ms"]:
                entry.update(schedule=str(config), ms=t)
        for b in built:
            if b.artifact_path:
                shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
    rest = []
    for task, key in zip(tasks, keys):
        # No template, or no candidate built and ran: MetaSchedule's search instead; it
        # also searches beside the default schedule, which its records must beat.
        if key is None or "ms" not in searched[key] or key in defaults:
            rest.append(task)
        if key is not None and key in measured and "ms" in searched[key]:
            entry = searched[key]
            log(f"{task.task_name}: {entry['schedule']}, {entry['ms']:.3f} ms")
    return rest


@contextlib.contextmanager
def _unnamed_log_handlers_detached(name: str):
    """Detach the handlers without a name from logger ``name`` for the duration.

    MetaSchedule rebuilds its logging configuration from the names of its logger's
    handlers and fails on one without a name (any the application, or pytest's log
    capture, attached).
    """
    logger = logging.getLogger(name)
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for h in unnamed:
        logger.removeHandler(h)
    try:
        yield
    finally:
        for h in unnamed:
            logger.addHandler(h)


def _run_tuning(mod, tvm_target, db: Path, trials: int, done: int, searched: dict,
                log: Callable[[str], None] = lambda msg: None) -> None:
    """Tune ``mod``'s kernels into the database in ``db``.

    Convolutions, pooling windows and concatenations get the template schedules of
    :mod:`.schedules`, each candidate measured (once per database: ``searched`` records
    them). The other kernels get ``trials`` more MetaSchedule trials (``done`` were spent
    before) in two rounds: every kernel a few trials first (a schedule that uses all cores
    and the vector units is most of the gain for the cheap ones), then the gradient task
    scheduler gives the rest to the matmuls. The evolutionary search is sized down
    (population 256, 2 genetic rounds): on a small build machine the search, not the
    measurement, is what a trial costs.
    """
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(mod, tvm_target)
    rest = _measure_templates(tasks, tvm_target, db, searched, log)
    if not trials or not rest:
        return

    def tune(selected, budget, per_task, per_iter):
        with _unnamed_log_handlers_detached("tvm.s_tir.meta_schedule"):
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                selected, str(db), strategy=ms.search_strategy.EvolutionarySearch(
                    population_size=256, genetic_num_iters=2), seed=done)
        builder, runner = _measurers()
        ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(db),
                           max_trials_global=budget, max_trials_per_task=per_task,
                           num_trials_per_iter=per_iter, builder=builder, runner=runner)

    coverage = min(trials, max(0, COVERAGE_TRIALS_PER_TASK * len(rest) - done))
    if coverage:
        tune(rest, coverage, COVERAGE_TRIALS_PER_TASK, COVERAGE_TRIALS_PER_TASK)
    heavy = [t for t in rest if any(op in t.task_name for op in HEAVY_OPS)]
    if trials > coverage and heavy:
        tune(heavy, trials - coverage, trials - coverage, 16)


def _pad_output_channels(mod, lanes: int):
    """Give channels-last convolutions a multiple of ``lanes`` output channels.

    A convolution with 1000 output channels (a classifier) only divides into 8-float
    vectors, half an AVX-512 register; padded to 1008 (zero weights, computed at compile
    time), its tiles use whole registers and the extra channels are sliced off after. Only
    when the padding adds at most 1/8 of the work: 24 channels stay 24.
    """
    import tvm
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x, w = wildcard(), wildcard()
    conv = is_op("relax.nn.conv2d")(x, w)

    def rewrite(expr, matched):
        attrs = matched[conv].attrs
        out = int(matched[w].ty.shape[0])
        pad = -out % lanes
        if (attrs.data_layout, attrs.kernel_layout, int(attrs.groups)) != ("NHWC", "OHWI", 1) \
                or not pad or pad * 8 > out:
            return expr
        weight = relax.op.nn.pad(matched[w], [0, pad, 0, 0, 0, 0, 0, 0])
        padded = relax.op.nn.conv2d(
            matched[x], weight, strides=attrs.strides, padding=attrs.padding,
            dilation=attrs.dilation, data_layout="NHWC", kernel_layout="OHWI",
            out_layout="NHWC", out_dtype=attrs.out_dtype if str(attrs.out_dtype) else None)
        return relax.op.strided_slice(padded, axes=[3], begin=[0], end=[out])

    funcs = {gv: rewrite_call(conv, rewrite, f) if isinstance(f, relax.Function) else f
             for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs)


def _fold_batch_norm(mod):
    """Fold inference batch norms into the convolution before them.

    ``batch_norm(conv2d(x, W))`` becomes ``conv2d(x, W * s) + (beta - mean * s)`` with
    ``s = gamma / sqrt(var + eps)``: both terms depend on the weights alone, so they are
    computed at compile time, and the fused kernel's epilogue is one add instead of a
    subtract, a divide, a multiply and an add per output element.
    """
    import tvm
    from tvm import relax
    from tvm.relax.dpl import is_op, is_tuple_get_item, rewrite_call, wildcard

    x, w, g, b, m, v = (wildcard() for _ in range(6))
    conv = is_op("relax.nn.conv2d")(x, w)
    bn = is_op("relax.nn.batch_norm")(conv, g, b, m, v)
    pattern = is_tuple_get_item(bn, 0)

    def rewrite(expr, matched):
        ca, na = matched[conv].attrs, matched[bn].attrs
        weight = matched[w]
        if (ca.data_layout, ca.kernel_layout, ca.out_layout) != ("NCHW", "OIHW", "NCHW") \
                or int(na.axis) != 1 or not (na.center and na.scale):
            return expr
        out_ch = weight.ty.shape[0]
        dtype = weight.ty.dtype
        scale = relax.op.divide(matched[g], relax.op.sqrt(
            relax.op.add(matched[v], relax.const(float(na.epsilon), dtype))))
        folded = relax.op.nn.conv2d(
            matched[x], relax.op.multiply(weight, relax.op.reshape(scale, (out_ch, 1, 1, 1))),
            strides=ca.strides, padding=ca.padding, dilation=ca.dilation, groups=ca.groups,
            data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW",
            out_dtype=ca.out_dtype if str(ca.out_dtype) else None)
        shift = relax.op.subtract(matched[b], relax.op.multiply(matched[m], scale))
        return relax.op.add(folded, relax.op.reshape(shift, (1, out_ch, 1, 1)))

    funcs = {gv: rewrite_call(pattern, rewrite, f) if isinstance(f, relax.Function) else f
             for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs)


def _unlower_min_max(mod):
    """Turn the ONNX frontend's Clip, Max and Min back into ``R.maximum``/``R.minimum``.

    The frontend emits Clip (ReLU6) as ``call_tir`` of ready-made maximum/minimum
    kernels, which layout conversion cannot see through: it would transpose every
    activation back to NCHW around each ReLU6 and keep it out of the conv's fused kernel.
    It emits Max and Min as a reduction over the inputs stacked on a new axis
    (``R.max(R.stack(inputs, axis=0), axis=[0])``), which layout conversion fails on
    (TVM's layout inference for ``stack``); elementwise, they need neither.
    """
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    call_tir = tvm.ir.Op.get("relax.call_tir")
    stack, broadcast_to = tvm.ir.Op.get("relax.stack"), tvm.ir.Op.get("relax.broadcast_to")
    ops = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}
    reductions = {tvm.ir.Op.get("relax.max"): relax.op.maximum,
                  tvm.ir.Op.get("relax.min"): relax.op.minimum}

    @mutator
    class Unlower(PyExprMutator):
        def stacked(self, call) -> list:
            """The inputs ``call`` (a reduction over axis 0) reads stacked on axis 0."""
            axes, data = call.attrs.axis, call.args[0]
            if axes is None or [int(a) for a in axes] != [0] or call.attrs.keepdims \
                    or not isinstance(data, relax.Var):
                return []
            value = self.lookup_binding(data)
            if not (isinstance(value, relax.Call) and value.op == stack
                    and int(value.attrs.axis) == 0 and isinstance(value.args[0], relax.Tuple)):
                return []
            fields = list(value.args[0].fields)
            if not all(f.ty == call.ty for f in fields):
                return []
            # The frontend broadcasts each input to the output's shape first; the
            # elementwise op broadcasts a scalar itself, and the others are that shape.
            inner = [self.unbroadcast(f, call.ty) for f in fields]
            return inner if any(f.ty == call.ty for f in inner) else fields

        def unbroadcast(self, var, ty):
            value = self.lookup_binding(var) if isinstance(var, relax.Var) else None
            if isinstance(value, relax.Call) and value.op == broadcast_to:
                x = value.args[0]
                if x.ty == ty or (isinstance(x.ty, relax.TensorType) and x.ty.ndim == 0):
                    return x
            return var

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call, "op", None) == call_tir and \
                    isinstance(call.args[0], tvm.ir.GlobalVar):
                kind = call.args[0].name_hint.rstrip("0123456789")
                args = list(call.args[1].fields) if isinstance(call.args[1], relax.Tuple) else []
                if kind in ops and len(args) == 2:
                    return ops[kind](*args)
            if getattr(call, "op", None) in reductions:
                fields = self.stacked(call)
                if len(fields) >= 2:
                    out = fields[0]
                    for f in fields[1:-1]:
                        out = self.builder_.emit(reductions[call.op](out, f))
                    return reductions[call.op](out, fields[-1])
            return call

    mutated = Unlower(mod)
    funcs = {gv: mutated.visit_expr(f) if isinstance(f, relax.Function) else f
             for gv, f in mod.functions.items()}
    return relax.transform.DeadCodeElimination()(tvm.IRModule(funcs, attrs=mod.attrs))


def _split_concatenations(mod):
    """Read channel concatenations in their parts instead of copying them together.

    A pooling window over concatenated channels is the concatenation of the pooled parts,
    and a convolution over them is the sum of convolutions over the parts, each with its
    slice of the weights (sliced at compile time). SqueezeNet concatenates the two expand
    convolutions of each fire module and feeds the result to the next squeeze convolution
    (a max pool in between): read in parts, the concatenation (up to 55x55x128 floats,
    copied and read again) is never written, and the second convolution only adds a small
    partial sum (16 to 64 channels) to the first one's epilogue.

    Only where every reader of the concatenation (NHWC) can read it in parts: a pooling
    window whose own readers can, or a convolution to fewer channels than the
    concatenation has (each part's convolution after the first writes and reads a partial
    sum as large as the output: SqueezeNet's classifier, 512 to 1000 channels, keeps its
    concatenation).
    """
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    concat, conv2d = tvm.ir.Op.get("relax.concat"), tvm.ir.Op.get("relax.nn.conv2d")
    pools = {tvm.ir.Op.get(f"relax.nn.{k}"): getattr(relax.op.nn, k)
             for k in ("max_pool2d", "avg_pool2d")}

    def channel_concat(value) -> bool:
        return isinstance(value, relax.Call) and value.op == concat \
            and int(value.attrs.axis) in (3, -1) and isinstance(value.args[0], relax.Tuple) \
            and all(len(f.ty.shape) == 4 for f in value.args[0].fields)

    def plan(func) -> set:
        """The bindings (vars) of ``func`` to compute from concatenated parts."""
        bound = {b.var: b.value for block in func.body.blocks for b in block.bindings}
        readers: dict = {}
        for var, value in bound.items():
            for used in relax.analysis.free_vars(value):
                readers.setdefault(used, []).append(var)
        for used in relax.analysis.free_vars(func.body.body):
            readers.setdefault(used, []).append(None)  # the function's result

        def in_parts(var, channels) -> bool:
            value = bound[var]
            if value.op in pools:
                return (value.attrs.layout, value.attrs.out_layout) == ("NHWC", "NHWC") \
                    and whole(var, channels)
            return value.op == conv2d and int(value.attrs.groups) == 1 \
                and (value.attrs.data_layout, value.attrs.kernel_layout) == ("NHWC", "OHWI") \
                and int(value.args[1].ty.shape[0]) < channels

        def whole(var, channels) -> bool:  # every reader of ``var`` can read it in parts
            users = readers.get(var, [])
            return bool(users) and all(
                isinstance(bound.get(u), relax.Call) and bound[u].args[0].same_as(var)
                and in_parts(u, channels) for u in users)

        split = set()

        def mark(var):
            for user in readers[var]:
                split.add(user)
                if bound[user].op in pools:
                    mark(user)

        for var, value in bound.items():
            if channel_concat(value) and whole(var, int(var.ty.shape[3])):
                mark(var)
        return split

    @mutator
    class Split(PyExprMutator):
        def __init__(self, mod, split):
            super().__init__(mod)
            self.split = split

        def parts(self, var) -> list:
            value = self.lookup_binding(var)
            return list(value.args[0].fields)

        def visit_var_binding_(self, binding):
            if binding.var not in self.split:
                super().visit_var_binding_(binding)
                return
            call = self.visit_expr(binding.value)
            parts, a = self.parts(call.args[0]), call.attrs
            if call.op in pools:
                new = relax.op.concat([self.builder_.emit(pools[call.op](
                    p, a.pool_size, a.strides, a.padding, a.dilation, a.ceil_mode,
                    *([a.count_include_pad] if call.op.name.endswith("avg_pool2d") else []),
                    layout="NHWC")) for p in parts], axis=3)
            else:
                start, new = 0, None
                for p in parts:
                    n = int(p.ty.shape[3])
                    w = self.builder_.emit(relax.op.strided_slice(
                        call.args[1], axes=[3], begin=[start], end=[start + n]))
                    start += n
                    y = relax.op.nn.conv2d(
                        p, w, strides=a.strides, padding=a.padding, dilation=a.dilation,
                        data_layout="NHWC", kernel_layout="OHWI", out_layout="NHWC",
                        out_dtype=a.out_dtype if str(a.out_dtype) else None)
                    new = y if new is None else relax.op.add(
                        self.builder_.emit(new), self.builder_.emit(y))
            emit = self.builder_.emit if isinstance(binding.var, relax.DataflowVar) \
                else self.builder_.emit_output
            self.set_var_remap(binding.var, emit(new))

    funcs = {}
    for gv, f in mod.functions.items():
        split = plan(f) if isinstance(f, relax.Function) else None
        funcs[gv] = Split(mod, split).visit_expr(f) if split else f
    return relax.transform.DeadCodeElimination()(tvm.IRModule(funcs, attrs=mod.attrs))


def _nonnegative_squeeze_axes(mod):
    """Write the axes of ``R.squeeze`` as non-negative numbers.

    TVM's layout conversion reads a negative squeeze axis (``squeeze(x, axis=[-2])``, as
    PyTorch's exporters write ``x[:, 0]`` and ``x.squeeze(-1)``) as a position in the
    layout string and fails with ``std::bad_alloc``, whether or not the function has a
    convolution.
    """
    import tvm
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x = wildcard()
    squeeze = is_op("relax.squeeze")(x)

    def rewrite(expr, matched):
        axes, ty = matched[squeeze].attrs.axis, matched[x].ty
        if axes is None or not isinstance(ty, relax.TensorType) or ty.ndim < 0 \
                or all(int(a) >= 0 for a in axes):
            return expr
        return relax.op.squeeze(matched[x], [int(a) % ty.ndim for a in axes])

    funcs = {gv: rewrite_call(squeeze, rewrite, f) if isinstance(f, relax.Function) else f
             for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs)


def _convert_layout(mod):
    """Convolutions in channels-last layout (:data:`CPU_CONV_LAYOUT`)."""
    from tvm.relax import transform as T

    return T.ConvertLayout(CPU_CONV_LAYOUT)(_nonnegative_squeeze_axes(mod))


def _channels_last(mod, tvm_target, passes: Optional[_Passes] = None):
    """``mod`` with batch norms folded into the convolutions, ReLU6 visible to fusion,
    convolutions in channels-last layout with whole vectors of output channels, and
    channel concatenations read in parts; 1-D convolutions and pools as 2-D ones,
    transposed convolutions as direct ones and ``clip`` as ``maximum``/``minimum``, so
    they go channels last too (:mod:`.generic`).
    Each of these passes that fails is skipped (see :class:`_Passes`)."""
    from . import generic, schedules

    passes = passes or _Passes()
    with tvm_target:
        mod = passes.run("conv1d_as_conv2d", generic.conv1d_as_conv2d, mod)
        mod = passes.run("conv_transpose_as_conv", generic.conv_transpose_as_conv, mod)
        mod = passes.run("fold_batch_norm", _fold_batch_norm, mod)
        mod = passes.run("unlower_min_max", _unlower_min_max, mod)
        mod = passes.run("clip_as_min_max", generic.clip_as_min_max, mod)
        mod = passes.run("convert_layout", _convert_layout, mod)
        mod = passes.run("unit_permutes_as_reshapes", generic.unit_permutes_as_reshapes, mod)
        mod = passes.run("fast_math", generic.fast_math, mod)
        mod = passes.run("split_concatenations", _split_concatenations, mod)
        return passes.run("pad_output_channels", _pad_output_channels, mod,
                          schedules.vector_config(tvm_target)[0])


def _tuning_module(mod, params: list, tvm_target, winograd_tile,
                   passes: Optional[_Passes] = None):
    """``mod`` as tuning sees it, with the weights ``main`` then takes.

    TVM's static_shape_tuning pipeline, plus :func:`_channels_last`, 3x3 convolutions
    computed by Winograd's algorithm where ``winograd_tile(signature)`` (see
    :mod:`.winograd`) says so, and what depends on the weights alone (folded weights and
    shifts, layout changes, padding, Winograd weight transforms) computed here once.
    Our passes that fail are skipped (``passes``, see :class:`_Passes`); TVM's pipeline or
    the weight computation failing raises :class:`_PassFailed`.
    """
    import tvm
    from tvm import relax
    from tvm.relax import transform as T

    from . import winograd

    passes = passes or _Passes()
    mod = passes.run("winograd", winograd.rewrite,
                     _channels_last(mod, tvm_target, passes), winograd_tile)
    with tvm_target:
        mod = passes.require("lift_transform_params", tvm.transform.Sequential([
            T.DecomposeOpsForInference(), T.CanonicalizeBindings(),
            T.LiftTransformParams()]), mod)
        mod, params = passes.require("precompute_transform", _precompute_transform,
                                     mod, params, tvm_target)
        mod = tvm.transform.Sequential([
            relax.get_pipeline("zero"), T.AttachAttrLayoutFreeBuffers()])(mod)
    return mod, params


#: A larger Winograd tile must beat the smaller choice (direct, then F(2x2)) by this much
#: to be used: it costs float32 precision, and its transformed weights take (m + 2)^2 / 9
#: times the direct kernel's memory (F(4x4): 4x), on disk and on the device.
WINOGRAD_MARGIN = 0.10


def _winograd_module(sig):
    """One convolution of signature ``sig`` with a shift and ReLU after it, as a model:
    (module, weights) to measure the ways of computing it on."""
    import numpy as np
    from tvm import relax

    def tensor(name, *shape):
        return relax.Var(name, relax.TensorType(shape, "float32"))

    x = tensor("x", 1, sig.height, sig.width, sig.in_channels)
    w = tensor("w", sig.out_channels, 3, 3, sig.in_channels)
    b = tensor("b", sig.out_channels)
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w, b], attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, padding=sig.padding, data_layout="NHWC",
                                           kernel_layout="OHWI"))
            y = bb.emit_output(bb.emit(relax.op.nn.relu(relax.op.add(y, b))))
        bb.emit_func_output(y)
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((sig.out_channels, 3, 3, sig.in_channels))
               .astype("float32") * 0.1, rng.standard_normal(sig.out_channels).astype("float32")]
    return bb.get(), weights


def _choose_winograd_tiles(mod, tvm_target, db: Path, searched: dict, tiles: dict,
                           log: Callable[[str], None]) -> None:
    """Measure each eligible 3x3 convolution shape of ``mod`` not yet in ``tiles`` three
    ways (direct, F(2x2), F(4x4), each with its template candidates) and note the fastest
    tile size in ``tiles`` (0: direct), keyed by the shape.

    Measured with cold weights (:func:`_measurers`): Winograd's transformed weights are
    (m + 2)^2 / 9 times the direct kernel's, and inside a network they come from memory.
    Measured warm, ResNet-18's kernels summed to 10.8 ms with F(4x4)/F(2x2) nearly
    everywhere, but the network ran 17.9 ms, reading 80 MB of weights per inference.
    """
    from tvm.s_tir import meta_schedule as ms

    from . import winograd

    ways = {}  # (signature, tile size) -> the kernels computing it
    for sig in winograd.signatures(_channels_last(mod, tvm_target, _Passes())):
        if str(sig) in tiles:
            continue
        conv, weights = _winograd_module(sig)
        for m in (0, *winograd.TILES):
            kernels, _ = _tuning_module(conv, weights, tvm_target, lambda _, m=m: m)
            ways[sig, m] = ms.relax_integration.extract_tasks(kernels, tvm_target)
    if not ways:
        return
    rest = _measure_templates([t for tasks in ways.values() for t in tasks], tvm_target, db,
                              searched, lambda msg: None, cold_weights=True)
    times = {}
    for (sig, m), tasks in ways.items():
        measured = [searched[_kernel_key(t.dispatched[0], cold_weights=True)]["ms"]
                    for t in tasks if t not in rest]
        if measured:
            times.setdefault(sig, {})[m] = min(measured)
    for sig in dict.fromkeys(sig for sig, _ in ways):
        best, found = 0, times.get(sig, {})
        for m, t in found.items():
            if t < found.get(best, float("inf")) * (1 - WINOGRAD_MARGIN):
                best = m
        tiles[str(sig)] = best
        log(f"conv {sig}: " + ", ".join(f"{'direct' if m == 0 else f'F({m}x{m})'} "
                                        f"{t:.3f} ms" for m, t in found.items())
            + f" -> {'direct' if best == 0 else f'Winograd F({best}x{best})'}")


def _tune(mod, params: list, tvm_target, db: Path, trials: int, done: int, searched: dict,
          tiles: dict, log: Callable[[str], None], passes: Optional[_Passes] = None):
    """Tuning with weight prepacking, sized for small build machines.

    Chooses how each 3x3 convolution shape is computed (:func:`_choose_winograd_tiles`,
    remembered in ``tiles``), tunes :func:`_tuning_module` (convolutions with template
    schedules, see :func:`_run_tuning`) and applies the database; MetaSchedule's layout
    rewrites of the weights are computed here too, so tuning spends no trials on weight
    transposes and the device receives prepacked weights.

    Returns (module to build, weights ``main`` takes). Failures are handled as
    :class:`_Passes` says: the Winograd measurements and the tuning failing leave the
    default tiles and the records made so far.
    """
    from tvm.s_tir import meta_schedule as ms

    from . import schedules, winograd

    passes = passes or _Passes(log)
    if trials:
        passes.attempt("choose_winograd_tiles", _choose_winograd_tiles,
                       mod, tvm_target, db, searched, tiles, log)
    lanes = schedules.vector_config(tvm_target)[0]
    mod, params = _tuning_module(
        mod, params, tvm_target,
        lambda sig: tiles.get(str(sig), winograd.default_tile(sig, lanes)), passes)
    if trials:
        with tvm_target:
            passes.attempt("tuning", _run_tuning, mod, tvm_target, db, trials, done,
                           searched, log)
    return passes.require("apply_database", _apply_database, mod, params, tvm_target,
                          ms.database.JSONDatabase(work_dir=str(db)))


def _apply_database(mod, params: list, tvm_target, database=None):
    """The kernels of :func:`_tuning_module`'s ``mod`` scheduled by the records in
    ``database`` (if any); kernels it has no record of get their most promising template
    schedule (:func:`.schedules.candidates`, first; the default schedule for kernels no
    other template covers), unmeasured. Weight layout rewrites are computed here.
    Returns (module to build, weights)."""
    import tvm
    from tvm.relax import transform as T
    from tvm.s_tir import meta_schedule as ms

    from . import schedules

    lanes, registers = schedules.vector_config(tvm_target)
    with tempfile.TemporaryDirectory(prefix="neo-edge-schedules-") as tmp:
        fallback = ms.database.JSONDatabase(work_dir=tmp)
        for task in ms.relax_integration.extract_tasks(mod, tvm_target):
            kernel = task.dispatched[0]
            if database is not None and database.has_workload(kernel) and \
                    database.get_top_k(database.commit_workload(kernel), 1):
                continue
            configs = schedules.candidates(kernel["main"], lanes, registers, limit=1,
                                           target=tvm_target)
            try:
                sch, args_info = _scheduled(kernel, configs[0]) if configs else (None, None)
            except Exception:  # the template does not fit after all: default_schedules
                sch = None
            if sch is not None:
                fallback.commit_tuning_record(ms.database.TuningRecord(
                    sch.trace, fallback.commit_workload(kernel), [0.0], tvm_target,
                    args_info))
        if database is not None:
            # The first database with a record of a kernel schedules it.
            fallback = ms.database.OrderedUnionDatabase(database, fallback)
        with tvm_target, fallback:
            mod = tvm.transform.Sequential([
                T.MetaScheduleApplyDatabase(), T.SplitLayoutRewritePreproc(),
                T.LiftTransformParams(), T.FoldConstant()])(mod)
    return _precompute_transform(mod, params, tvm_target)


def _untuned(mod, params: list, tvm_target, passes: Optional[_Passes] = None):
    """An untuned CPU build: 3x3 convolutions use Winograd where
    :func:`.winograd.default_tile` expects it to pay and each convolution, pooling window
    and concatenation gets its most promising template schedule, unmeasured
    (:func:`_apply_database`), so a model compiled for a device nobody tuned on (a cross
    compile) still runs register-tiled, vectorized convolutions; the other kernels keep
    TVM's default schedules. Returns (module to build, weights); failures as
    :class:`_Passes` says."""
    from . import schedules, winograd

    passes = passes or _Passes()
    lanes = schedules.vector_config(tvm_target)[0]
    mod, params = _tuning_module(mod, params, tvm_target,
                                 lambda sig: winograd.default_tile(sig, lanes), passes)
    return passes.require("apply_database", _apply_database, mod, params, tvm_target)


def _stock_build(mod, param_values: list, tvm_target):
    """``mod`` built by TVM's stock pipeline (``tvm.compile``), its weights bound as
    constants into the library."""
    import tvm
    from tvm import relax

    n_inputs = len(mod["main"].params) - len(param_values)
    binding = dict(zip(mod["main"].params[n_inputs:], param_values))
    mod = relax.transform.BindParams("main", binding)(mod)
    return tvm.compile(mod, target=tvm_target)


def _build(mod, param_values: list, target: Target, target_spec: dict, tune_trials: int,
           tuning_db: Optional[Path], progress: bool, log: Callable[[str], None],
           passes: Optional[_Passes] = None):
    """Compile ``mod`` (weights as trailing inputs of ``main``).

    CPU builds keep the weights apart, prepacked on this machine into the layout their
    kernels read: tuned ones (:func:`_tune`) with the measured schedules, untuned ones
    (:func:`_untuned`) with each convolution's most promising template. Our passes that
    fail are skipped (``passes``, see :class:`_Passes`); if the optimized build fails as
    a whole, ``mod`` is built by TVM's stock pipeline (:func:`_stock_build`). GPU builds
    bind the weights as constants and use dlight's default schedules.

    Returns (executable, weights to ship or None, tuning info for the manifest:
    ``{"trials": ..., "prepacked": whether the shipped weights are prepacked}``).
    Raises whatever TVM's stock pipeline raises for a model it cannot build.
    """
    import tvm

    passes = passes or _Passes(log)
    tvm_target = tvm.target.Target(target_spec)
    if target.device != "cpu":
        return _stock_build(rnn.for_gpu(mod), param_values, tvm_target), None, \
            {"trials": 0, "prepacked": False}
    try:
        return _optimized_build(mod, param_values, target_spec, tune_trials, tuning_db,
                                progress, log, passes)
    except _PassFailed as failed:
        passes.skip(failed.name, failed.exc)
    except Exception as exc:  # our pipeline failed as a whole: TVM's own builds it
        passes.skip("optimized_build", exc)
    log("building with TVM's stock pipeline")
    return _stock_build(mod, param_values, tvm_target), None, {"trials": 0, "prepacked": False}


def _optimized_build(mod, param_values: list, target_spec: dict, tune_trials: int,
                     tuning_db: Optional[Path], progress: bool, log: Callable[[str], None],
                     passes: _Passes):
    """:func:`_build` for CPU targets, with our passes; raises :class:`_PassFailed` where
    it cannot go on."""
    import tvm

    tvm_target = tvm.target.Target(target_spec)
    if tune_trials == 0 and tuning_db is None:
        mod, param_values = _untuned(mod, param_values, tvm_target, passes)
        mod = passes.run("default_schedules", _default_schedules, mod, tvm_target, log)
        ex = passes.require("optimized_build", tvm.compile, mod, tvm_target)
        return ex, param_values, {"trials": 0, "prepacked": bool(param_values)}

    from ..runtime import physical_cores

    # MetaSchedule measures candidates on this machine and sizes them for its cores: as
    # many as the runtime's thread pool gets by default.
    cores = physical_cores()
    tvm_target = tvm.target.Target({**target_spec, "num-cores": cores})
    db = Path(tuning_db) if tuning_db is not None else Path(
        tempfile.mkdtemp(prefix="neo-edge-tuning-"))
    db.mkdir(parents=True, exist_ok=True)
    marker = db / TUNING_MARKER
    state = read_tuning_marker(db)
    done, searched, tiles = state["trials"], state["templates"], state["winograd"]
    key = _tuning_key(mod, target_spec)
    if _adopt_legacy_trials(state, db, mod, target_spec, key):  # the marker, migrated
        marker.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    cpu, measured_on = host_cpu(), state["measured_on"]
    trials = max(0, tune_trials - done.get(key, 0))
    if done.get(key) and not trials:
        log(f"reusing {done[key]} tuning trials from {db}")
    others = sorted(set(measured_on.get(key, {})) - {cpu})
    if done.get(key) and others:
        log(f"tuning records measured on {', '.join(others)}, used on this {cpu}: schedules "
            f"hold across {target_spec.get('mtriple', '').split('-')[0] or 'these'} CPUs with "
            f"the same vector units")
    with _TuningProgress(db, progress and trials > 0), _measuring_threads(cores):
        mod, param_values = _tune(mod, param_values, tvm_target, db, trials,
                                  done.get(key, 0), searched, tiles, log, passes)
    mod = passes.run("default_schedules", _default_schedules, mod, tvm_target, log)
    if trials:
        done[key] = done.get(key, 0) + trials
        measured_on.setdefault(key, {})
        measured_on[key][cpu] = measured_on[key].get(cpu, 0) + trials
        marker.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    ex = passes.require("optimized_build", tvm.compile, mod, tvm_target)
    info = {"trials": done.get(key, 0), "prepacked": bool(param_values)}
    if done.get(key):
        # The CPUs whose measurements chose the schedules ([] where the database does
        # not say): a report compares them with the CPU it runs on.
        info["tuned_on"] = sorted(measured_on.get(key, {}))
    return ex, param_values, info


def _default_schedules(mod, tvm_target, log: Callable[[str], None]):
    """The kernels no template or tuning record scheduled, with a default CPU schedule
    (:func:`.generic.schedule_unscheduled`): parallel and vectorized instead of the
    single-threaded scalar loops TVM otherwise compiles them as."""
    from . import generic

    return generic.schedule_unscheduled(mod, tvm_target, log)


@contextlib.contextmanager
def _measuring_threads(cores: int):
    """Have MetaSchedule's measuring processes run kernels on ``cores`` threads.

    They inherit this process's environment, and TVM's thread pool otherwise starts with
    half the logical CPUs on x86 (one thread on a 2-core machine without SMT), which would
    tune for, and pick, schedules that suit one core.
    """
    from ..runtime import POOL_SIZE_VARIABLE as name

    before = os.environ.get(name)
    os.environ[name] = str(cores)
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def read_tuning_marker(db: Path) -> dict:
    """What tuning spent in ``db``: ``{"trials": {model key: MetaSchedule trials},
    "templates": {kernel hash: the template schedule chosen},
    "winograd": {3x3 convolution shape: Winograd tile size chosen, 0 for direct},
    "measured_on": {model key: {CPU (LLVM's name, :func:`host_cpu`): trials it measured}}}``."""
    marker = Path(db) / TUNING_MARKER
    state = json.loads(marker.read_text()) if marker.exists() else {}
    return {"trials": dict(state.get("trials", {})),
            "measured_on": {k: dict(v) for k, v in state.get("measured_on", {}).items()},
            # "convolutions": what databases tuned before pooling had templates named it
            "templates": dict(state.get("templates", state.get("convolutions", {}))),
            "winograd": dict(state.get("winograd", {}))}


def compile_model(model: str | os.PathLike, target: str | Target = "host",
                  output_dir: str | os.PathLike = "artifact", *,
                  framework: Optional[str] = None,
                  input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                  input_dtypes: Optional[Mapping[str, str]] = None,
                  name: Optional[str] = None, version: str = "1.0.0",
                  tune_trials: int = 0, tuning_db: Optional[str | os.PathLike] = None,
                  metadata: Optional[Mapping[str, Any]] = None,
                  progress: bool = False,
                  log: Callable[[str], None] = lambda msg: None,
                  signer: Any = None) -> Path:
    """Compile ``model`` for ``target`` into the artifact folder ``output_dir``.

    Parameters
    ----------
    model:
        Path to an ONNX (``.onnx``), XGBoost (``.json``/``.ubj``) or PyTorch
        (``.pt2`` from ``torch.export.save``) model. A TensorFlow SavedModel folder,
        a TFLite (``.tflite``) or Keras (``.keras``, ``.h5``) file is converted to
        ONNX with tf2onnx (:mod:`.tf_convert`; the ``tensorflow`` extra). MXNet,
        Darknet and scikit-learn models get an error saying how to export them to ONNX.
    target:
        A Neo target device name (``rasp4b``, ``jetson_xavier``, ``ml_c5``, ...),
        ``host``, or a :class:`Target` (e.g. from ``targets.resolve_platform``).
    output_dir:
        The artifact folder to write. It is replaced whole only once the new artifact
        is complete; on any error nothing is left behind.
    framework:
        Neo framework name; default: from the file suffix.
    input_shapes, input_dtypes:
        Per-input overrides; required for inputs with dynamic dimensions.
    name, version:
        Model name (default: the file's stem) and version recorded in the manifest.
    tune_trials:
        Tuning for CPU targets of this machine's architecture: more than 0 measures
        each 3x3 stride-1 convolution shape direct and by Winograd (:mod:`.winograd`),
        each convolution's template schedules (about 12 each, see :mod:`.schedules`),
        each pooling window's and concatenation's, and gives the other kernels this many
        MetaSchedule trials in all. 0 compiles untuned (each of those kernels gets its
        most promising template, unmeasured), unless ``tuning_db`` holds records, which
        are then applied.
    tuning_db:
        A folder for the tuning database; later compiles of the same model and
        target reuse it instead of tuning again, also on another CPU of the same
        architecture and vector units (the manifest's ``compile_options.tuned_on`` names
        the CPUs that measured it).
    metadata:
        Free-form JSON data stored in the manifest (labels, preprocessing, task). An
        ONNX classifier's own class labels (skl2onnx's) are stored as ``labels`` unless
        this has them (:mod:`.onnx_ml`).
    progress:
        Show a progress bar while tuning.
    signer:
        Sign the manifest with it (``manifest.json.sig``, :mod:`.signing`): a
        :class:`~.signing.FileSigner` or :class:`~.signing.KmsSigner`. The artifact
        appears only once signed. Default: not signed.
    """
    import tvm
    from tvm import relax

    from . import onnx_ml

    src = Path(model)
    if not src.exists():
        raise CompileError(f"model file {str(src)!r} does not exist")
    tgt = resolve(target) if isinstance(target, str) else target
    if not isinstance(tgt, Target):
        raise TargetError(f"target must be a target name or a Target; got {target!r}")
    fw = (framework or detect_framework(src)).upper()
    framework_spec(fw)  # raises for unknown names
    if tune_trials < 0:
        raise CompileError(f"tune_trials must be 0 or more; got {tune_trials}")
    if tune_trials and tgt.device != "cpu":
        raise CompileError(f"tuning is for CPU targets; {tgt.name} runs on {tgt.device} "
                           "and is compiled with dlight's default GPU schedules")
    if (tune_trials or tuning_db is not None) and tgt.arch != host_arch():
        raise CompileError(f"tuning measures on this machine, so target {tgt.name} "
                           f"({tgt.arch}) cannot be tuned on this {host_arch()} machine; "
                           "compile it untuned")
    try:
        json.dumps(dict(metadata or {}))
    except TypeError as exc:
        raise CompileError(f"metadata must be JSON-serializable: {exc}") from None

    if tgt.is_cross and shutil.which(tgt.cross_compiler) is None:
        raise CompileError(f"target {tgt.name} links with {tgt.cross_compiler}, which is not "
                           "installed (make setup installs Debian's cross toolchains)")

    t0 = time.perf_counter()
    log(f"importing {src.name} ({fw})")
    with onnx_ml.recording() as rewritten:  # what rewriting ai.onnx.ml changed for users
        mod, inputs, output_names = _import(src, fw, input_shapes, input_dtypes)
    for note in rewritten.notes:
        log(note)
    mod, params = relax.frontend.detach_params(mod)
    outputs = _output_specs(mod, output_names)
    log(f"compiling for {tgt.name} ({tgt.description})")
    target_spec = _tvm_target(tgt)
    passes = _Passes(log)
    try:
        ex, shipped_params, tuning = _build(
            mod, list(params.get("main", [])), tgt, target_spec, tune_trials,
            Path(tuning_db) if tuning_db is not None else None, progress, log, passes)
    except Exception as exc:  # TVM's stock pipeline cannot build the model
        raise CompileError(_build_failure(src.name, _source_nodes(src, fw), exc)) from exc

    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fcompile = None
        if tgt.is_cross:
            from tvm.support import cc
            fcompile = cc.cross_compiler(tgt.cross_compiler)
        ex.export_library(str(staging / artifact.LIBRARY), fcompile=fcompile)
        if shipped_params:
            tvm.runtime.save_param_dict_to_file(
                {f"p{k}": v for k, v in enumerate(shipped_params)},
                str(staging / artifact.PARAMS))
        manifest = {
            "format_version": artifact.FORMAT_VERSION,
            "model": {"name": name or src.stem, "version": version},
            "framework": fw,
            "source_sha256": artifact.sha256_file(src) if src.is_file() else None,
            "target": {"name": tgt.name, "arch": tgt.arch, "device": tgt.device,
                       "tvm_target": target_spec},
            "library": artifact.LIBRARY,
            "params": artifact.PARAMS if shipped_params else None,
            "inputs": inputs,
            "outputs": outputs,
            "tvm_version": tvm.__version__,
            "compile_options": {"tune_trials": tuning["trials"],
                                "weight_prepack": tuning["prepacked"],
                                "input_shapes": {i["name"]: i["shape"] for i in inputs},
                                **({"tuned_on": tuning["tuned_on"]}
                                   if "tuned_on" in tuning else {})},
            "metadata": {**({"labels": rewritten.labels} if rewritten.labels else {}),
                         **dict(metadata or {})},
        }
        if rewritten.notes:
            manifest["onnx_ml"] = rewritten.notes
        if passes.skipped:
            manifest["optimizations"] = {"skipped": passes.skipped}
        artifact.write_manifest(staging, manifest)
        if signer is not None:
            from .signing import sign_artifact

            sign_artifact(staging, signer)
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return out


def _replace_dir(new: Path, dest: Path) -> None:
    """Move ``new`` to ``dest``, replacing a previous artifact only once ``new`` is complete."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dest)
