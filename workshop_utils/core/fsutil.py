"""The one way to write a file or folder a later run trusts: build it beside, then rename.

A crash leaves the old complete file/folder, the new one, or none, never a partial one under the final name.
"""
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
    """Write ``obj`` as indented JSON (plus a final newline) with :func:`atomic_write`."""
    dump_options.setdefault("indent", 2)
    return atomic_write(path, json.dumps(obj, **dump_options) + "\n")


def remove_leftovers(parent: Path, name: str, max_age: float = LEFTOVER_AGE_SECONDS) -> None:
    """Delete the temp/old siblings of ``name`` that interrupted writes left behind (older than ``max_age``)."""
    now = time.time()
    for pattern in (f".tmp-{name}-*", f".old-{name}-*"):
        for leftover in parent.glob(pattern):
            with contextlib.suppress(OSError):  # another process may be removing it too
                if now - leftover.stat().st_mtime > max_age:
                    shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``folder`` in one rename (an old
    ``folder`` is renamed away, then deleted). On an exception the temporary folder is deleted."""
    folder = Path(folder)
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(parent, folder.name)
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
