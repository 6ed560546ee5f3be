"""The one way to write a file or folder a later run trusts: build it beside, then rename. A crash leaves the
old complete file/folder, the new one, or none, never a partial one under the final name."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LEFTOVER_AGE_SECONDS = 3600  # temp/old siblings this old are from an interrupted write: the next one removes them


def atomic_write(path: str | os.PathLike, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write ``data`` (text as UTF-8 with ``\\n`` newlines) to ``path`` in one rename; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, mode)  # mkstemp makes 0600 files; give the usual rw-r--r--
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_json(path: str | os.PathLike, obj: Any, **dump_options: Any) -> Path:
    dump_options.setdefault("indent", 2)
    return atomic_write(path, json.dumps(obj, **dump_options) + "\n")


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``folder`` in one rename (an old one is
    renamed away, then deleted), on an exception it is deleted. Leftovers of interrupted writes go first."""
    folder = Path(folder)
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    for leftover in [*parent.glob(f".tmp-{folder.name}-*"), *parent.glob(f".old-{folder.name}-*")]:
        with contextlib.suppress(OSError):  # another process may be removing it too
            if time.time() - leftover.stat().st_mtime > LEFTOVER_AGE_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = parent / f".tmp-{folder.name}-{token}"
    tmp.mkdir()
    try:
        yield tmp
        old = parent / f".old-{folder.name}-{token}"
        if folder.exists():
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except BaseException:
            if old.exists():
                os.replace(old, folder)  # put the old one back
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
