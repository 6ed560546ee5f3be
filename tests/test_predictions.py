"""core: untrusted-image checks (formats), labels files (labels), Prediction and predict_frame (scorer); no TF."""
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

import image_cases
from workshop_utils.core import formats, runtime
from workshop_utils.core.formats import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    IMAGE_FORMATS,
    SUPPORTED_FORMATS,
    check_image_bytes,
    check_image_file,
    read_image_file,
)
from workshop_utils.core.errors import (
    ImageTooLargeError,
    InvalidImageError,
    LabelsFileError,
    UnscoredImagesWarning,
)
from workshop_utils.core.scorer import ImageScorer, Prediction
from workshop_utils.core.labels import LabelMap, load_labels, write_labels


class FakeScorer(ImageScorer):
    """ImageScorer's predict_frame over a given predict_proba(blobs, names)."""

    def __init__(self, proba, labels):
        self.predict_proba, self.labels = proba, labels


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
    assert "workshop_utils.core.formats" in sys.modules
    # the module itself never imports TF (other test modules may have loaded it, so check the source)
    import inspect

    import workshop_utils.core.formats as mod

    assert "tensorflow" not in inspect.getsource(mod).split('"""', 2)[2]


def test_checking_common_formats_never_loads_tensorflow():
    """A web handler can check JPEG/PNG/GIF/BMP uploads without TensorFlow; only WebP asks it (once) what it decodes."""
    code = (
        "import io, sys\n"
        "from PIL import Image\n"
        "from workshop_utils.core import formats\n"
        "for fmt in ('JPEG', 'PNG', 'GIF', 'BMP', 'MPO'):\n"
        "    b = io.BytesIO(); Image.new('RGB', (4, 4)).save(b, format=fmt)\n"
        "    formats.check_image_bytes(b.getvalue())\n"
        "print('tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_one_format_table():
    assert SUPPORTED_FORMATS == "JPEG/PNG/GIF/BMP/WebP" == "/".join(f.name for f in IMAGE_FORMATS)
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp"}
    assert formats.format_for_pillow("MPO").name == "JPEG"  # a phone camera's JPEG with a second frame
    assert formats.format_for_file_name("Car.JPG").name == "JPEG"
    assert formats.format_for_file_name("notes.txt") is None and formats.format_for_pillow("TIFF") is None
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
    tf = runtime.import_tensorflow()
    webp = encoded("WEBP")
    try:
        tf.io.decode_image(webp, channels=3)
        reads = True
    except tf.errors.OpError:
        reads = False
    runtime.tf_decodes.cache_clear()
    assert runtime.tf_decodes("WEBP") is reads
    if reads:
        assert check_image_bytes(webp, name="car.webp").format == "WebP"
    monkeypatch.setattr(runtime, "tf_decodes", lambda fmt: False)  # what an older TensorFlow says
    with pytest.raises(InvalidImageError, match=r"^image 'car\.webp': the bytes are a WebP image, but the installed "
                       rf"TensorFlow {tf.__version__} cannot decode WebP images; convert it to JPEG or PNG"):
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
    with pytest.raises(LabelsFileError, match=r"Labels file .*nope\.txt does not exist; it is written next to"):
        load_labels(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(LabelsFileError, match=r"empty\.txt: empty file; expected one class name a line"):
        load_labels(tmp_path / "empty.txt")
    assert load_labels(tmp_path) == ["dent", "scratch ok", "glass"]  # a folder means its labels.txt
    with pytest.raises(LabelsFileError, match=r"labels\.txt: class names are not sorted and unique"):
        load_labels(tmp_path, sorted_unique=True)  # kept order is fine for a model folder, not for a LabelMap
    assert LabelMap(["b", "a"]).save(tmp_path).read_text(encoding="utf-8") == "a\nb\n"
    assert load_labels(tmp_path, sorted_unique=True) == ["a", "b"]
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


def test_predict_frame_reports_bad_rows(tmp_path):
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
        out = FakeScorer(proba, labels).predict_frame(df, batch_size=4)
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


def test_predict_frame_needs_the_path_column():
    with pytest.raises(KeyError, match=r"no 'image_path' column \(columns: \['path'\]\)"):
        FakeScorer(lambda b, n: None, ["a"]).predict_frame(pd.DataFrame({"path": []}))


# -- EXIF orientation, read with the header ----------------------------------------------------------------
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_read_from_the_header(orientation):
    data = image_cases.jpeg(image_cases.asymmetric_photo(), orientation)
    info = check_image_bytes(data, complete=True)
    assert info.orientation == orientation
    stored = (64, 48) if orientation == 3 else (48, 64)  # a quarter turn is stored with width and height swapped
    assert (info.width, info.height) == stored


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_exif_orientation_of_png_and_webp(fmt):
    exif = Image.Exif()
    exif[formats.EXIF_ORIENTATION_TAG] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), "red").save(buffer, format=fmt, exif=exif.tobytes())
    assert formats.exif_orientation(Image.open(io.BytesIO(buffer.getvalue()))) == 6


