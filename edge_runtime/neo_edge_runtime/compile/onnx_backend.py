"""ONNX's backend API (:class:`onnx.backend.base.Backend`) on the local compiler.

``prepare(model)`` compiles an ONNX ``ModelProto`` for this machine (target ``host``) with
:func:`~neo_edge_runtime.compile.compiler.compile_model` and loads it with
:meth:`EdgeModel.load <neo_edge_runtime.runtime.EdgeModel.load>`; the returned
:class:`EdgeBackendRep` runs it. This is the interface ONNX's backend test suite drives
(``onnx.backend.test``), the way ``onnxruntime.backend`` does for ONNX Runtime::

    from neo_edge_runtime.compile import onnx_backend
    rep = onnx_backend.prepare(model)
    outputs = rep.run([x])          # a list, in the graph's output order

A model TVM cannot import or build raises :class:`UnsupportedModelError`, a
:class:`~neo_edge_runtime.errors.CompileError`; any other failure is an error of this
package or a model the edge runtime does not serve.

Build machine only: compiling imports the full TVM compiler.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from onnx import ModelProto, NodeProto, helper
from onnx.backend.base import Backend, BackendRep, Device, DeviceType

from ..errors import CompileError, InputError

__all__ = ["EdgeBackend", "EdgeBackendRep", "UnsupportedModelError", "prepare", "run",
           "run_model", "run_node", "supports_device", "is_compatible"]


class UnsupportedModelError(CompileError):
    """TVM's ONNX importer or its build refused the model (an operator, an attribute, a
    data type). ``stage`` is ``"import"`` or ``"build"``."""

    def __init__(self, message: str, stage: str):
        super().__init__(message)
        self.stage = stage


_IMPORT_FAILURES = ("not supported by TVM's importer", "TVM's ONNX frontend could not import")


def _import_failure(exc: CompileError) -> bool:
    """Whether ``exc`` is the compiler's report that TVM's ONNX importer refused the model,
    as opposed to one of its own checks or a build failure."""
    return any(marker in str(exc) for marker in _IMPORT_FAILURES)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _stock_build_error(model: ModelProto, shapes: Mapping[str, Sequence[int]]
                       ) -> Optional[BaseException]:
    """The error TVM's stock path (its ONNX importer, with the compiler's LSTM, GRU and RNN
    converters and the weights bound, then ``tvm.compile`` for ``llvm``) raises on
    ``model``, or None if it builds."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from .rnn import onnx_converters

    dtypes = {vi.name: helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
              for vi in _declared_inputs(model)}
    try:
        with onnx_converters():
            mod = from_onnx(model, shape_dict={n: list(s) for n, s in shapes.items()},
                            dtype_dict=dtypes, keep_params_in_input=False)
        tvm.compile(mod, target=tvm.target.Target("llvm"))
    except Exception as exc:  # TVM raises many kinds
        return exc
    return None


def _value_kind(value_info) -> str:
    return value_info.type.WhichOneof("value")


def _declared_inputs(model: ModelProto) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


#: Operator inputs whose values set the shape of the operator's output (TVM's importer
#: reads them only as constants): a graph input in one of these places is compiled in as
#: a constant, with the value passed to :meth:`EdgeBackendRep.run`.
VALUE_INPUTS = {"Resize": (1, 2, 3), "Upsample": (1,), "ConstantOfShape": (0,),
                "Reshape": (1,), "Expand": (1,), "Tile": (1,)}


def _value_inputs(model: ModelProto) -> list[str]:
    """The declared inputs of ``model`` that some node reads as a :data:`VALUE_INPUTS`."""
    declared = {vi.name for vi in _declared_inputs(model)}
    found = {node.input[k] for node in model.graph.node
             for k in VALUE_INPUTS.get(node.op_type, ()) if k < len(node.input)}
    return [vi.name for vi in _declared_inputs(model) if vi.name in found & declared]


def _bind(model: ModelProto, values: Mapping[str, np.ndarray]) -> ModelProto:
    """``model`` with the inputs ``values`` names turned into initializers of those values."""
    from onnx import numpy_helper

    bound = ModelProto()
    bound.CopyFrom(model)
    keep = [vi for vi in bound.graph.input if vi.name not in values]
    del bound.graph.input[:]
    bound.graph.input.extend(keep)
    bound.graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in values.items())
    return bound


def _static_shape(value_info) -> Optional[list[int]]:
    dims = value_info.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return None if any(d is None for d in shape) else shape


