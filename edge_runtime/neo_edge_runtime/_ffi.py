"""The few calls the CPU runtime makes into TVM, through TVM-FFI's stable C ABI.

The ``tvm_ffi`` Python package would do the same, but importing it costs a device about
80 ms at every start (it imports ``importlib.metadata``, dataclasses, its C++ extension
builder, ml_dtypes...) for six functions: look up a global function, call a function,
load a module, wrap a buffer as a tensor, read a tensor, release an object. The layouts
below are those of ``tvm/ffi/c_api.h`` (TVM-FFI's ABI, stable across its releases).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Callable

import numpy as np

# TVMFFITypeIndex values used here
_NONE, _INT, _BOOL, _FLOAT, _OPAQUE_PTR, _DATA_TYPE, _DEVICE = 0, 1, 2, 3, 4, 5, 6
_RAW_STR, _SMALL_STR = 8, 11
_OBJECT_BEGIN, _STR, _FUNCTION, TENSOR, _ARRAY = 64, 65, 68, 70, 71
_OBJECT_HEADER = 24  # sizeof(TVMFFIObject): ref counts, type index, deleter

_DL_CODES = {"i": 0, "u": 1, "f": 2, "b": 6}  # numpy kind -> DLDataTypeCode
_NP_KINDS = {0: "int", 1: "uint", 2: "float"}


class _Any(ctypes.Structure):
    _fields_ = [("type_index", ctypes.c_int32), ("small_len", ctypes.c_uint32),
                ("value", ctypes.c_uint64)]


class _ByteArray(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class Device(_DLDevice):
    """A DLDevice passed by value (``Device(2, 0)``: the first CUDA GPU)."""


class DataType(_DLDataType):
    """A DLDataType passed by value; :meth:`of` makes one from a numpy dtype."""

    @classmethod
    def of(cls, dtype) -> "DataType":
        dtype = np.dtype(dtype)
        return cls(_DL_CODES[dtype.kind], dtype.itemsize * 8, 1)


class OpaquePtr(int):
    """A raw address passed as ``void*``."""


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", _Deleter)]


@_Deleter
def _keep(_):  # the caller owns the memory of tensors it wraps
    pass


_lib: ctypes.CDLL | None = None


def bind(lib: ctypes.CDLL) -> None:
    """Use ``lib`` (libtvm_ffi.so, loaded RTLD_GLOBAL) for every call."""
    global _lib
    lib.TVMFFIFunctionGetGlobal.argtypes = [ctypes.POINTER(_ByteArray),
                                            ctypes.POINTER(ctypes.c_void_p)]
    lib.TVMFFIFunctionCall.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Any), ctypes.c_int32,
                                       ctypes.POINTER(_Any)]
    lib.TVMFFIObjectDecRef.argtypes = [ctypes.c_void_p]
    lib.TVMFFIErrorMoveFromRaised.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.TVMFFIErrorMoveFromRaised.restype = None
    lib.TVMFFITensorFromDLPack.argtypes = [ctypes.POINTER(_DLManagedTensor), ctypes.c_int32,
                                           ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p)]
    _lib = lib


def _raise_last_error(what: str):
    handle = ctypes.c_void_p()
    _lib.TVMFFIErrorMoveFromRaised(ctypes.byref(handle))
    if not handle.value:
        raise RuntimeError(f"{what} failed")
    cell = _ByteArray * 2  # kind, message: the first fields after the object header
    kind, message = cell.from_address(handle.value + _OBJECT_HEADER)
    text = [ctypes.string_at(b.data, b.size).decode(errors="replace") for b in (kind, message)]
    _lib.TVMFFIObjectDecRef(handle)
    raise RuntimeError(f"{what}: {text[0]}: {text[1]}")


class Object:
    """One reference to a TVM-FFI object, released with this wrapper."""

    __slots__ = ("handle", "type_index", "__weakref__")

    def __init__(self, handle: int, type_index: int):
        self.handle, self.type_index = handle, type_index

    def __del__(self):
        if _lib is not None and self.handle:
            _lib.TVMFFIObjectDecRef(self.handle)
            self.handle = None


class Function(Object):
    """A TVM-FFI function: call it with ints, floats, strs, bools and objects."""

    __slots__ = ("name",)

    def __init__(self, handle: int, type_index: int, name: str = "function"):
        super().__init__(handle, type_index)
        self.name = name

    def __call__(self, *args) -> Any:
        return self.bind(*args)()

    def bind(self, *args) -> "Callable[[], Any]":
        """This function with ``args`` packed once: for calls repeated with the same
        arguments (a model's input tensors and weights), each call then costs one
        C call. The returned callable keeps ``args`` alive."""
        packed, keep = self._pack(args)
        call, handle, n, name = _lib.TVMFFIFunctionCall, self.handle, len(args), self.name

        def bound():
            result = _Any()
            if call(handle, packed, n, ctypes.byref(result)):
                _raise_last_error(name)
            return _from_any(result)

        bound.keep = (self, keep)
        return bound

    def bind_raw(self, *args) -> "Callable[[], tuple[int, int]]":
        """As :meth:`bind`, for a model's hot loop: the callable returns the result's
        (type index, value) with no wrapper made, and the caller owns the reference an
        object result carries (:func:`release` it, or :func:`adopt` it). Each call
        reuses one result cell: not for two threads at once."""
        packed, keep = self._pack(args)
        # Arguments converted once, for a function pointer with no argtypes to check.
        call, handle = _lib["TVMFFIFunctionCall"], ctypes.c_void_p(self.handle)
        n, result, name = ctypes.c_int32(len(args)), _Any(), self.name
        ref = ctypes.byref(result)

        def bound():
            result.type_index = _NONE  # the callee requires an empty cell
            if call(handle, packed, n, ref):
                _raise_last_error(name)
            return result.type_index, result.value

        bound.keep = (self, keep, result)
        return bound

    def _pack(self, args):
        packed = (_Any * max(1, len(args)))()
        keep = list(args)
        for slot, arg in zip(packed, args):
            if isinstance(arg, Object):
                slot.type_index, slot.value = arg.type_index, arg.handle
            elif arg is None:
                slot.type_index, slot.value = _NONE, 0
            elif isinstance(arg, OpaquePtr):
                slot.type_index, slot.value = _OPAQUE_PTR, int(arg)
            elif isinstance(arg, (Device, DataType)):  # 8 or 4 bytes, in the value field
                slot.type_index = _DEVICE if isinstance(arg, Device) else _DATA_TYPE
                ctypes.memmove(ctypes.addressof(slot) + _Any.value.offset,
                               ctypes.addressof(arg), ctypes.sizeof(arg))
            elif isinstance(arg, bool):
                slot.type_index, slot.value = _BOOL, int(arg)
            elif isinstance(arg, int):
                slot.type_index = _INT
                slot.value = arg & 0xFFFFFFFFFFFFFFFF
            elif isinstance(arg, float):
                slot.type_index = _FLOAT
                slot.value = ctypes.c_uint64.from_buffer(ctypes.c_double(arg)).value
            elif isinstance(arg, str):
                raw = ctypes.c_char_p(arg.encode())
                keep.append(raw)
                slot.type_index = _RAW_STR
                slot.value = ctypes.cast(raw, ctypes.c_void_p).value
            else:
                raise TypeError(f"cannot pass {type(arg).__name__} to {self.name}")
        return packed, keep


def release(handle: int) -> None:
    """Drop the reference to the object at ``handle`` (from :meth:`Function.bind_raw`)."""
    _lib.TVMFFIObjectDecRef(handle)


def adopt(type_index: int, value: int) -> Any:
    """The Python value of a raw result from :meth:`Function.bind_raw` (taking over its
    reference)."""
    cell = _Any()
    cell.type_index, cell.value = type_index, value
    return _from_any(cell)


def _from_any(value: _Any) -> Any:
    t = value.type_index
    if t == _NONE:
        return None
    if t == _INT:
        return ctypes.c_int64(value.value).value
    if t == _BOOL:
        return bool(value.value)
    if t == _FLOAT:
        return ctypes.c_double.from_buffer(ctypes.c_uint64(value.value)).value
    if t == _SMALL_STR:
        return bytes(ctypes.c_uint64(value.value))[:value.small_len].decode()
    if t >= _OBJECT_BEGIN:
        if t == _STR:
            text = _ByteArray.from_address(value.value + _OBJECT_HEADER)
            s = ctypes.string_at(text.data, text.size).decode()
            _lib.TVMFFIObjectDecRef(value.value)
            return s
        return (Function if t == _FUNCTION else Object)(value.value, t)
    raise TypeError(f"unexpected TVM-FFI value of type index {t}")


@functools.lru_cache(maxsize=None)
def get_global(name: str) -> Function:
    """The global function ``name`` (looked up once: global functions live as long as
    the process)."""
    encoded = name.encode()
    array = _ByteArray(ctypes.cast(ctypes.c_char_p(encoded), ctypes.c_void_p), len(encoded))
    handle = ctypes.c_void_p()
    if _lib.TVMFFIFunctionGetGlobal(ctypes.byref(array), ctypes.byref(handle)):
        _raise_last_error(f"looking up {name}")
    if not handle.value:
        raise RuntimeError(f"TVM has no global function {name}")
    return Function(handle.value, _FUNCTION, name)


def module_function(module: Object, name: str) -> Function:
    f = get_global("ffi.ModuleGetFunction")(module, name, True)
    if not isinstance(f, Function):
        raise RuntimeError(f"the module has no function {name}")
    f.name = name
    return f


def tensor_from_array(array: np.ndarray) -> tuple[Object, Any]:
    """A TVM tensor viewing ``array`` (C-contiguous, aligned; must outlive the tensor).

    Returns (tensor, what keeps its description alive: hold on to it as long).
    """
    shape = (ctypes.c_int64 * array.ndim)(*array.shape)
    dtype = _DLDataType(_DL_CODES[array.dtype.kind], array.dtype.itemsize * 8, 1)
    managed = _DLManagedTensor(
        _DLTensor(array.ctypes.data, _DLDevice(1, 0), array.ndim, dtype, shape, None, 0),
        None, _keep)
    handle = ctypes.c_void_p()
    if _lib.TVMFFITensorFromDLPack(ctypes.byref(managed), 64, 1, ctypes.byref(handle)):
        _raise_last_error("wrapping an input buffer")
    return Object(handle.value, TENSOR), (managed, shape, array)


def tensor_spec(tensor: Object) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a TVM tensor."""
    dl = _DLTensor.from_address(tensor.handle + _OBJECT_HEADER)
    code, bits = dl.dtype.code, dl.dtype.bits
    return (tuple(dl.shape[k] for k in range(dl.ndim)),
            np.dtype(np.bool_ if code == 6 else f"{_NP_KINDS[code]}{bits}"))


_DATA, _BYTE_OFFSET = _DLTensor.data.offset, _DLTensor.byte_offset.offset


def data_address(tensor: "Object | int") -> int:
    """Address of the first element of a (CPU) TVM tensor, or of the tensor at a raw
    handle: two reads, no struct built (a model's outputs are read this way on every
    call)."""
    dl = (tensor if type(tensor) is int else tensor.handle) + _OBJECT_HEADER
    return (_void_p_at(dl + _DATA).value or 0) + _uint64_at(dl + _BYTE_OFFSET).value


_void_p_at, _uint64_at = ctypes.c_void_p.from_address, ctypes.c_uint64.from_address


def host_view(address: int, nbytes: int):
    """A ctypes buffer over ``nbytes`` of host memory at ``address``, for
    ``numpy.frombuffer``: a view, valid while the memory is."""
    return (ctypes.c_char * nbytes).from_address(address)


def empty(shape, dtype, device: Device) -> Object:
    """A new compact tensor of ``shape`` and ``dtype`` on ``device`` (its memory owned by
    TVM: a GPU's for a CUDA device)."""
    dims = get_global("ffi.Shape")(*[int(d) for d in shape])
    return get_global("runtime.TVMTensorAllocWithScope")(dims, DataType.of(dtype), device, None)


def copy_from_host(tensor: Object, array: np.ndarray) -> None:
    """Copy the C-contiguous ``array`` into ``tensor`` (on any device) as raw bytes."""
    get_global("runtime.TVMTensorCopyFromBytes")(tensor, OpaquePtr(array.ctypes.data),
                                                 array.nbytes)


def copy_to_host(tensor: Object, out: np.ndarray) -> None:
    """Copy ``tensor`` (on any device) into the C-contiguous ``out`` of its byte size."""
    get_global("runtime.TVMTensorCopyToBytes")(tensor, OpaquePtr(out.ctypes.data), out.nbytes)


def copy_to_device(tensor: Object, device: Device) -> Object:
    """A copy of the compact CPU ``tensor`` on ``device``."""
    shape, dtype = tensor_spec(tensor)
    out = empty(shape, dtype, device)
    get_global("runtime.TVMTensorCopyFromTo")(tensor, out)
    return out


def array_items(array: Object) -> list:
    size = get_global("ffi.ArraySize")(array)
    item = get_global("ffi.ArrayGetItem")
    return [item(array, k) for k in range(size)]
