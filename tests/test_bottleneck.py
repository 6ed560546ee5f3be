"""The bottleneck phase: decoding, bad images, ML.NET's progress lines, and the fingerprinted atomic cache."""
import hashlib
import io
import json
import os
import time

import image_cases
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workshop_utils import bottleneck
from workshop_utils.architectures import Architecture
from workshop_utils.bottleneck import Bottlenecks, compute_bottlenecks, load_bottlenecks
from workshop_utils.core.errors import DatasetError, SkippedImagesWarning

keras = pytest.importorskip("keras")


def _tiny_backbone(input_shape, weights):
    return keras.Sequential(
        [keras.Input(input_shape), keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D()]
    )


def tiny(name="Tiny"):
    """A 4-wide stand-in backbone: the pipeline and cache logic do not depend on the CNN's size."""
    return Architecture(name=name, input_size=(32, 32), bottleneck_width=4, preprocess_input=lambda x: x,
                        scale=1 / 255, offset=0.0, backbone=_tiny_backbone)


def _save(path, mode, colour, fmt=None):
    size = (40, 30)
    if mode == "P":
        image = Image.new("RGB", size, colour).convert("P")
    else:
        image = Image.new(mode, size, colour)
    image.save(path, format=fmt)
    return str(path)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [
        _save(folder / "rgb.jpg", "RGB", (200, 20, 20)),
        _save(folder / "rgba.png", "RGBA", (20, 200, 20, 128)),
        _save(folder / "gray.gif", "L", 90),
        _save(folder / "rgb.bmp", "RGB", (20, 20, 200)),
        _save(folder / "gray.jpeg", "L", 200),
        _save(folder / "palette.png", "P", (250, 250, 0)),
    ]
    return pd.DataFrame({"image_path": paths, "label": ["a", "b", "a", "b", "a", "b"]})


