"""Tests for workshop_utils.download: safe extraction, fetching from file:// archives, offline failure, resolving.

No test touches the internet: downloads come from archives built in tmp_path (file:// URLs) or from a
local port that refuses connections at once.
"""
from __future__ import annotations

import io
import re
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from workshop_utils import config, download
from workshop_utils.core.errors import DatasetError, DownloadError, LeftOutFilesWarning, UnsafeArchiveError
from workshop_utils.download import DATASETS, fetch_dataset, find_data_root, resolve_dataset, safe_extract


def jpeg_bytes(color=(10, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def build_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return path


def build_tar(path: Path, files: dict[str, bytes], links: dict[str, tuple[str, bytes]] = {}) -> Path:
    """A .tgz of regular files plus links {name: (target, tarfile.SYMTYPE|LNKTYPE)}."""
    with tarfile.open(path, "w:gz") as tf:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
        for name, (target, kind) in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return path


def car_damage_files(prefix: str = "preprocessed/") -> dict[str, bytes]:
    rows = ["image,class,subset", "image/1.jpeg,door_dent,T", "image/2.jpeg,head_lamp,T",
            "image/3.jpeg,door_dent,V"]
    files = {f"{prefix}index.csv": ("\n".join(rows) + "\n").encode()}
    files.update({f"{prefix}image/{i}.jpeg": jpeg_bytes() for i in (1, 2, 3)})
    return files


# ---------------------------------------------------------------- safe extraction


@pytest.mark.parametrize("member, why", [
    ("../evil.txt", "'..' component"),
    ("ok/../../evil.txt", "'..' component"),
    ("/tmp/abs.txt", "absolute path"),
    ("C:/windows/evil.txt", "drive letter"),
    ("..\\evil.txt", "'..' component"),
])
def test_zip_with_path_traversal_is_refused(tmp_path: Path, member: str, why: str):
    archive = build_zip(tmp_path / "bad.zip", {"fine.txt": b"x", member: b"evil"})
    with pytest.raises(UnsafeArchiveError, match=re.escape(f"bad.zip: refusing to unpack member {member!r} ({why})")):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("files, links, member, why", [
    ({"../evil.txt": b"x"}, {}, "../evil.txt", r"'\.\.' component"),
    ({"/abs.txt": b"x"}, {}, "/abs.txt", "absolute path"),
    ({}, {"data/link": ("/etc/passwd", tarfile.SYMTYPE)}, "data/link", r"link to '/etc/passwd' pointing outside"),
    ({}, {"data/link": ("../../outside", tarfile.SYMTYPE)}, "data/link", r"link to '\.\./\.\./outside'"),
    ({}, {"data/hard": ("../x", tarfile.LNKTYPE)}, "data/hard", r"link to '\.\./x' pointing outside"),
])
def test_tar_with_path_traversal_or_escaping_links_is_refused(tmp_path, files, links, member, why):
    archive = build_tar(tmp_path / "bad.tgz", {"data/fine.txt": b"x", **files}, links)
    with pytest.raises(UnsafeArchiveError, match=rf"bad\.tgz: refusing to unpack member '{member}' \({why}"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_safe_archives_unpack_including_inner_links(tmp_path: Path):
    archive = build_tar(tmp_path / "ok.tgz", {"d/a.txt": b"hello"}, {"d/b.txt": ("a.txt", tarfile.SYMTYPE)})
    safe_extract(archive, tmp_path / "tar_out")
    assert (tmp_path / "tar_out" / "d" / "b.txt").read_text() == "hello"
    safe_extract(build_zip(tmp_path / "ok.zip", {"d/a.txt": b"hi"}), tmp_path / "zip_out")
    assert (tmp_path / "zip_out" / "d" / "a.txt").read_text() == "hi"


def test_not_an_archive(tmp_path: Path):
    (tmp_path / "page.zip").write_text("<html>Not found</html>")
    with pytest.raises(DownloadError, match=r"page\.zip is neither a zip nor a tar archive \(an HTML page, 22 bytes"):
        safe_extract(tmp_path / "page.zip", tmp_path / "out")
    assert (tmp_path / "page.zip").is_file()  # safe_extract never deletes a file it was given; fetch_dataset does
    (tmp_path / "blob.zip").write_bytes(b"\x00\x01garbage")
    with pytest.raises(DownloadError, match=r"blob\.zip is neither a zip nor a tar archive \(an HTML error page "
                       r"downloaded instead\? It starts b'\\x00\\x01garbage'\)"):
        safe_extract(tmp_path / "blob.zip", tmp_path / "out")


def test_find_data_root(tmp_path: Path):
    assert find_data_root(tmp_path) is None
    (tmp_path / "SDNET2018" / "D" / "CD").mkdir(parents=True)
    (tmp_path / "SDNET2018" / "D" / "UD").mkdir()
    (tmp_path / "SDNET2018" / "P" / "CP").mkdir(parents=True)
    (tmp_path / "SDNET2018" / "P" / "CP" / "1.jpg").write_bytes(jpeg_bytes())
    assert find_data_root(tmp_path, ("CD", "UD")) == tmp_path / "SDNET2018" / "D"
    assert find_data_root(tmp_path) == tmp_path / "SDNET2018" / "P"
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "x" / "y" / "index.csv").write_text("image,class,subset\n")
    assert find_data_root(tmp_path) == tmp_path / "x" / "y"


# ---------------------------------------------------------------- fetch_dataset


def test_offline_fails_fast_with_the_url_and_the_sample_advice(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/x.zip"  # the discard port: connection refused at once
    monkeypatch.setenv("WORKSHOP_CAR_DAMAGE_URL", url)
    with pytest.raises(DownloadError) as info:
        fetch_dataset("car-damage", data_dir=tmp_path)
    message = str(info.value)
    assert f"Could not download the car-damage dataset from {url}" in message
    assert "--dataset sample" in message and "WORKSHOP_PROFILE=quick" in message
    assert "WORKSHOP_CAR_DAMAGE_URL" in message
    assert not (tmp_path / "car-damage").exists()
    assert socket.getdefaulttimeout() is None  # restored


def test_download_runs_with_a_short_socket_timeout(tmp_path, monkeypatch):
    import keras

    seen = {}

    def fake_get_file(**kwargs):
        seen["timeout"] = socket.getdefaulttimeout()
        seen.update(kwargs)
        raise Exception("URL fetch failure on x: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    with pytest.raises(DownloadError, match=r"flower_photos\.tgz: URL fetch failure.*name resolution"):
        fetch_dataset("flowers", data_dir=tmp_path)
    assert seen["timeout"] == download.DOWNLOAD_TIMEOUT
    assert seen["origin"] == DATASETS["flowers"].url and seen["cache_dir"] == str(tmp_path)
    assert socket.getdefaulttimeout() is None


def test_fetch_index_layout_from_a_file_url_then_reuses_it(tmp_path, monkeypatch, capsys):
    archive = build_zip(tmp_path / "preprocessed.zip", car_damage_files())
    monkeypatch.setenv("WORKSHOP_CAR_DAMAGE_URL", archive.as_uri())
    data_dir = tmp_path / "data"
    folder = fetch_dataset("car-damage", data_dir=data_dir)
    assert folder == data_dir / "car-damage" / "preprocessed"
    assert (folder / "index.csv").is_file() and (data_dir / "downloads" / "car-damage.zip").is_file()
    assert f"car-damage: 3 images in 2 classes (train 2, validation 1) at {folder}" in capsys.readouterr().out
    assert sorted(p.name for p in data_dir.iterdir()) == ["car-damage", "downloads"]  # no partial folder left

    monkeypatch.setenv("WORKSHOP_CAR_DAMAGE_URL", "http://127.0.0.1:9/x.zip")  # would fail if it downloaded
    assert fetch_dataset("car-damage", data_dir=data_dir) == folder


def test_fetch_folder_layout_tar(tmp_path, monkeypatch, capsys):
    files = {f"flower_photos/{c}/{i}.jpg": jpeg_bytes() for c in DATASETS["flowers"].class_folders for i in (1, 2)}
    files["flower_photos/LICENSE.txt"] = b"CC-BY"
    archive = build_tar(tmp_path / "flower_photos.tgz", files)
    monkeypatch.setenv("WORKSHOP_FLOWERS_URL", archive.as_uri())
    with pytest.warns(LeftOutFilesWarning, match=r"left out 1 file — LICENSE\.txt: not a JPEG/PNG/GIF/BMP/WebP "):
        folder = fetch_dataset("flowers", data_dir=tmp_path / "data")
    assert folder == tmp_path / "data" / "flowers" / "flower_photos"
    assert f"flowers: 10 images in 5 classes at {folder}" in capsys.readouterr().out


def test_fetch_concrete_cracks_uses_only_the_deck_folder(tmp_path, monkeypatch):
    files = {f"D/{c}/{c}{i}.jpg": jpeg_bytes() for c in ("CD", "UD") for i in (1, 2)}
    files.update({f"P/{c}/{c}1.jpg": jpeg_bytes() for c in ("CP", "UP")})
    monkeypatch.setenv("WORKSHOP_CONCRETE_CRACKS_URL", build_zip(tmp_path / "sdnet.zip", files).as_uri())
    folder = fetch_dataset("concrete-cracks", data_dir=tmp_path / "data")
    assert folder == tmp_path / "data" / "concrete-cracks" / "D"


def test_archive_without_the_dataset_leaves_nothing_behind(tmp_path, monkeypatch):
    archive = build_zip(tmp_path / "wrong.zip", {"readme.txt": b"nothing here"})
    monkeypatch.setenv("WORKSHOP_CAR_DAMAGE_URL", archive.as_uri())
    with pytest.raises(DownloadError, match=r"does not contain the car-damage dataset \(looked for index\.csv\)"):
        fetch_dataset("car-damage", data_dir=tmp_path / "data")
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["downloads"]


def test_archive_with_broken_index_is_reported(tmp_path, monkeypatch):
    files = car_damage_files()
    del files["preprocessed/image/2.jpeg"]
    monkeypatch.setenv("WORKSHOP_CAR_DAMAGE_URL", build_zip(tmp_path / "p.zip", files).as_uri())
    with pytest.raises(DownloadError, match=r"archive .*car-damage\.zip does not hold a usable dataset: .*"
                       r"image files not found .* on lines 3 \(1 in all\)"):
        fetch_dataset("car-damage", data_dir=tmp_path / "data")
    assert not (tmp_path / "data" / "car-damage").exists()


def test_unsafe_archive_is_refused_as_unsafe_not_as_a_non_archive(tmp_path, monkeypatch):
    archive = build_zip(tmp_path / "evil.zip", {**car_damage_files(), "../evil.txt": b"x"})
    monkeypatch.setenv("WORKSHOP_CAR_DAMAGE_URL", archive.as_uri())
    with pytest.raises(UnsafeArchiveError, match=r"refusing to unpack member '\.\./evil\.txt'"):
        fetch_dataset("car-damage", data_dir=tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads"]
    assert not (tmp_path / "evil.txt").exists()


def test_tar_with_a_device_is_refused(tmp_path):
    with tarfile.open(tmp_path / "dev.tgz", "w:gz") as tf:
        info = tarfile.TarInfo("data/null")
        info.type = tarfile.CHRTYPE
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match=r"member 'data/null' \(device or pipe\)"):
        safe_extract(tmp_path / "dev.tgz", tmp_path / "out")


def test_damaged_archive_is_deleted_for_a_fresh_download(tmp_path, monkeypatch):
    good = build_zip(tmp_path / "good.zip", car_damage_files()).read_bytes()
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(good[:40] + b"\0" * 200 + good[240:])  # header intact, compressed data broken
    monkeypatch.setenv("WORKSHOP_CAR_DAMAGE_URL", damaged.as_uri())
    with pytest.raises(DownloadError, match=r"car-damage\.zip is damaged .*it has been deleted, run again"):
        fetch_dataset("car-damage", data_dir=tmp_path / "data")
    assert not (tmp_path / "data" / "downloads" / "car-damage.zip").exists()


def test_html_page_saved_as_the_archive_is_deleted_and_downloaded_again(tmp_path, monkeypatch):
    """A wrong URL saves an HTML page as car-damage.zip: it must not stay cached and fail every later run."""
    import keras

    data_dir = tmp_path / "data"
    served = {"body": b"<!DOCTYPE html><html><body>404 Not Found</body></html>"}
    downloads = []

    def fake_get_file(fname, origin, cache_dir, cache_subdir, **kwargs):  # like Keras: a cached file is reused
        target = Path(cache_dir) / cache_subdir / fname
        if not target.exists():
            downloads.append(origin)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(served["body"])
        return str(target)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    with pytest.raises(DownloadError, match=r"car-damage\.zip, downloaded from https://storage\.googleapis\.com/.*, is "
                       r"neither a zip nor a tar archive \(an HTML page, 54 bytes, starting b'<!DOCTYPE html>.*\); it "
                       r"has been deleted\. Check the URL \(or set WORKSHOP_CAR_DAMAGE_URL"):
        fetch_dataset("car-damage", data_dir=data_dir)
    assert not (data_dir / "downloads" / "car-damage.zip").exists()
    assert sorted(p.name for p in data_dir.iterdir()) == ["downloads"]  # no partial folder either

    served["body"] = build_zip(tmp_path / "good.zip", car_damage_files()).read_bytes()  # the URL is fixed
    folder = fetch_dataset("car-damage", data_dir=data_dir)
    assert (folder / "index.csv").is_file() and len(downloads) == 2  # downloaded again, not the cached page


def test_existing_folder_without_data(tmp_path):
    (tmp_path / "flowers").mkdir()
    with pytest.raises(DownloadError, match=r"flowers does not contain the flowers dataset \(looked for class "
                       r"folders daisy, .*\)\. Delete that folder and run again"):
        fetch_dataset("flowers", data_dir=tmp_path)


def test_fetch_unknown_name(tmp_path):
    with pytest.raises(DatasetError, match=r"Unknown dataset 'cats'; the downloadable ones are car-damage, "
                       r"flowers, concrete-cracks"):
        fetch_dataset("cats", data_dir=tmp_path)


def test_registry_entries_are_complete():
    for name, source in DATASETS.items():
        assert source.name == name and source.url.startswith("https://")
        assert source.archive in ("zip", "tar") and source.layout in ("index", "folders")
        assert source.description and source.licence
    assert DATASETS["car-damage"].url_env == "WORKSHOP_CAR_DAMAGE_URL"
    assert DATASETS["car-damage"].url.endswith("car_damage/preprocessed.zip")


# ---------------------------------------------------------------- resolve_dataset


def test_resolve_sample(tmp_path, monkeypatch):
    (tmp_path / "index.csv").write_text("image,class,subset\n")
    monkeypatch.setattr(config, "sample_dir", lambda: tmp_path)
    assert resolve_dataset("sample") == tmp_path
    assert resolve_dataset(" Sample ") == tmp_path


def test_resolve_missing_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "sample_dir", lambda: tmp_path / "sample")
    with pytest.raises(DatasetError, match=r"bundled sample is missing .*python -m workshop_utils sample"):
        resolve_dataset("sample")


def test_resolve_names_fetch_and_paths_pass_through(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(download, "fetch_dataset", lambda name, data_dir=None: calls.append((name, data_dir)) or tmp_path)
    assert resolve_dataset("Car_Damage", data_dir=tmp_path) == tmp_path
    assert calls == [("Car_Damage", tmp_path)]
    (tmp_path / "my.csv").write_text("image,class,subset\n")
    assert resolve_dataset(tmp_path / "my.csv") == tmp_path / "my.csv"
    assert resolve_dataset(str(tmp_path)) == tmp_path


def test_resolve_unknown_lists_valid_names(tmp_path):
    with pytest.raises(DatasetError, match=r"Unknown dataset 'catz': not one of sample, car-damage, flowers, "
                       r"concrete-cracks, and no file or folder .*catz exists"):
        resolve_dataset("catz")