class EdgeBackendRep(BackendRep):
    """A compiled model ready to run: the handle :meth:`EdgeBackend.prepare` returns.

    A model whose inputs all have static shapes is compiled by ``prepare``. One with a
    dynamic dimension is compiled on the first :meth:`run`, for the shapes of the arrays
    passed, and again for each new combination of shapes (the edge runtime serves static
    shapes only). So is one with an input that sets an output's shape (Resize's scales or
    sizes, Reshape's shape, ...: :data:`VALUE_INPUTS`): its value is compiled in as a
    constant, and each new value compiles the model again.

    The artifacts live in a temporary folder removed by :meth:`close`, or when the rep
    is garbage-collected.
    """

    def __init__(self, model: ModelProto, *,
                 input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                 num_threads: Optional[int] = None):
        self._model = model
        self._num_threads = num_threads
        self._input_names = [vi.name for vi in _declared_inputs(model)]
        self._value_names = _value_inputs(model)
        self._output_names = [vo.name for vo in model.graph.output]
        self._folder = Path(tempfile.mkdtemp(prefix="neo-edge-onnx-backend-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._folder), True)
        self._compiled: dict[tuple, Any] = {}
        declared = {vi.name: _static_shape(vi) for vi in _declared_inputs(model)}
        shapes = {n: list(s) for n, s in (input_shapes or {}).items()}
        for name, shape in declared.items():
            if name not in shapes and shape is not None:
                shapes[name] = shape
        if len(shapes) == len(declared) and not self._value_names:
            self._model_for(shapes, {})

    @property
    def input_names(self) -> list[str]:
        """The model's inputs that are not initializers, in the order :meth:`run` takes them."""
        return list(self._input_names)

    @property
    def output_names(self) -> list[str]:
        """The graph's outputs, in the order :meth:`run` returns them."""
        return list(self._output_names)

    def _model_for(self, shapes: Mapping[str, Sequence[int]],
                   values: Mapping[str, np.ndarray]):
        """The loaded model compiled for ``shapes`` (input name to shape) with the inputs
        ``values`` names bound to those values."""
        from ..runtime import EdgeModel
        from .compiler import compile_model

        names = [n for n in self._input_names if n not in values]
        key = (tuple(tuple(int(d) for d in shapes[n]) for n in names),
               tuple((n, v.dtype.str, v.shape, v.tobytes()) for n, v in values.items()))
        if key in self._compiled:
            return self._compiled[key]
        k = len(self._compiled)
        model = _bind(self._model, values) if values else self._model
        source, out = self._folder / f"model{k}.onnx", self._folder / f"artifact{k}"
        source.write_bytes(model.SerializeToString())
        try:
            compile_model(source, "host", out, framework="ONNX",
                          input_shapes={n: list(s) for n, s in zip(names, key[0])})
        except CompileError as exc:
            if _import_failure(exc):
                raise UnsupportedModelError(str(exc), "import") from exc
            self._raise_if_tvm_refuses(model, dict(zip(names, key[0])), exc)
            raise
        except Exception as exc:  # the build raises TVM's own error types
            self._raise_if_tvm_refuses(model, dict(zip(names, key[0])), exc)
            raise
        loaded = EdgeModel.load(out, num_threads=self._num_threads)
        self._compiled[key] = loaded
        return loaded

    def _raise_if_tvm_refuses(self, model: ModelProto, shapes: dict, exc: BaseException
                              ) -> None:
        """Raise :class:`UnsupportedModelError` if TVM's stock path cannot build ``model``
        either: then the failure ``exc`` is TVM's, not the compiler's."""
        stock = _stock_build_error(model, shapes)
        if stock is not None:
            raise UnsupportedModelError(
                f"TVM's stock build fails too: {_first_line(stock)}", "build") from exc

    def run(self, inputs: Any, **kwargs: Any) -> list[np.ndarray]:
        """Run the model once.

        Parameters
        ----------
        inputs:
            A list of arrays, one per input that is not an initializer, in graph order;
            a dict of input name to array; or one array for a single-input model.

        Returns
        -------
        list
            The outputs, in the graph's output order.

        Raises
        ------
        InputError
            Inputs missing, unknown, or of the wrong dtype (or shape, for a static model).
        """
        if isinstance(inputs, Mapping):
            named = dict(inputs)
        elif isinstance(inputs, (list, tuple)):
            if len(inputs) != len(self._input_names):
                raise InputError(f"the model takes {len(self._input_names)} inputs "
                                 f"({', '.join(self._input_names)}); got {len(inputs)}")
            named = dict(zip(self._input_names, inputs))
        else:
            if len(self._input_names) != 1:
                raise InputError(f"the model takes {len(self._input_names)} inputs "
                                 f"({', '.join(self._input_names)}); pass a list or a dict")
            named = {self._input_names[0]: inputs}
        missing = [n for n in self._input_names if n not in named]
        if missing:
            raise InputError(f"missing input {missing[0]!r}; the model's inputs are "
                             f"{', '.join(self._input_names)}")
        named = {n: np.asarray(v) for n, v in named.items()}
        values = {n: named.pop(n) for n in self._value_names}
        model = self._model_for({n: a.shape for n, a in named.items()}, values)
        outputs = model.predict({n: named[n] for n in self._input_names if n in named})
        return [outputs[name] for name in self._output_names]

    def close(self) -> None:
        """Release the loaded models and delete the compiled artifacts."""
        for model in self._compiled.values():
            model.close()
        self._compiled.clear()
        self._finalizer()


class EdgeBackend(Backend):
    """ONNX's backend API on the local compiler and the edge runtime, CPU only."""

    @classmethod
    def is_compatible(cls, model: ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        """Whether ``device`` is supported and the model's inputs and outputs are
        tensors (the edge runtime's are)."""
        if not cls.supports_device(device):
            return False
        values = list(model.graph.input) + list(model.graph.output)
        return all(_value_kind(v) == "tensor_type" for v in values)

    @classmethod
    def prepare(cls, model: ModelProto, device: str = "CPU", **kwargs: Any) -> EdgeBackendRep:
        """Check ``model`` and compile it for this machine.

        Parameters
        ----------
        model:
            The ONNX model.
        device:
            ``"CPU"``, the only device supported.
        input_shapes:
            Keyword: shapes for inputs with dynamic dimensions. Default: compile on the
            first run, for the shapes passed.
        num_threads:
            Keyword: size of TVM's thread pool. Default: the runtime's
            (``$TVM_NUM_THREADS``, else the physical cores).

        Raises
        ------
        UnsupportedModelError
            TVM's ONNX importer or build refused the model.
        CompileError
            Any other reason the model cannot be compiled or served.
        """
        super().prepare(model, device, **kwargs)
        if not cls.supports_device(device):
            raise CompileError(f"device must be CPU; got {device!r}")
        for vi in list(model.graph.input) + list(model.graph.output):
            kind = _value_kind(vi)
            if kind != "tensor_type":
                raise CompileError(f"{vi.name!r} is a {kind.replace('_type', '')}; the edge "
                                   "runtime's inputs and outputs are tensors")
            elem = vi.type.tensor_type.elem_type
            if elem == 0 or helper.tensor_dtype_to_np_dtype(elem).kind in "OSU":
                raise CompileError(f"{vi.name!r} is a tensor of "
                                   f"{helper.tensor_dtype_to_string(elem)}; the edge runtime "
                                   "serves numeric tensors")
        return EdgeBackendRep(model, input_shapes=kwargs.get("input_shapes"),
                              num_threads=kwargs.get("num_threads"))

    @classmethod
    def run_model(cls, model: ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> list[np.ndarray]:
        """Compile ``model``, run it once on ``inputs`` and delete the artifacts."""
        rep = cls.prepare(model, device, **kwargs)
        try:
            return rep.run(inputs)
        finally:
            rep.close()

    @classmethod
    def run_node(cls, node: NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Optional[Sequence[tuple[np.dtype, tuple[int, ...]]]] = None,
                 **kwargs: Any) -> list[np.ndarray]:
        """Run one operator: ``node`` is wrapped in a graph whose inputs are ``inputs``
        (a list in the node's input order, or a dict by name) and whose outputs are
        described by ``outputs_info`` (dtype and shape of each; required: the compiler
        needs every output's type)."""
        super().run_node(node, inputs, device=device, outputs_info=outputs_info, **kwargs)
        if outputs_info is None or len(outputs_info) != len(node.output):
            raise CompileError("run_node needs outputs_info: the dtype and shape of each of "
                               f"the node's {len(node.output)} outputs")
        names = [n for n in node.input if n]
        arrays = [np.asarray(inputs[n]) for n in names] if isinstance(inputs, Mapping) \
            else [np.asarray(a) for a in inputs]
        graph_inputs = [helper.make_tensor_value_info(
            n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in zip(names, arrays)]
        graph_outputs = [helper.make_tensor_value_info(
            n, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)
            for n, (dtype, shape) in zip(node.output, outputs_info)]
        graph = helper.make_graph([node], f"{node.op_type}_node", graph_inputs, graph_outputs)
        opset = kwargs.get("opset_version")
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]
                                  if opset else None)
        return cls.run_model(model, arrays, device,
                             **{k: v for k, v in kwargs.items() if k != "opset_version"})

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """Only ``"CPU"``: the backend compiles for the machine it runs on."""
        try:
            return Device(device).type == DeviceType.CPU
        except AttributeError:
            return False


is_compatible = EdgeBackend.is_compatible
prepare = EdgeBackend.prepare
run_model = EdgeBackend.run_model
run = EdgeBackend.run_model
run_node = EdgeBackend.run_node
supports_device = EdgeBackend.supports_device
