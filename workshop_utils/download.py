"""Fetch the workshop's public datasets once, unpack them safely, and say what arrived.

``resolve_dataset("sample" | "car-damage" | "flowers" | "concrete-cracks" | a path)`` gives the folder
that ``data.load_dataset`` reads. Downloads go through ``keras.utils.get_file`` (cache, hash check) into
``<data dir>/downloads/``; unpacking is done here, refusing archive members that would land outside the
target folder, into a temporary folder that is renamed into place only once its content checks out.
"""
from __future__ import annotations

import gzip
import os
import posixpath
import shutil
import socket
import stat
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from workshop_utils import config
from workshop_utils.core.errors import DatasetError, DownloadError, UnsafeArchiveError
from workshop_utils.core.formats import IMAGE_EXTENSIONS
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.data import load_images_from_directory, load_index

tf = import_tensorflow()


DOWNLOAD_TIMEOUT = 15.0  # seconds without any byte before a download gives up


SAMPLE_ADVICE = (
    "Work offline with the bundled sample instead: `python -m workshop_utils run --dataset sample` "
    "(or set WORKSHOP_PROFILE=quick)."
)


@dataclass(frozen=True)
class RemoteDataset:
    """Where a public dataset lives and what its archive should contain."""

    name: str
    url: str
    archive: str  # "zip" or "tar" (any compression)
    sha256: str | None  # None: not published, so only the content check guards the file
    layout: str  # "index" (index.csv + image/) or "folders" (one folder per class)
    description: str
    licence: str
    class_folders: tuple[str, ...] = ()  # folders that mark the data folder inside the archive

    @property
    def url_env(self) -> str:
        """Environment variable that overrides the URL (a mirror, or a file:// copy)."""
        return "WORKSHOP_" + self.name.upper().replace("-", "_") + "_URL"

    def current_url(self) -> str:
        return os.environ.get(self.url_env) or self.url


DATASETS: dict[str, RemoteDataset] = {
    "car-damage": RemoteDataset(
        name="car-damage",
        url="https://storage.googleapis.com/bucket-8732/car_damage/preprocessed.zip",
        archive="zip",
        sha256=None,
        layout="index",
        description="Car-damage photos of the ML.NET workshop: index.csv (image,class,subset T/V) + image/, "
        "8 classes (bumper_dent … unknown).",
        licence="Licensed from a third party (Peltarion AB), not Microsoft; for learning use, do not redistribute.",
    ),
    "flowers": RemoteDataset(
        name="flowers",
        url="https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz",
        archive="tar",
        sha256=None,
        layout="folders",
        description="TensorFlow's flower photos: about 3,700 images in 5 class folders.",
        licence="CC-BY 2.0, photographers credited in the archive's LICENSE.txt.",
        class_folders=("daisy", "dandelion", "roses", "sunflowers", "tulips"),
    ),
    "concrete-cracks": RemoteDataset(
        name="concrete-cracks",
        url="https://digitalcommons.usu.edu/cgi/viewcontent.cgi?filename=2&article=1047&context=all_datasets"
        "&type=additional",
        archive="zip",
        sha256=None,
        layout="folders",
        description="SDNET2018 concrete images as in ML.NET's image-classification tutorial: only the bridge "
        "decks (folder D: CD cracked, UD uncracked) are used; the archive is about 500 MB.",
        licence="SDNET2018, Utah State University, CC BY 4.0.",
        class_folders=("CD", "UD"),
    ),
}


def _member_problem(name: str) -> str | None:
    """Why an archive member name is unsafe (absolute, drive letter, '..'), or None."""
    posix = name.replace("\\", "/")
    if posix.startswith("/"):
        return "absolute path"
    if len(posix) >= 2 and posix[1] == ":" and posix[0].isalpha():
        return "drive letter"
    if ".." in PurePosixPath(posix).parts:
        return "'..' component"
    return None


def _link_escapes(member: str, target: str, hard: bool) -> bool:
    """True when a link target leaves the archive root (symlinks are relative to their own folder)."""
    target = target.replace("\\", "/")
    if _member_problem(target) in ("absolute path", "drive letter"):
        return True
    base = "" if hard else posixpath.dirname(member.replace("\\", "/"))
    relative = posixpath.normpath(posixpath.join(base, target))
    return relative == ".." or relative.startswith("../")