def test_no_or_a_meaningless_orientation_means_as_stored():
    assert check_image_bytes(encoded("JPEG")).orientation == 1  # no EXIF at all
    for value in (0, 9):  # outside 1..8: ignored, as decoders ignore it
        exif = Image.Exif()
        exif[formats.EXIF_ORIENTATION_TAG] = value
        buffer = io.BytesIO()
        Image.new("RGB", (20, 10), "red").save(buffer, format="JPEG", exif=exif.tobytes())
        assert check_image_bytes(buffer.getvalue()).orientation == 1


# -- images that lie: a valid header over data that ends early ----------------------------------------------
CUT = r"\(truncated or corrupt: "
REDOWNLOAD = r"\)\. Re-download or re-save the file\.$"


def test_a_jpeg_whose_header_claims_more_pixels_than_its_data_holds_is_refused():
    """1000x30000 declared, 2.6 kB of data and an end marker: TensorFlow fills 29,872 rows with grey and scores it."""
    lie = image_cases.lying_jpeg()
    assert check_image_bytes(lie).pixels == 30_000_000  # the header alone looks fine (under the 40 MP limit)
    with pytest.raises(InvalidImageError,
                       match=rf"^image 'lie\.jpg': the bytes are not a decodable {SUPPORTED_FORMATS} image {CUT}the "
                             r"header declares 1000x30000 pixels, whose 705,000 blocks take at least 88,125 bytes of "
                             rf"compressed data, but the file holds \d,\d\d\d{REDOWNLOAD}"):
        check_image_bytes(lie, name="lie.jpg", complete=True)


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"optimize": True}, {"subsampling": 0}],
                         ids=["baseline", "progressive", "optimized", "4:4:4"])
def test_a_jpeg_cut_short_is_refused_before_any_decoder_sees_it(options):
    whole = image_cases.jpeg(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8), **options)
    assert check_image_bytes(whole, complete=True).format == "JPEG"  # complete files of every kind pass
    for cut in (len(whole) // 2, len(whole) - 2):  # half a download; only the end marker missing
        with pytest.raises(InvalidImageError,
                           match=rf"^image 'cut\.jpg': .*{CUT}the data stops after {cut:,} bytes, before the JPEG "
                                 rf"end-of-image marker{REDOWNLOAD}"):
            check_image_bytes(whole[:cut], name="cut.jpg", complete=True)
        assert check_image_bytes(whole[:cut]).format == "JPEG"  # the header-only look (serve's first check) passes


def test_restart_markers_tell_a_cut_body_even_behind_an_end_marker():
    photo = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    whole = image_cases.jpeg(photo, restart_marker_blocks=4)
    assert check_image_bytes(whole, complete=True).format == "JPEG"
    spliced = whole[: len(whole) // 2] + b"\xff\xd9"  # what a recovery tool leaves: cut, then "closed"
    with pytest.raises(InvalidImageError,
                       match=rf"{CUT}scan 1 of the 128x96 picture holds \d+ of the 11 restart markers its 48 "
                             rf"coding units need: its data stops early{REDOWNLOAD}"):
        check_image_bytes(spliced, complete=True)


def test_complete_jpegs_of_every_shape_pass_the_walk():
    """No false alarms: grey, greyscale, tiny, 1-pixel, phone-like (EXIF, restart markers), MPO."""
    flat = np.full((50, 70, 3), 128, np.uint8)
    cases = [image_cases.jpeg(flat, optimize=True, progressive=True), image_cases.jpeg(flat[:1, :1]),
             image_cases.jpeg(image_cases.asymmetric_photo(), 6, restart_marker_rows=1)]
    buffer = io.BytesIO()
    Image.fromarray(flat[..., 0]).save(buffer, format="JPEG", quality=1)
    cases.append(buffer.getvalue())
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), "red").save(buffer, format="MPO", save_all=True,
                                           append_images=[Image.new("RGB", (20, 10), "blue")])
    cases.append(buffer.getvalue())
    for data in cases:
        assert formats.jpeg_missing_data(data) is None
        check_image_bytes(data, complete=True)


