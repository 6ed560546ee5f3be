"""Fetch the workshop's public datasets once (``keras.utils.get_file``), unpack them safely, say what arrived; the
archive is unpacked beside its target and renamed into place only once its content checks out."""
from __future__ import annotations

import gzip
import os
import socket
import tarfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from workshop_utils import config
from workshop_utils.core.errors import DatasetError, DownloadError, UnsafeArchiveError
from workshop_utils.core.formats import IMAGE_EXTENSIONS
from workshop_utils.core.fsutil import atomic_folder
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.data import load_dataset

import_tensorflow()  # quiet TensorFlow's start-up before Keras loads it
import keras  # noqa: E402

DOWNLOAD_TIMEOUT = 15.0  # seconds without any byte before a download gives up
SAMPLE_ADVICE = ("Work offline with the bundled sample instead: `python -m workshop_utils run --dataset sample` "
                 "(or set WORKSHOP_PROFILE=quick).")


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
    def url_env(self) -> str:  # overrides the URL (a mirror, or a file:// copy)
        return "WORKSHOP_" + self.name.upper().replace("-", "_") + "_URL"

    def current_url(self) -> str:
        return os.environ.get(self.url_env) or self.url


DATASETS: dict[str, RemoteDataset] = {
    "car-damage": RemoteDataset(
        "car-damage", "https://storage.googleapis.com/bucket-8732/car_damage/preprocessed.zip", "zip", None, "index",
        "Car-damage photos of the ML.NET workshop: index.csv (image,class,subset T/V) + image/, "
        "8 classes (bumper_dent … unknown).",
        "Licensed from a third party (Peltarion AB), not Microsoft; for learning use, do not redistribute."),
    "flowers": RemoteDataset(
        "flowers", "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz", "tar",
        None, "folders", "TensorFlow's flower photos: about 3,700 images in 5 class folders.",
        "CC-BY 2.0, photographers credited in the archive's LICENSE.txt.",
        class_folders=("daisy", "dandelion", "roses", "sunflowers", "tulips")),
    "concrete-cracks": RemoteDataset(
        "concrete-cracks", "https://digitalcommons.usu.edu/cgi/viewcontent.cgi?filename=2&article=1047"
        "&context=all_datasets&type=additional", "zip", None, "folders",
        "SDNET2018 concrete images as in ML.NET's image-classification tutorial: only the bridge decks (folder D: "
        "CD cracked, UD uncracked) are used; the archive is about 500 MB.",
        "SDNET2018, Utah State University, CC BY 4.0.", class_folders=("CD", "UD")),
}


