"""The device runtime: load a compiled artifact and run inference.

Only the TVM *runtime* library (``libtvm_runtime.so``, ~3 MB) and TVM-FFI's
``libtvm_ffi.so`` are loaded, called through their C ABI (:mod:`._ffi`): the 259 MB
compiler library never is, and neither ``tvm`` nor the ``tvm_ffi`` Python package is
imported on a CPU device. This is what a Greengrass core device runs.
"""

from __future__ import annotations

import collections
import ctypes
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from . import _ffi, artifact
from .errors import ArtifactError, InputError, NeoEdgeError
from .targets import host_arch

_ALIGN = 64  # TVM's kernels assume 64-byte aligned buffers
_DEVICE_TYPES = {"cpu": 1, "cuda": 2}
_POOLED_ALLOCATOR = 2
_lib_lock = threading.Lock()
_loaded_libs: dict[str, ctypes.CDLL] = {}

Inputs = Union[np.ndarray, Mapping[str, Any]]


def runtime_library_dirs() -> list[Path]:
    """Where ``libtvm_runtime.so`` is looked for, in order.

    1. ``$NEO_EDGE_TVM_RUNTIME_DIR``;
    2. ``neo_edge_runtime/_lib/`` (the device bundle puts it there);
    3. the installed ``apache-tvm`` wheel's ``tvm/lib/`` (found without importing tvm).
    """
    dirs = []
    if os.environ.get("NEO_EDGE_TVM_RUNTIME_DIR"):
        dirs.append(Path(os.environ["NEO_EDGE_TVM_RUNTIME_DIR"]))
    dirs.append(Path(__file__).resolve().parent / "_lib")
    spec = importlib.util.find_spec("tvm")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "lib")
    return dirs


def _import_tvm_ffi():
    """``import tvm_ffi``, without the PyTorch import it attempts first (GPU artifacts
    only: they run through TVM's Python runtime).

    tvm_ffi imports torch eagerly when it is installed (a build machine with the torch
    extra): seconds and hundreds of MB that a runtime never uses. torch is hidden for
    the length of the import only, so the caller's own ``import torch`` still works.
    """
    if "tvm_ffi" in sys.modules:
        return sys.modules["tvm_ffi"]
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        import tvm_ffi
    finally:
        if hide and sys.modules.get("torch", False) is None:
            del sys.modules["torch"]
    return tvm_ffi


def _ffi_library_dirs() -> list[Path]:
    """Where ``libtvm_ffi.so`` is looked for: beside libtvm_runtime.so, then in the
    installed ``tvm_ffi`` package's ``lib/`` (found without importing it)."""
    dirs = runtime_library_dirs()
    spec = importlib.util.find_spec("tvm_ffi")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "lib")
    return dirs


def _load_runtime_library(device: str) -> None:
    """Load libtvm_ffi.so and libtvm_runtime.so (and the CUDA runtime module for GPU
    artifacts) once."""
    _default_pool_size()
    wanted = [("libtvm_ffi.so", _ffi_library_dirs()), ("libtvm_runtime.so", runtime_library_dirs())]
    if device == "cuda":
        wanted.append(("libtvm_runtime_cuda.so", runtime_library_dirs()))
    with _lib_lock:
        for name, dirs in wanted:
            if name in _loaded_libs:
                continue
            found = next((d / name for d in dirs if (d / name).is_file()), None)
            if found is None:
                searched = ", ".join(str(d) for d in dirs)
                raise ArtifactError(f"cannot find {name} (searched {searched}); install the "
                                    "neo-edge device bundle or set NEO_EDGE_TVM_RUNTIME_DIR")
            _loaded_libs[name] = ctypes.CDLL(str(found), mode=ctypes.RTLD_GLOBAL)
            if name == "libtvm_ffi.so":
                _ffi.bind(_loaded_libs[name])