def _noisy_jpeg(path, size=(96, 96)):
    """A JPEG whose entropy-coded data is long, so cutting it in half keeps a valid header."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")
    return path


def _bad_files(folder):
    text = folder / "text.jpg"
    text.write_text("this is not a JPEG")
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    good = _noisy_jpeg(folder / "noisy.jpg").read_bytes()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])  # header intact, pixel data cut: the walk finds no end marker
    corrupt = folder / "corrupt.png"  # every chunk complete, but the compressed pixels garbled: only decoding tells
    png = bytearray(_encoded(Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), np.uint8)), "PNG"))
    start = png.index(b"IDAT") + 20
    png[start:start + 64] = bytes(64)
    corrupt.write_bytes(bytes(png))
    return [str(text), str(empty), str(truncated), str(corrupt)]


def _encoded(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_decodes_every_format(images, tmp_path):
    result = compute_bottlenecks(images, tiny(), tmp_path / "ws", batch_size=4, weights=None, progress=False)
    assert isinstance(result, Bottlenecks)
    assert result.features.shape == (6, 4) and result.features.dtype == np.float32
    assert np.isfinite(result.features).all()
    assert result.labels == list(images["label"])
    assert result.image_paths == [os.path.abspath(p) for p in images["image_path"]]
    assert result.skipped.empty and not result.from_cache
    assert (result.arch, result.weights_id, result.image_size) == ("Tiny", "random-init:seed0", (32, 32))


def test_bad_images_are_skipped_and_reported(images, tmp_path):
    bad = _bad_files(tmp_path / "images")
    frame = pd.concat([images.iloc[:2], pd.DataFrame({"image_path": bad, "label": ["x", "y", "z", "w"]}),
                       images.iloc[2:]], ignore_index=True)
    csv = tmp_path / "ws" / "bottlenecks" / "train" / "skipped.csv"
    with pytest.warns(SkippedImagesWarning, match=r"Skipped 4 of 10 images .*text\.jpg") as caught:
        result = compute_bottlenecks(frame, tiny(), tmp_path / "ws", batch_size=4, weights=None, progress=False)
    assert str(caught[0].message).endswith(f"; all 4 with reasons: {csv}.")  # points to a file, not an attribute
    assert len(result) == 6
    assert result.labels == list(images["label"])  # rows stay aligned with their labels
    assert not (result.features == 0).all(axis=1).any()  # never a zero vector in place of an image
    reasons = dict(zip(result.skipped["path"], result.skipped["reason"]))
    assert list(reasons) == [os.path.abspath(p) for p in bad]
    assert reasons[os.path.abspath(bad[0])].startswith(
        "the bytes (18 bytes, starting b'this is ') are not a decodable JPEG/PNG/GIF/BMP/WebP image")
    assert reasons[os.path.abspath(bad[1])] == "empty file (0 bytes)"
    assert reasons[os.path.abspath(bad[2])] == (
        "the bytes are not a decodable JPEG/PNG/GIF/BMP/WebP image (truncated or corrupt: the data stops after "
        f"{os.path.getsize(bad[2]):,} bytes, before the JPEG end-of-image marker). Re-download or re-save the file.")
    assert "Invalid PNG data" in reasons[os.path.abspath(bad[3])]  # found by decoding it, as TensorFlow refused it
    pd.testing.assert_frame_equal(pd.read_csv(csv), result.skipped)


def test_cut_jpeg_header_never_reaches_libjpeg(images, tmp_path, capfd):
    """libjpeg prints "Improper call to JPEG library in state 201" on the C stderr for a cut header: no stray line."""
    good = _noisy_jpeg(tmp_path / "noisy.jpg").read_bytes()
    cuts = []
    for n in (3, 100, 400):
        cut = tmp_path / f"cut{n}.jpg"
        cut.write_bytes(good[:n])
        cuts.append(str(cut))
    truncated = tmp_path / "half.jpg"
    truncated.write_bytes(good[: len(good) // 2])  # refused by the walk: it has no end marker
    frame = pd.concat([images, pd.DataFrame({"image_path": cuts + [str(truncated)], "label": "a"})])
    capfd.readouterr()
    with pytest.warns(SkippedImagesWarning, match="Skipped 4 of 10 images"):
        result = compute_bottlenecks(frame, tiny(), tmp_path / "ws", weights=None, progress=False)
    assert len(result) == 6
    err = capfd.readouterr().err
    assert "JPEG library" not in err and "Input file read error" not in err, err


def test_decompression_bomb_is_skipped_from_its_header(images, tmp_path):
    """9000 x 5000 = 45 MP, over predictions.DEFAULT_MAX_PIXELS (40 MP): reported, never decoded (a 1-bit PNG: 6 kB)."""
    big = tmp_path / "images" / "big.png"
    Image.new("1", (9000, 5000)).save(big)
    frame = pd.concat([images, pd.DataFrame({"image_path": [str(big)], "label": ["a"]})], ignore_index=True)
    with pytest.warns(SkippedImagesWarning, match=r"Skipped 1 of 7 images .*big\.png: the image is 9000x5000 = 45 MP, "
                      r"over the limit of 40 MP \(max_pixels=40000000\)"):
        result = compute_bottlenecks(frame, tiny(), tmp_path / "ws", weights=None, progress=False)
    assert len(result) == 6 and list(result.skipped["path"]) == [str(big)]


def test_pixel_limit_is_a_parameter_and_part_of_the_fingerprint(images, tmp_path, monkeypatch, capsys):
    def not_decoded(*args, **kwargs):
        raise AssertionError("no image over the limit may reach the decoder")

    monkeypatch.setattr(bottleneck, "feature_extractor", not_decoded)  # every image (40x30 = 1200 px) is over 1000
    with pytest.raises(DatasetError, match=r"None of the 6 images could be decoded \(first: .*rgb\.jpg: the image "
                       r"is 40x30 = 0\.0012 MP, over the limit of 0\.001 MP \(max_pixels=1000\)"):
        compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False, max_pixels=1000)
    monkeypatch.undo()
    compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False)
    capsys.readouterr()
    result = compute_bottlenecks(images, tiny(), tmp_path / "ws", reuse=True, weights=None, progress=False,
                                 max_pixels=2000)
    assert not result.from_cache
    assert "pixel limit changed (max_pixels 40000000 → 2000)" in capsys.readouterr().out


def test_missing_file_is_skipped(images, tmp_path):
    frame = pd.concat([images, pd.DataFrame({"image_path": [str(tmp_path / "gone.jpg")], "label": ["a"]})])
    with pytest.warns(SkippedImagesWarning, match="gone.jpg: file not found"):
        result = compute_bottlenecks(frame, tiny(), tmp_path / "ws", weights=None, progress=False)
    assert len(result) == 6


def test_nothing_decodable_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "rgb.jpg").write_bytes(b"\xff\xd8\xff")
    frame = pd.DataFrame({"image_path": _bad_files(tmp_path / "images"), "label": ["a"] * 4})
    with pytest.raises(DatasetError, match=r"None of the 4 images could be decoded \(first: .*text\.jpg"):
        compute_bottlenecks(frame, tiny(), tmp_path / "ws", weights=None, progress=False)


def test_bad_tables(tmp_path):
    with pytest.raises(DatasetError, match="needs a DataFrame with an 'image_path' column"):
        compute_bottlenecks(pd.DataFrame({"path": ["x.jpg"]}), tiny(), tmp_path, weights=None)
    with pytest.raises(DatasetError, match="No images to compute bottlenecks for"):
        compute_bottlenecks(pd.DataFrame({"image_path": []}), tiny(), tmp_path, weights=None)
    with pytest.raises(DatasetError, match="batch_size must be at least 1"):
        compute_bottlenecks(pd.DataFrame({"image_path": ["x.jpg"]}), tiny(), tmp_path, batch_size=0, weights=None)


def test_metrics_callback_lines(images, tmp_path):
    lines = []
    compute_bottlenecks(images.iloc[:3], tiny(), tmp_path / "ws", cache_name="validation", weights=None,
                        metrics_callback=lambda m: lines.append(str(m)), progress=False)
    assert lines == [f"Phase: Bottleneck Computation, Dataset used: Validation, Image Index:   {i}" for i in (1, 2, 3)]
    lines.clear()
    compute_bottlenecks(images.iloc[:1], tiny(), tmp_path / "ws", cache_name="train", weights=None,
                        metrics_callback=lambda m: lines.append(str(m)), progress=False)
    assert lines == ["Phase: Bottleneck Computation, Dataset used:      Train, Image Index:   1"]


def test_cache_files_and_reuse_without_building_the_model(images, tmp_path, monkeypatch, capsys):
    first = compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False)
    folder = tmp_path / "ws" / "bottlenecks" / "train"
    assert sorted(p.name for p in folder.iterdir()) == ["features.npy", "labels.txt", "manifest.json", "skipped.csv"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["train"]  # no temporary folders left
    manifest = json.loads((folder / "manifest.json").read_text())
    fingerprint = manifest["fingerprint"]
    assert fingerprint["arch"] == "Tiny" and fingerprint["image_size"] == [32, 32]
    assert fingerprint["images"][0][:2] == ["rgb.jpg", os.path.getsize(images["image_path"][0])]
    assert fingerprint["images"][0][2] == hashlib.sha1(open(images["image_path"][0], "rb").read()).hexdigest()
    assert manifest["format"] == bottleneck.CACHE_FORMAT == 2 and fingerprint["max_pixels"] == 40_000_000
    assert fingerprint["decoding"] == bottleneck.DECODE_VERSION == 2  # EXIF orientation applied, cut files refused
    assert (folder / "labels.txt").read_text().splitlines() == list(images["label"])

    def no_model(*args, **kwargs):
        raise AssertionError("a cache hit must not build the model")

    monkeypatch.setattr(bottleneck, "feature_extractor", no_model)
    again = compute_bottlenecks(images, tiny(), tmp_path / "ws", reuse=True, weights=None, progress=False)
    assert again.from_cache
    np.testing.assert_array_equal(again.features, first.features)
    assert again.labels == first.labels and again.image_paths == first.image_paths
    loaded = load_bottlenecks(folder)
    np.testing.assert_array_equal(loaded.features, first.features)
    assert loaded.image_paths == first.image_paths and loaded.labels == first.labels


def test_reuse_false_recomputes(images, tmp_path):
    compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False)
    again = compute_bottlenecks(images, tiny(), tmp_path / "ws", reuse=False, weights=None, progress=False)
    assert not again.from_cache


def test_changed_image_makes_the_cache_stale(images, tmp_path, capsys):
    compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False)
    path = images["image_path"][3]
    _save(path, "RGB", (255, 255, 255), fmt="BMP")  # same name, new bytes
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    capsys.readouterr()
    result = compute_bottlenecks(images, tiny(), tmp_path / "ws", reuse=True, weights=None, progress=False)
    assert not result.from_cache
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["Cache train is stale: 1 image changed content (first: rgb.bmp); recomputing."]
    assert compute_bottlenecks(images, tiny(), tmp_path / "ws", reuse=True, weights=None, progress=False).from_cache


def test_same_size_replacement_with_the_old_timestamp_is_noticed(images, tmp_path, capsys):
    """`cp -p`, rsync and unzip keep the timestamp: a same-size file with new pixels must still make the cache stale."""
    first = compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False)
    path = images["image_path"][3]  # rgb.bmp: an uncompressed BMP, so other colours keep the exact size
    before = os.stat(path)
    _save(path, "RGB", (255, 255, 255), fmt="BMP")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    capsys.readouterr()
    result = compute_bottlenecks(images, tiny(), tmp_path / "ws", reuse=True, weights=None, progress=False)
    assert not result.from_cache
    out = capsys.readouterr().out.strip()
    assert out == "Cache train is stale: 1 image changed content (first: rgb.bmp); recomputing."
    assert not np.array_equal(result.features[3], first.features[3])  # the new pixels, not the stale features


def test_other_images_make_the_cache_stale(images, tmp_path, capsys):
    compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False)
    capsys.readouterr()
    result = compute_bottlenecks(images.iloc[:5], tiny(), tmp_path / "ws", reuse=True, weights=None, progress=False)
    assert not result.from_cache
    assert "image list changed: 1 removed (first: palette.png)" in capsys.readouterr().out


def test_changed_arch_or_size_makes_the_cache_stale(images, tmp_path, capsys):
    compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False)
    capsys.readouterr()
    other = compute_bottlenecks(images, tiny("Tiny2"), tmp_path / "ws", reuse=True, weights=None, progress=False)
    assert not other.from_cache
    assert "Cache train is stale: architecture changed (Tiny → Tiny2); recomputing." in capsys.readouterr().out
    bigger = compute_bottlenecks(images, tiny("Tiny2"), tmp_path / "ws", reuse=True, weights=None,
                                 image_size=(40, 40), progress=False)
    assert not bigger.from_cache and bigger.image_size == (40, 40)
    assert "input size changed (32x32 → 40x40)" in capsys.readouterr().out


def test_interrupted_write_is_never_trusted(images, tmp_path, monkeypatch, capsys):
    real_save = np.save

    def crash_after_features(*args, **kwargs):
        real_save(*args, **kwargs)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(bottleneck.np, "save", crash_after_features)
    with pytest.raises(OSError, match="simulated"):
        compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False)
    monkeypatch.undo()
    parent = tmp_path / "ws" / "bottlenecks"
    assert list(parent.iterdir()) == []  # neither a final nor a temporary folder is left behind
    capsys.readouterr()
    result = compute_bottlenecks(images, tiny(), tmp_path / "ws", reuse=True, weights=None, progress=False)
    assert not result.from_cache
    assert "Cache train: no cache yet; computing the bottlenecks." in capsys.readouterr().out


def test_interrupted_rewrite_keeps_the_old_cache_and_still_recomputes(images, tmp_path, monkeypatch, capsys):
    compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False)
    def killed(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr(bottleneck.np, "save", killed)
    with pytest.raises(OSError, match="killed"):
        compute_bottlenecks(images.iloc[:4], tiny(), tmp_path / "ws", weights=None, progress=False)
    monkeypatch.undo()
    capsys.readouterr()
    # The old cache is intact but describes 6 images: asked for 4, it is stale, not trusted.
    result = compute_bottlenecks(images.iloc[:4], tiny(), tmp_path / "ws", reuse=True, weights=None, progress=False)
    assert not result.from_cache and len(result) == 4
    assert "image list changed: 2 removed" in capsys.readouterr().out


def test_manifest_without_matching_features_is_not_trusted(images, tmp_path, capsys):
    compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False)
    folder = tmp_path / "ws" / "bottlenecks" / "train"
    np.save(folder / "features.npy", np.zeros((2, 4), np.float32))
    capsys.readouterr()
    result = compute_bottlenecks(images, tiny(), tmp_path / "ws", reuse=True, weights=None, progress=False)
    assert not result.from_cache
    assert "features.npy is damaged" in capsys.readouterr().out
    with pytest.raises(DatasetError, match="is not a complete bottleneck cache"):
        load_bottlenecks(tmp_path / "nowhere")


def test_skipped_images_are_remembered_by_the_cache(images, tmp_path):
    bad = _bad_files(tmp_path / "images")
    frame = pd.concat([images, pd.DataFrame({"image_path": bad[:1], "label": ["a"]})], ignore_index=True)
    with pytest.warns(SkippedImagesWarning):
        compute_bottlenecks(frame, tiny(), tmp_path / "ws", weights=None, progress=False)
    with pytest.warns(SkippedImagesWarning, match="when the cache was made"):
        again = compute_bottlenecks(frame, tiny(), tmp_path / "ws", reuse=True, weights=None, progress=False)
    assert again.from_cache and len(again) == 6 and list(again.skipped["path"]) == [os.path.abspath(bad[0])]


def test_no_cache_name_writes_nothing(images, tmp_path):
    result = compute_bottlenecks(images, tiny(), tmp_path / "ws", cache_name=None, weights=None, progress=False)
    assert result.cache_dir is None and not (tmp_path / "ws").exists()


def test_mixed_precision_is_a_noop_on_cpu(images, tmp_path, capsys):
    if bottleneck.tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present")
    result = compute_bottlenecks(images.iloc[:2], tiny(), tmp_path / "ws", weights=None, mixed_precision=True,
                                 progress=False)
    assert result.features.dtype == np.float32
    assert "mixed precision needs a GPU" in capsys.readouterr().out


def test_label_indices(images, tmp_path):
    from workshop_utils.core.labels import LabelMap

    result = compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False)
    np.testing.assert_array_equal(result.label_indices(LabelMap(["a", "b"])), [0, 1, 0, 1, 0, 1])


def test_mobilenet_features(images, tmp_path):
    """The real pipeline end to end with a registered architecture (random weights, small input)."""
    result = compute_bottlenecks(images, "MobilenetV2", tmp_path / "ws", weights=None, image_size=(64, 64),
                                 progress=False)
    assert result.features.shape == (6, 1280) and result.arch == "MobilenetV2"


# -- EXIF orientation, images that lie --------------------------------------------------------------------------
def _position_sensitive(input_shape, weights):
    """Features = the average colour of each 8x8 cell: a photo on its side gives other features (unlike pooling)."""
    return keras.Sequential([keras.Input(input_shape), keras.layers.AveragePooling2D(8), keras.layers.Flatten()])


def where():
    return Architecture(name="Where", input_size=(32, 32), bottleneck_width=48, preprocess_input=lambda x: x,
                        scale=1 / 255, offset=0.0, backbone=_position_sensitive)


def test_phone_photos_are_turned_upright_before_their_features_are_computed(tmp_path):
    photo = image_cases.asymmetric_photo()
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [folder / "upright.jpg"] + [folder / f"turned{o}.jpg" for o in (3, 6, 8)]
    paths[0].write_bytes(image_cases.jpeg(photo))
    for path, orientation in zip(paths[1:], (3, 6, 8)):
        path.write_bytes(image_cases.jpeg(photo, orientation))
    frame = pd.DataFrame({"image_path": [str(p) for p in paths], "label": "a"})
    result = compute_bottlenecks(frame, where(), tmp_path / "ws", weights=None, progress=False)
    features = result.features / 255  # cell averages, 0..1
    for row in (1, 2, 3):
        assert np.abs(features[row] - features[0]).max() < 0.02, f"{paths[row].name} is not scored upright"
    stored = bottleneck.decode_image(bottleneck.tf.io.read_file(str(paths[2])), (32, 32))  # as stored, on its side
    as_stored = np.asarray(_position_sensitive((32, 32, 3), None)(stored[None]))[0] / 255
    assert np.abs(as_stored - features[0]).max() > 0.2  # the control: without the rule the features differ


def test_a_cache_made_before_the_orientation_rule_is_recomputed(images, tmp_path, capsys):
    compute_bottlenecks(images, tiny(), tmp_path / "ws", weights=None, progress=False)
    manifest_path = tmp_path / "ws" / "bottlenecks" / "train" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["fingerprint"]["decoding"]  # what the previous version wrote
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    result = compute_bottlenecks(images, tiny(), tmp_path / "ws", reuse=True, weights=None, progress=False)
    assert not result.from_cache
    assert capsys.readouterr().out.strip() == (
        "Cache train is stale: image decoding changed (version 1 → 2: images.DECODE_VERSION, e.g. EXIF orientation "
        "now applied); recomputing.")


def test_images_that_lie_or_tensorflow_misreads_are_skipped_with_their_reason(images, tmp_path):
    folder = tmp_path / "images"
    lie, one_bit = folder / "lie.jpg", folder / "scan.bmp"
    lie.write_bytes(image_cases.lying_jpeg())  # a valid 1000x30000 header over 2.6 kB: TensorFlow would fill grey
    one_bit.write_bytes(image_cases.bmp("1"))
    frame = pd.concat([images, pd.DataFrame({"image_path": [str(lie), str(one_bit)], "label": "a"})],
                      ignore_index=True)
    with pytest.warns(SkippedImagesWarning, match=r"Skipped 2 of 8 images .*lie\.jpg: the bytes are not a decodable "
                                                  r"JPEG/PNG/GIF/BMP/WebP image \(truncated or corrupt: the header "
                                                  r"declares 1000x30000 pixels"):
        result = compute_bottlenecks(frame, tiny(), tmp_path / "ws", weights=None, progress=False)
    assert len(result) == 6
    reasons = dict(zip(result.skipped["path"], result.skipped["reason"]))
    assert reasons[str(one_bit)].startswith("the bytes are a 1-bit BMP (black and white), which TensorFlow's decoder "
                                            "(and so the model) cannot read right")
    assert "truncated" not in reasons[str(one_bit)]
