"""Untrusted-image checks, labels files, Prediction and score_frame (no TensorFlow needed)."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workshop_utils import predictions
from workshop_utils.predictions import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    IMAGE_FORMATS,
    SUPPORTED_FORMATS,
    ImageTooLargeError,
    InvalidImageError,
    LabelsFileError,
    Prediction,
    UnscoredImagesWarning,
    check_image_bytes,
    check_image_file,
    load_labels,
    read_image_file,
    score_frame,
    write_labels,
)


def encoded(fmt: str, size=(20, 10), mode="RGB", color=(200, 30, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color if mode != "L" else 128).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height but carries almost no pixel data (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")


def test_module_does_not_import_tensorflow():
    assert "workshop_utils.predictions" in sys.modules
    # the module itself never imports TF (other test modules may have loaded it, so check the source)
    import inspect

    import workshop_utils.predictions as mod

    assert "tensorflow" not in inspect.getsource(mod).split('"""', 2)[2]


def test_checking_common_formats_never_loads_tensorflow():
    """A web handler can check JPEG/PNG/GIF/BMP uploads without TensorFlow; only WebP asks it (once) what it decodes."""
    code = (
        "import io, sys\n"
        "from PIL import Image\n"
        "from workshop_utils import predictions\n"
        "for fmt in ('JPEG', 'PNG', 'GIF', 'BMP', 'MPO'):\n"
        "    b = io.BytesIO(); Image.new('RGB', (4, 4)).save(b, format=fmt)\n"
        "    predictions.check_image_bytes(b.getvalue())\n"
        "print('tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_one_format_table():
    assert SUPPORTED_FORMATS == "JPEG/PNG/GIF/BMP/WebP" == "/".join(f.name for f in IMAGE_FORMATS)
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp"}
    assert predictions.format_for_pillow("MPO").name == "JPEG"  # a phone camera's JPEG with a second frame
    assert predictions.format_for_file_name("Car.JPG").name == "JPEG"
    assert predictions.format_for_file_name("notes.txt") is None and predictions.format_for_pillow("TIFF") is None
    assert [f.name for f in IMAGE_FORMATS if f.checked_at_run_time] == ["WebP"]


@pytest.mark.parametrize(("fmt", "expected"), [("JPEG", "JPEG"), ("PNG", "PNG"), ("GIF", "GIF"), ("BMP", "BMP")])
def test_supported_formats_pass(fmt, expected):
    info = check_image_bytes(encoded(fmt), name="car.x")
    assert (info.format, info.width, info.height, info.pixels) == (expected, 20, 10, 200)


def test_mpo_from_a_phone_passes():
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), "red").save(buffer, format="MPO", save_all=True,
                                           append_images=[Image.new("RGB", (20, 10), "blue")])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    assert check_image_bytes(buffer.getvalue()).format == "JPEG"


def test_webp_follows_what_the_installed_tensorflow_decodes(monkeypatch):
    """WebP is trained on (tf.io.decode_image reads it), so predict accepts it — when this TF really decodes it."""
    images = pytest.importorskip("workshop_utils.images")
    webp = encoded("WEBP")
    try:
        images.tf.io.decode_image(webp, channels=3)
        reads = True
    except images.tf.errors.OpError:
        reads = False
    images.tf_decodes.cache_clear()
    assert images.tf_decodes("WEBP") is reads
    if reads:
        assert check_image_bytes(webp, name="car.webp").format == "WebP"
    monkeypatch.setattr(images, "tf_decodes", lambda fmt: False)  # what an older TensorFlow says
    with pytest.raises(InvalidImageError, match=r"^image 'car\.webp': the bytes are a WebP image, but the installed "
                       rf"TensorFlow {images.tf.__version__} cannot decode WebP images; convert it to JPEG or PNG"):
        check_image_bytes(webp, name="car.webp")


def test_zero_bytes_rejected_with_name():
    with pytest.raises(InvalidImageError, match=r"image 'empty\.jpg': the bytes are empty \(0 bytes\): not a decodable JPEG/PNG/GIF/BMP/WebP image"):
        check_image_bytes(b"", name="empty.jpg")