def physical_cores() -> int:
    """Physical cores this process may run on."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


#: TVM sizes its thread pool once, when it starts, from $TVM_NUM_THREADS, else from half
#: the logical CPUs on x86 (assuming 2-way SMT: one thread on a 2-core machine without
#: it); later settings can only lower it. The runtime sets the variable to the physical
#: cores before the pool starts, unless the caller set it.
POOL_SIZE_VARIABLE = "TVM_NUM_THREADS"
_pool_started = False


def _default_pool_size() -> None:
    os.environ.setdefault(POOL_SIZE_VARIABLE, str(physical_cores()))


def set_num_threads(n: int) -> None:
    """Set the TVM thread pool size for this process (TVM's pool is process-wide).

    More threads than the pool started with (``$TVM_NUM_THREADS``, default: the
    physical cores) can only be had before the first model runs.
    """
    global _pool_started
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"num_threads must be a positive integer; got {n!r}")
    _load_runtime_library("cpu")
    pool = int(os.environ.get(POOL_SIZE_VARIABLE) or 0)
    if n > pool:
        if _pool_started:
            raise ValueError(
                f"num_threads={n} is more than the {pool} threads TVM's pool started with "
                f"in this process; start the process with {POOL_SIZE_VARIABLE}={n}")
        os.environ[POOL_SIZE_VARIABLE] = str(n)
    # affinity mode 1 (kBig): spread over the big cores, as TVM does by default
    _ffi.get_global("runtime.config_threadpool")(1, n)
    _pool_started = True


def _aligned_empty(shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    offset = (-raw.ctypes.data) % _ALIGN
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


class EdgeModel:
    """A compiled model loaded for inference.

    Use :meth:`load`; the constructor is internal. Calls to :meth:`predict` are
    thread-safe (they are serialized: TVM's VM is not re-entrant, and the thread
    pool already uses every core given to it).
    """

    def __init__(self, path: Path, manifest: dict, main, params: list, vm, *,
                 host_arrays: bool = False):
        """``main(*inputs, *params)`` runs the model: on TVM tensors, returning a TVM
        tensor or array of them; with ``host_arrays``, on numpy arrays, returning a
        sequence of numpy arrays."""
        self.path = path
        self.manifest = manifest
        self._vm = vm  # owns the memory main's results live in: outlives every call
        self._lock = threading.Lock()
        self._latencies: collections.deque = collections.deque(maxlen=10_000)
        self._buffers = {i["name"]: _aligned_empty(i["shape"], i["dtype"]) for i in self.inputs}
        self._in_specs = {i["name"]: (np.dtype(i["dtype"]), tuple(i["shape"])) for i in self.inputs}
        self._out_specs = [(o["name"], tuple(o["shape"]), np.dtype(o["dtype"]))
                           for o in self.outputs]
        self._outputs_checked = False
        self._host_arrays = host_arrays
        if host_arrays:
            self._tensors = [self._buffers[i["name"]] for i in self.inputs]
            self._run = lambda: main(*self._tensors)
        else:
            wrapped = [_ffi.tensor_from_array(self._buffers[i["name"]]) for i in self.inputs]
            self._tensors = [t for t, _ in wrapped]
            self._keep_alive = [k for _, k in wrapped]
            # The same input tensors (their buffers refilled) and weights every call; the
            # bound call holds main and the weights.
            self._run = main.bind(*self._tensors, *params)

    # -- loading ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, *, num_threads: Optional[int] = None) -> "EdgeModel":
        """Verify and load the artifact folder at ``path``.

        The manifest and the sha256 of every file are checked before anything is
        loaded: a tampered or truncated artifact raises :class:`ArtifactError`.

        Parameters
        ----------
        path:
            An artifact folder written by ``compile_model``.
        num_threads:
            Size of TVM's thread pool (process-wide). Default: ``$TVM_NUM_THREADS``,
            else the physical cores this process may use.
        """
        path = Path(path)
        manifest = artifact.verify(path)
        target = manifest["target"]
        device = target.get("device", "cpu")
        if target.get("arch") != host_arch():
            raise ArtifactError(
                f"artifact {str(path)!r} was compiled for {target.get('name')} "
                f"({target.get('arch')}) and cannot run on this {host_arch()} machine")
        if device not in _DEVICE_TYPES:
            raise ArtifactError(f"artifact device {device!r} is not supported; "
                                f"supported devices are {', '.join(_DEVICE_TYPES)}")
        if device == "cuda":
            return _load_cuda(cls, path, manifest, num_threads)
        _load_runtime_library(device)
        if num_threads is not None:
            set_num_threads(num_threads)

        try:
            lib = _ffi.get_global("ffi.ModuleLoadFromFile")(
                str((path / manifest["library"]).resolve()))
            vm = _ffi.module_function(lib, "vm_load_executable")()
            _ffi.module_function(vm, "vm_initialization")(_DEVICE_TYPES["cpu"], 0,
                                                          _POOLED_ALLOCATOR)
            params: list = []
            if manifest.get("params"):
                # Already in the layout the kernels read: the compiler prepacks them.
                loaded = _ffi.get_global("runtime.LoadParamsFromFile")(
                    str(path / manifest["params"]))
                get = _ffi.get_global("ffi.MapGetItem")
                params = [get(loaded, f"p{k}")
                          for k in range(_ffi.get_global("ffi.MapSize")(loaded))]
            return cls(path, manifest, _ffi.module_function(vm, "main"), params, vm)
        except NeoEdgeError:
            raise
        except Exception as exc:  # errors raised by the TVM runtime library, through the FFI
            last = (str(exc).strip().splitlines() or [""])[-1]
            raise ArtifactError(f"artifact {str(path)!r} does not load in the TVM runtime: "
                                f"{type(exc).__name__}: {last}") from exc

    # -- metadata --------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def version(self) -> str:
        return self.manifest["model"]["version"]

    @property
    def inputs(self) -> list[dict]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.manifest["outputs"]

    @property
    def metadata(self) -> dict:
        return self.manifest.get("metadata", {})

    def __repr__(self) -> str:
        return (f"EdgeModel({self.name!r} {self.version}, target={self.manifest['target']['name']},"
                f" inputs={[(i['name'], i['shape'], i['dtype']) for i in self.inputs]})")

    # -- inference -------------------------------------------------------------------

    def _check(self, inputs: Inputs) -> dict[str, np.ndarray]:
        if type(inputs) is np.ndarray and len(self._in_specs) == 1:  # the common case, fast
            name, (dtype, shape) = next(iter(self._in_specs.items()))
            if inputs.dtype == dtype and inputs.shape == shape:
                return {name: inputs}
        specs = {i["name"]: i for i in self.inputs}
        if not isinstance(inputs, Mapping):
            if len(specs) != 1:
                raise InputError(f"model {self.name!r} has {len(specs)} inputs "
                                 f"({', '.join(specs)}); pass a dict of name to array")
            inputs = {next(iter(specs)): inputs}
        unknown = sorted(set(inputs) - set(specs), key=repr)
        if unknown:
            raise InputError(f"unknown input {unknown[0]!r} for model {self.name!r}; "
                             f"its inputs are {', '.join(specs)}")
        missing = [n for n in specs if n not in inputs]
        if missing:
            raise InputError(f"missing input {missing[0]!r} for model {self.name!r}")
        checked = {}
        for name, spec in specs.items():
            value = inputs[name]
            arr = value
            if isinstance(value, (list, tuple)):
                try:
                    arr = np.asarray(value, dtype=spec["dtype"])
                except (TypeError, ValueError, OverflowError) as exc:
                    raise InputError(f"input {name!r} cannot be read as a {spec['dtype']} "
                                     f"array: {exc}") from None
            if not isinstance(arr, np.ndarray):
                raise InputError(f"input {name!r} must be a numpy array; got "
                                 f"{type(value).__name__}")
            if arr.dtype != np.dtype(spec["dtype"]):
                raise InputError(f"input {name!r} must be {spec['dtype']}; got {arr.dtype} "
                                 f"(convert with .astype({spec['dtype']!r}))")
            if list(arr.shape) != list(spec["shape"]):
                raise InputError(f"input {name!r} must have shape {list(spec['shape'])}; "
                                 f"got {list(arr.shape)}")
            checked[name] = arr
        return checked

    def predict(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """Run the model once.

        Parameters
        ----------
        inputs:
            A dict of input name to array, or one array for a single-input model.
            Names, shapes and dtypes must match the manifest exactly.

        Returns
        -------
        dict
            Output name to a numpy array the caller owns.
        """
        global _pool_started
        checked = self._check(inputs)
        with self._lock:
            _pool_started = True  # the first parallel kernel starts TVM's thread pool
            start = time.perf_counter()
            for name, arr in checked.items():
                np.copyto(self._buffers[name], arr)
            result = self._run()
            if self._host_arrays:
                fields = list(result)
            else:  # copied out before the VM's pooled allocator reuses the memory
                items = [result] if result.type_index == _ffi.TENSOR else _ffi.array_items(result)
                if not self._outputs_checked:
                    self._check_outputs(items)
                fields = [np.empty(shape, dtype) for _, shape, dtype in self._out_specs]
                for t, out in zip(items, fields):
                    _ffi.copy_into(t, out)
            outputs = {spec[0]: f for spec, f in zip(self._out_specs, fields)}
            del result
            self._latencies.append(time.perf_counter() - start)
        return outputs

    def _check_outputs(self, items: list) -> None:
        """The first call's outputs against the manifest: later calls copy by its sizes."""
        got = [_ffi.tensor_spec(t) for t in items]
        expected = [(shape, dtype) for _, shape, dtype in self._out_specs]
        if got != expected:
            raise ArtifactError(
                f"model {self.name!r} returned {[(list(s), str(d)) for s, d in got]}, "
                f"its manifest says {[(list(s), str(d)) for s, d in expected]}")
        self._outputs_checked = True

    def warmup(self, n: int = 3) -> None:
        """Run ``n`` inferences on zeros so the first real request is not the slow one."""
        zeros = {i["name"]: np.zeros(i["shape"], dtype=i["dtype"]) for i in self.inputs}
        for _ in range(n):
            self.predict(zeros)

    def latency_stats(self) -> dict:
        """Per-call latency in milliseconds over the recorded calls (warm-up included)."""
        with self._lock:
            lat = np.asarray(self._latencies, dtype=np.float64) * 1000.0
        if lat.size == 0:
            return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None}
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        return {"count": int(lat.size), "p50_ms": float(p50), "p90_ms": float(p90),
                "p99_ms": float(p99), "mean_ms": float(lat.mean())}

    def reset_latency(self) -> None:
        with self._lock:
            self._latencies.clear()

    def close(self) -> None:
        """Release the VM and the library (outputs already returned stay valid)."""
        with self._lock:
            self._run = None
            self._tensors = []
            self._keep_alive = []
            self._vm = None


def _load_cuda(cls, path: Path, manifest: dict, num_threads: Optional[int]):  # pragma: no cover
    """GPU artifacts go through TVM's Python runtime (still the runtime library only):
    inputs are copied to the GPU and outputs back for each call."""
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    _import_tvm_ffi()
    import tvm

    dev = tvm.cuda()
    if not dev.exist:
        raise ArtifactError(f"artifact {str(path)!r} targets an NVIDIA GPU "
                            f"({manifest['target']['name']}) and this machine has none")
    if num_threads is not None:
        set_num_threads(num_threads)
    vm = tvm.runtime.vm.VirtualMachine(
        tvm.runtime.load_module(str(path / manifest["library"])), dev)
    main = vm["main"]

    def run(*host_arrays):
        out = main(*[tvm.runtime.tensor(a, device=dev) for a in host_arrays])
        fields = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
        return tuple(f.numpy() for f in fields)

    return cls(path, manifest, run, [], vm, host_arrays=True)