def _refuse(archive: Path, member: str, why: str) -> None:
    raise UnsafeArchiveError(
        f"{archive}: refusing to unpack member {member!r} ({why}): it would be written outside the "
        "target folder. The archive may be malicious or broken; delete it and download it from the "
        "original source."
    )


def safe_extract(archive: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Unpack a zip or tar archive into ``destination``, refusing any member that would escape it."""
    from tqdm.auto import tqdm

    archive, destination = Path(archive), Path(destination)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                if why := _member_problem(info.filename):
                    _refuse(archive, info.filename, why)
                if stat.S_ISLNK(info.external_attr >> 16):  # zipfile writes links as small files; check anyway
                    if _link_escapes(info.filename, zf.read(info).decode("utf-8", "replace"), hard=False):
                        _refuse(archive, info.filename, "symlink pointing outside")
            zf.extractall(destination, members=tqdm(members, desc="Unpacking", unit="file", leave=False,
                                                    disable=len(members) < 500))
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                if why := _member_problem(member.name):
                    _refuse(archive, member.name, why)
                if (member.issym() or member.islnk()) and _link_escapes(member.name, member.linkname,
                                                                        hard=member.islnk()):
                    _refuse(archive, member.name, f"link to {member.linkname!r} pointing outside")
                if member.ischr() or member.isblk() or member.isfifo():
                    _refuse(archive, member.name, "device or pipe")
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(destination, members=tqdm(members, desc="Unpacking", unit="file", leave=False,
                                                    disable=len(members) < 500), **extra)
    else:
        raise DownloadError(
            f"{archive} is neither a zip nor a tar archive ({_what_it_looks_like(archive)}). "
            "Delete it and try again, or download the archive by hand."
        )


def _what_it_looks_like(path: Path) -> str:
    """A hint at what a non-archive file is, from its first bytes (an HTML page is the usual suspect)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return "unreadable"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")) or b"<html" in text:
        return f"an HTML page, {path.stat().st_size:,} bytes, starting {head[:40]!r}"
    if not head:
        return "an empty file"
    return f"an HTML error page downloaded instead? It starts {head[:16]!r}"


def _walk(folder: Path):
    """os.walk in sorted order, skipping hidden folders and macOS's __MACOSX."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        yield Path(root), dirs, files


def find_data_root(folder: str | os.PathLike, class_folders: tuple[str, ...] = ()) -> Path | None:
    """The folder holding index.csv, else the one holding all ``class_folders``, else the shallowest folder
    whose sub-folders contain images; None when there is nothing like a dataset under ``folder``."""
    folder = Path(folder)
    found: dict[str, list[Path]] = {"index": [], "classes": [], "images": []}
    for root, dirs, files in _walk(folder):
        if "index.csv" in files:
            found["index"].append(root)
        if class_folders and set(class_folders) <= set(dirs):
            found["classes"].append(root)
        if any(n.lower().endswith(IMAGE_EXTENSIONS) for n in files) and root != folder:
            found["images"].append(root.parent)
    for kind in ("index", "classes", "images"):
        if found[kind]:
            return min(found[kind], key=lambda p: (len(p.parts), str(p)))
    return None


def _summarise(name: str, folder: Path) -> str:
    """Load the dataset in ``folder`` (this checks it) and describe it in one line."""
    df = load_index(folder / "index.csv") if (folder / "index.csv").is_file() else load_images_from_directory(folder)
    subsets = df["subset"].value_counts()
    parts = f" ({', '.join(f'{s} {n:,}' for s, n in subsets.items())})" if (df["subset"] != "").any() else ""
    return f"{name}: {len(df):,} images in {df['label'].nunique()} classes{parts} at {folder}"


def _data_folder(source: RemoteDataset, folder: Path) -> Path:
    root = find_data_root(folder, source.class_folders)
    if root is None or (source.layout == "index" and not (root / "index.csv").is_file()):
        want = "index.csv" if source.layout == "index" else f"class folders {', '.join(source.class_folders)}"
        raise DownloadError(
            f"{folder} does not contain the {source.name} dataset (looked for {want}). Delete that folder "
            f"and run again to download it afresh, or point at the data folder yourself."
        )
    return root


def _download(source: RemoteDataset, data_dir: Path) -> Path:
    """The archive, from the cache or downloaded with keras.utils.get_file; fails fast when offline."""
    config.import_tensorflow()
    import keras

    url = source.current_url()
    fname = f"{source.name}.{'zip' if source.archive == 'zip' else 'tgz'}"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        return Path(keras.utils.get_file(
            fname=fname, origin=url, cache_dir=str(data_dir), cache_subdir="downloads",
            file_hash=None if url != source.url else source.sha256, hash_algorithm="sha256",
        ))
    except Exception as error:  # noqa: BLE001  (Keras wraps HTTP/URL errors in a bare Exception)
        raise DownloadError(
            f"Could not download the {source.name} dataset from {url}: {error}. Check your internet "
            f"connection, or set {source.url_env} to a mirror or a file:// URL of the archive. "
            + SAMPLE_ADVICE
        ) from error
    finally:
        socket.setdefaulttimeout(previous)


def fetch_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Download and unpack a known dataset into ``<data_dir>/<name>`` (once); return its data folder."""
    source = _lookup(name)
    if source is None:
        raise DatasetError(f"Unknown dataset {name!r}; the downloadable ones are {', '.join(DATASETS)}.")
    data_dir = Path(data_dir).expanduser().absolute() if data_dir is not None else config.data_dir()
    target = data_dir / source.name
    if not target.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        archive = _download(source, data_dir)
        partial = Path(tempfile.mkdtemp(prefix=f".{source.name}.partial-", dir=data_dir))
        try:
            try:
                safe_extract(archive, partial)
            except DownloadError as error:  # kept, every later run would find it again: delete it
                looks = _what_it_looks_like(archive)
                archive.unlink(missing_ok=True)
                raise DownloadError(
                    f"{archive}, downloaded from {source.current_url()}, is neither a zip nor a tar archive "
                    f"({looks}); it has been deleted. Check the URL (or set "
                    f"{source.url_env} to a mirror or a file:// copy) and run again. " + SAMPLE_ADVICE
                ) from error
            except (zipfile.BadZipFile, tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as error:
                archive.unlink(missing_ok=True)
                raise DownloadError(
                    f"{archive} is damaged ({type(error).__name__}: {error}); it has been deleted, run again "
                    "to download it afresh."
                ) from error
            try:  # check the content before it becomes visible under its final name
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # shown once, below, with the final paths
                    _summarise(source.name, _data_folder(source, partial))
            except DatasetError as error:
                raise DownloadError(
                    f"The {source.name} archive {archive} does not hold a usable dataset: {error}"
                ) from error
            try:
                os.replace(partial, target)
            except OSError:
                if not target.exists():  # else another process unpacked it meanwhile: use theirs
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    folder = _data_folder(source, target)
    print(_summarise(source.name, folder))
    return folder


def _lookup(name: str) -> RemoteDataset | None:
    return DATASETS.get(str(name).strip().lower().replace("_", "-"))


def resolve_dataset(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """``"sample"`` -> the bundled sample; a dataset name -> fetch_dataset; an existing folder/CSV -> itself."""
    text = str(name_or_path).strip()
    if text.lower() == "sample":
        folder = config.sample_dir()
        if not (folder / "index.csv").is_file():
            raise DatasetError(f"The bundled sample is missing from {folder}; regenerate it with "
                               "`python -m workshop_utils sample`.")
        return folder
    if _lookup(text) is not None:
        return fetch_dataset(text, data_dir)
    path = Path(text).expanduser()
    if path.exists():
        return path.absolute()
    raise DatasetError(
        f"Unknown dataset {text!r}: not one of sample, {', '.join(DATASETS)}, and no file or folder "
        f"{path.absolute()} exists. Give one of those names or the path of an index.csv / image folder."
    )