def test_non_image_bytes_rejected():
    with pytest.raises(InvalidImageError, match=r"^the bytes \(11 bytes, starting b'hello wo'\) are not a decodable JPEG/PNG/GIF/BMP/WebP image"):
        check_image_bytes(b"hello world")
    assert issubclass(InvalidImageError, ValueError)


def test_other_image_format_rejected():
    tiff = encoded("TIFF")
    with pytest.raises(InvalidImageError, match=r"image 'x\.tif': the bytes are a TIFF image, not a decodable JPEG/PNG/GIF/BMP/WebP image; convert"):
        check_image_bytes(tiff, name="x.tif")


def test_str_instead_of_bytes_is_a_type_error():
    with pytest.raises(TypeError, match=r"got a str, expected the file's bytes.*predict_file"):
        check_image_bytes("car.jpg")


def test_pixel_limit_checked_from_header_only():
    # 10000 x 5000 = 50 MP declared, no pixel data at all: rejected for its size, never decoded
    bomb = png_header_claiming(10_000, 5_000)
    with pytest.raises(ImageTooLargeError, match=r"image 'bomb\.png': the image is 10000x5000 = 50 MP, over the limit of 40 MP \(max_pixels=40000000\)"):
        check_image_bytes(bomb, name="bomb.png")
    assert DEFAULT_MAX_PIXELS == 40_000_000
    # the same header passes with a higher limit (the truncated data is TensorFlow's to catch later)
    assert check_image_bytes(bomb, max_pixels=60_000_000).pixels == 50_000_000


def test_pixel_limit_parameter():
    with pytest.raises(ImageTooLargeError, match=r"20x10 = 0.0002 MP, over the limit of 0.0001 MP \(max_pixels=100\)"):
        check_image_bytes(encoded("PNG"), max_pixels=100)
    assert check_image_bytes(encoded("PNG"), max_pixels=None).pixels == 200


def test_gif_frames_count_towards_the_limit():
    frames = [Image.new("RGB", (20, 10), c) for c in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageTooLargeError, match=r"image 'a\.gif': the image is 20x10 x 3 frames = 0.0006 MP, over the limit of 0.0005 MP"):
        check_image_bytes(buffer.getvalue(), name="a.gif", max_pixels=500)
    assert check_image_bytes(buffer.getvalue(), max_pixels=600).format == "GIF"


def test_pillow_bomb_guard_reported_as_too_large():
    bomb = png_header_claiming(30_000, 30_000)  # 900 MP: beyond Pillow's own hard limit
    with pytest.raises(ImageTooLargeError, match=r"image 'huge\.png': the image is too large to decode safely"):
        check_image_bytes(bomb, name="huge.png", max_pixels=None)


def test_check_image_file_reads_the_header_only(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_claiming(10_000, 5_000))  # the pixel data is missing: a decoder would fail
    with pytest.raises(ImageTooLargeError, match=r"^image '.*bomb\.png': the image is 10000x5000 = 50 MP, over the "
                       r"limit of 40 MP \(max_pixels=40000000\)"):
        check_image_file(bomb)
    assert check_image_file(bomb, max_pixels=None).pixels == 50_000_000
    with open(bomb, "rb") as fh, pytest.raises(ImageTooLargeError, match=r"^the image is 10000x5000"):
        check_image_file(fh, name="")  # an open file, no name in the message
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InvalidImageError, match=r"image '.*empty\.jpg': the file is empty \(0 bytes\)"):
        check_image_file(tmp_path / "empty.jpg")
    with pytest.raises(FileNotFoundError):
        check_image_file(tmp_path / "missing.jpg")