def test_a_png_cut_short_is_refused():
    png = encoded("PNG", size=(60, 40))
    assert check_image_bytes(png, complete=True).format == "PNG"
    with pytest.raises(InvalidImageError,
                       match=rf"^image 'cut\.png': .*{CUT}the data stops inside the PNG's 'IDAT' chunk \(\d+ of the "
                             rf"\d+ bytes it needs\), before its IEND end chunk{REDOWNLOAD}"):
        check_image_bytes(png[:-20], name="cut.png", complete=True)
    with pytest.raises(InvalidImageError, match=r"the data stops after \d+ bytes, before the PNG's IEND"):
        check_image_bytes(png[:-12], complete=True)  # every chunk whole, only IEND missing


def test_a_cut_webp_says_truncated_not_unknown():
    webp = encoded("WEBP", size=(60, 40))
    with pytest.raises(InvalidImageError,
                       match=rf"^image 'cut\.webp': .*{CUT}its RIFF header declares {len(webp):,} bytes but there are "
                             rf"{len(webp) // 2:,}{REDOWNLOAD}"):
        check_image_bytes(webp[: len(webp) // 2], name="cut.webp")


def test_check_image_file_walks_the_whole_file_when_asked(tmp_path):
    path = tmp_path / "lie.jpg"
    path.write_bytes(image_cases.lying_jpeg())
    assert check_image_file(path).height == 30_000
    with pytest.raises(InvalidImageError, match=r"^image '.*lie\.jpg': .*1000x30000 pixels"):
        check_image_file(path, complete=True)


# -- BMPs: what TensorFlow reads right, or refused as unsupported (never "truncated or corrupt") ------------------
@pytest.mark.parametrize(("mode", "kind"), [
    ("1", r"a 1-bit BMP \(black and white\)"),
    ("P", r"an 8-bit BMP with a colour palette \(TensorFlow would read its colour numbers as grey levels\)"),
])
def test_bmps_tensorflow_misreads_are_refused_as_unsupported(mode, kind):
    with pytest.raises(InvalidImageError, match=(
            rf"^image 'scan\.bmp': the bytes are {kind}, which TensorFlow's decoder \(and so the model\) cannot read "
            r"right: it reads uncompressed 24- and 32-bit BMPs and 8-bit grayscale ones\. Convert it to PNG or JPEG, "
            r"e\.g\. PIL\.Image\.open\(path\)\.convert\('RGB'\)\.save\('photo\.png'\)\.$")) as caught:
        check_image_bytes(image_cases.bmp(mode), name="scan.bmp")
    assert "truncated" not in str(caught.value) and "Re-download" not in str(caught.value)


def test_bmps_tensorflow_reads_pass_and_odd_sizes_are_named():
    for mode in ("L", "RGB"):
        assert check_image_bytes(image_cases.bmp(mode), complete=True).format == "BMP"
    rgb = image_cases.bmp("RGB")
    with pytest.raises(InvalidImageError, match=r"the bytes are a BMP with 10 bytes after its 40x30 pixels "
                                                r"\(TensorFlow's decoder wants the exact size\)"):
        check_image_bytes(rgb + bytes(10))
    with pytest.raises(InvalidImageError,
                       match=rf"{CUT}the header declares 40x30 pixels at 24 bits, 3,654 bytes, but the file holds "
                             rf"3,644{REDOWNLOAD}"):
        check_image_bytes(rgb[:-10], complete=True)
    rle = bytearray(image_cases.bmp("P"))
    rle[30:34] = (1).to_bytes(4, "little")  # compression: RLE8
    with pytest.raises(InvalidImageError, match=r"the bytes are an RLE-compressed 8-bit BMP, which TensorFlow's"):
        check_image_bytes(bytes(rle))