def safe_extract(archive: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Unpack a zip or tar into ``destination``, every member checked first: absolute, drive-letter and '..' names
    refused (zipfile and tar's data filter would rewrite them), tar links and devices by ``filter="data"``."""
    archive, destination = Path(archive), Path(destination)
    is_zip = zipfile.is_zipfile(archive)
    if not is_zip and not tarfile.is_tarfile(archive):
        raise DownloadError(f"{archive} is neither a zip nor a tar archive ({_what_it_looks_like(archive)}). "
                            "Delete it and try again, or download the archive by hand.")
    with zipfile.ZipFile(archive) if is_zip else tarfile.open(archive) as opened:
        members = opened.infolist() if is_zip else opened.getmembers()
        for member in members:
            name = member.filename if is_zip else member.name
            posix = name.replace("\\", "/")
            why = ("absolute path" if posix.startswith("/")
                   else "drive letter" if posix[1:2] == ":" and posix[:1].isalpha()
                   else "'..' component" if ".." in PurePosixPath(posix).parts else None)
            try:
                if not (why or is_zip):
                    tarfile.data_filter(member, str(destination))
            except tarfile.FilterError as error:
                why = (f"link to {member.linkname!r} pointing outside" if member.issym() or member.islnk()
                       else "device or pipe" if isinstance(error, tarfile.SpecialFileError) else str(error))
            if why:
                raise UnsafeArchiveError(
                    f"{archive}: refusing to unpack member {name!r} ({why}): it would be written outside the target "
                    "folder. The archive may be malicious or broken; delete it and download it from the original "
                    "source.")
        bar = tqdm(members, desc="Unpacking", unit="file", leave=False, disable=len(members) < 500)
        opened.extractall(destination, members=bar, **({} if is_zip else {"filter": "data"}))


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
    return f"an HTML error page downloaded instead? It starts {head[:16]!r}" if head else "an empty file"


def find_data_root(folder: str | os.PathLike, class_folders: tuple[str, ...] = ()) -> Path | None:
    """The (shallowest) folder holding index.csv, else all ``class_folders``, else sub-folders of images; or None."""
    folder = Path(folder)
    found: dict[str, list[Path]] = {"index": [], "classes": [], "images": []}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        root = Path(root)
        if "index.csv" in files:
            found["index"].append(root)
        if class_folders and set(class_folders) <= set(dirs):
            found["classes"].append(root)
        if any(n.lower().endswith(IMAGE_EXTENSIONS) for n in files) and root != folder:
            found["images"].append(root.parent)
    return next((min(paths, key=lambda p: (len(p.parts), str(p))) for paths in found.values() if paths), None)


def _summarise(name: str, folder: Path) -> str:
    """Load the dataset in ``folder`` (this checks it) and describe it in one line."""
    df = load_dataset(folder)
    subsets = df["subset"].value_counts()
    parts = f" ({', '.join(f'{s} {n:,}' for s, n in subsets.items())})" if (df["subset"] != "").any() else ""
    return f"{name}: {len(df):,} images in {df['label'].nunique()} classes{parts} at {folder}"


def _data_folder(source: RemoteDataset, folder: Path) -> Path:
    root = find_data_root(folder, source.class_folders)
    if root is None or (source.layout == "index" and not (root / "index.csv").is_file()):
        want = "index.csv" if source.layout == "index" else f"class folders {', '.join(source.class_folders)}"
        raise DownloadError(f"{folder} does not contain the {source.name} dataset (looked for {want}). Delete that "
                            "folder and run again to download it afresh, or point at the data folder yourself.")
    return root


def _download(source: RemoteDataset, data_dir: Path) -> Path:
    """The archive, from the cache or downloaded with keras.utils.get_file; fails fast when offline."""
    url, previous = source.current_url(), socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        return Path(keras.utils.get_file(
            fname=f"{source.name}.{'zip' if source.archive == 'zip' else 'tgz'}", origin=url,
            cache_dir=str(data_dir), cache_subdir="downloads",
            file_hash=None if url != source.url else source.sha256, hash_algorithm="sha256"))
    except Exception as error:  # noqa: BLE001  (Keras wraps HTTP/URL errors in a bare Exception)
        raise DownloadError(f"Could not download the {source.name} dataset from {url}: {error}. Check your internet "
                            f"connection, or set {source.url_env} to a mirror or a file:// URL of the archive. "
                            f"{SAMPLE_ADVICE}") from error
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
        data_dir.mkdir(parents=True, exist_ok=True)  # else Keras caches in /tmp/.keras
        archive = _download(source, data_dir)
        with atomic_folder(target) as partial:
            try:  # a bad archive is deleted, else every later run would find it again in the cache
                safe_extract(archive, partial)
            except UnsafeArchiveError:
                raise  # kept for inspection: the message says to delete it
            except DownloadError as error:  # not an archive at all
                looks = _what_it_looks_like(archive)
                archive.unlink(missing_ok=True)
                raise DownloadError(f"{archive}, downloaded from {source.current_url()}, is neither a zip nor a tar "
                                    f"archive ({looks}); it has been deleted. Check the URL (or set {source.url_env} "
                                    f"to a mirror or a file:// copy) and run again. {SAMPLE_ADVICE}") from error
            except (zipfile.BadZipFile, tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as error:
                archive.unlink(missing_ok=True)
                raise DownloadError(f"{archive} is damaged ({type(error).__name__}: {error}); it has been deleted, "
                                    "run again to download it afresh.") from error
            try:  # check the content before it becomes visible under its final name
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # shown once, below, with the final paths
                    _summarise(source.name, _data_folder(source, partial))
            except DatasetError as error:
                raise DownloadError(f"The {source.name} archive {archive} does not hold a usable dataset: "
                                    f"{error}") from error
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
    raise DatasetError(f"Unknown dataset {text!r}: not one of sample, {', '.join(DATASETS)}, and no file or folder "
                       f"{path.absolute()} exists. Give one of those names or the path of an index.csv / image folder.")