def test_read_image_file(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(encoded("PNG"))
    assert read_image_file(path) == path.read_bytes()
    with pytest.raises(FileNotFoundError, match=r"Image file '.*missing\.jpg' does not exist"):
        read_image_file(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(InvalidImageError, match=r"image '.*bad\.jpg': the bytes \(12 bytes"):
        read_image_file(tmp_path / "bad.jpg")


def test_labels_round_trip_and_errors(tmp_path):
    path = write_labels(["dent", "scratch ok", "glass"], tmp_path / "labels.txt")
    assert path.read_text(encoding="utf-8") == "dent\nscratch ok\nglass\n"
    assert load_labels(path) == ["dent", "scratch ok", "glass"]
    assert load_labels(("a", "b")) == ["a", "b"]
    with pytest.raises(LabelsFileError, match=r"Labels file '.*nope\.txt' does not exist"):
        load_labels(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(LabelsFileError, match=r"Labels file '.*empty\.txt' is empty"):
        load_labels(tmp_path / "empty.txt")
    with pytest.raises(LabelsFileError, match=r"cannot be written one per line"):
        write_labels(["a\nb"], tmp_path / "x.txt")


def test_prediction_from_scores():
    p = Prediction.from_scores(np.array([0.2, 0.5, 0.3]), ["a", "b", "c"], source="car.jpg")
    assert (p.label, p.probability, p.source) == ("b", 0.5, "car.jpg")
    assert p.scores == {"a": 0.2, "b": 0.5, "c": 0.3}
    assert p.top(2) == [("b", 0.5), ("c", 0.3)]
    assert str(p) == "car.jpg: b (50.0%)   next: c 30.0%, a 20.0%"
    assert p.to_dict() == {"source": "car.jpg", "label": "b", "probability": 0.5, "scores": p.scores}
    assert "<b>car.jpg: b</b>" in p._repr_html_()
    tie = Prediction.from_scores([0.4, 0.4, 0.2], ["x", "y", "z"])
    assert tie.label == "x"  # ties: the lower class index, like argmax
    with pytest.raises(LabelsFileError, match=r"returned 2 scores but there are 3 labels"):
        Prediction.from_scores([0.5, 0.5], ["a", "b", "c"])


def test_score_frame_reports_bad_rows(tmp_path):
    labels = ["a", "b"]
    good1, good2 = tmp_path / "g1.png", tmp_path / "g2.jpg"
    good1.write_bytes(encoded("PNG", color=(255, 0, 0)))
    good2.write_bytes(encoded("JPEG", color=(0, 0, 255)))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage!")
    corrupt = tmp_path / "corrupt.png"  # a valid header the (fake) decoder then rejects
    corrupt.write_bytes(encoded("PNG", color=(1, 2, 3)))
    calls = []

    def proba(blobs, names):
        calls.append(len(blobs))
        if any(str(n).endswith("corrupt.png") for n in names):
            raise InvalidImageError(f"{names} corrupt")
        return np.array([[0.9, 0.1] if str(n).endswith(".png") else [0.3, 0.7] for n in names])

    df = pd.DataFrame(
        {"image_path": [str(good1), str(tmp_path / "gone.jpg"), str(bad), str(corrupt), str(good2)], "label": list("abcde")},
        index=[10, 11, 12, 13, 14],
    )
    with pytest.warns(UnscoredImagesWarning, match=r"3 of 5 images could not be scored .*see the 'error' column"):
        out = score_frame(df, proba, labels, batch_size=4)
    assert list(out.index) == [10, 11, 12, 13, 14]
    assert list(out.columns) == ["image_path", "label", "predicted", "probability", "score_a", "score_b", "error"]
    assert out["predicted"].tolist() == ["a", None, None, None, "b"]
    np.testing.assert_allclose(out["probability"], [0.9, np.nan, np.nan, np.nan, 0.7])
    np.testing.assert_allclose(out.loc[10, ["score_a", "score_b"]].astype(float), [0.9, 0.1])
    assert out.loc[10, "error"] is None and out.loc[14, "error"] is None
    assert "does not exist" in out.loc[11, "error"]
    assert "not a decodable JPEG/PNG/GIF/BMP/WebP image" in out.loc[12, "error"]
    assert "corrupt" in out.loc[13, "error"]
    # batch 1 (g1, corrupt) failed as a whole, then was retried one by one; batch 2 (g2) alone
    assert calls == [2, 1, 1, 1]


def test_score_frame_needs_the_path_column():
    with pytest.raises(KeyError, match=r"no 'image_path' column \(columns: \['path'\]\)"):
        score_frame(pd.DataFrame({"path": []}), lambda b, n: None, ["a"])
