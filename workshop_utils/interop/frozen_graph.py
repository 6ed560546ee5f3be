"""Frozen TensorFlow graphs (``.pb`` GraphDef, as ML.NET and Custom Vision use): write one, list its inputs and
outputs (:func:`inspect_graph`, what people open Netron for), score images with it (:class:`FrozenGraphScorer`)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from workshop_utils.core.errors import InteropError
from workshop_utils.core.formats import DEFAULT_MAX_PIXELS, check_image_bytes, undecodable
from workshop_utils.core.images import decode_image
from workshop_utils.core.labels import load_labels
from workshop_utils.core.runtime import import_tensorflow
from workshop_utils.core.scorer import ImageScorer

tf = import_tensorflow()
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2  # noqa: E402


# Ops that never carry a model's result, even when nothing consumes them.
_NOT_OUTPUTS = {"NoOp", "Const", "Assert", "Placeholder", "PlaceholderWithDefault", "SaveV2", "RestoreV2",
                "VarHandleOp", "VariableV2", "Print", "PrintV2", "ControlTrigger"}


def load_graph_def(pb_path: str | Path) -> "tf.compat.v1.GraphDef":
    """Parse a frozen GraphDef file; a clear error when it is missing or is another kind of .pb."""
    path = Path(pb_path).expanduser()
    if not path.is_file():
        raise InteropError(f"Frozen graph {str(path)!r} does not exist; pass the path of a .pb GraphDef file.")
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError; its module path differs between protobuf builds
        raise InteropError(
            f"{str(path)!r} is not a frozen TensorFlow GraphDef ({exc}). A SavedModel folder's saved_model.pb is a "
            "different format: load that folder with tf.saved_model.load instead.") from exc
    if not graph_def.node:
        raise InteropError(f"{str(path)!r} parsed as a GraphDef with no nodes; it is not a frozen model.")
    return graph_def


def freeze_concrete_function(concrete_fn: Any) -> tuple["tf.compat.v1.GraphDef", list[str]]:
    """Bake a concrete function's variables into constants; returns (GraphDef, output tensor names). Its wrapper
    Identity ops are dropped, so tensors named inside it (``tf.identity(x, name="scores")``) are the leaves."""
    frozen = convert_variables_to_constants_v2(concrete_fn)
    graph_def = frozen.graph.as_graph_def()
    wrappers = {t.op.name: t.op for t in frozen.outputs}
    consumed = {node_name(i) for n in graph_def.node for i in n.input}
    outputs: list[str] = []
    drop: set[str] = set()
    for t in frozen.outputs:
        op = wrappers[t.op.name]
        data_inputs = [i for i in op.node_def.input if not i.startswith("^")]
        if op.type == "Identity" and len(data_inputs) == 1 and op.name not in consumed:
            drop.add(op.name)
            outputs.append(data_inputs[0] if ":" in data_inputs[0] else f"{data_inputs[0]}:0")
        else:
            outputs.append(t.name)
    inputs = {t.op.name for t in frozen.inputs}
    consumed = {node_name(i) for n in graph_def.node if n.name not in drop for i in n.input}
    # lowering control flow (tf.map_fn) leaves dangling "unused_control_flow_input" placeholders: drop them
    drop |= {n.name for n in graph_def.node if n.op == "Placeholder" and n.name not in consumed | inputs}
    kept = [n for n in graph_def.node if n.name not in drop]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    return graph_def, outputs


def node_name(input_name: str) -> str:
    """The node a GraphDef input refers to ("^ctrl" or "node:1" -> the node's name)."""
    return input_name.lstrip("^").split(":", 1)[0]


def _shape(shape: Any) -> tuple | None:
    return None if shape.rank is None else tuple(shape.as_list())  # None: unknown rank


def inspect_graph(pb_path: str | Path) -> pd.DataFrame:
    """List a frozen graph's placeholders (inputs) and likely outputs (ops nothing consumes) with dtype and shape."""
    graph_def = load_graph_def(pb_path)
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
    except Exception as exc:
        raise InteropError(f"Could not load {str(pb_path)!r} into TensorFlow {tf.__version__}: {exc}. It may use "
                           "ops this TensorFlow does not have.") from exc
    consumed = {node_name(i) for n in graph_def.node for i in n.input}
    rows = []
    for op in graph.get_operations():
        if op.type in ("Placeholder", "PlaceholderWithDefault"):
            role = "input" if op.type == "Placeholder" else "input (has default)"
            if op.name not in consumed:
                role += " (unused)"
        elif op.name not in consumed and op.type not in _NOT_OUTPUTS and op.outputs:
            role = "output"
        elif op.type in ("Softmax", "Sigmoid"):
            role = "possible output"  # probabilities that something else also reads
        else:
            continue
        for t in op.outputs:
            rows.append({"role": role, "name": t.name, "op": op.type, "dtype": t.dtype.name, "shape": _shape(t.shape)})
    table = pd.DataFrame(rows, columns=["role", "name", "op", "dtype", "shape"])
    order = {"input": 0, "input (has default)": 1, "output": 2, "possible output": 3}
    return table.sort_values("role", key=lambda s: s.map(order).fillna(4), kind="stable").reset_index(drop=True)


class FrozenGraphScorer(ImageScorer):
    """Score images with any frozen TF graph by tensor names (e.g. Custom Vision: ``Placeholder`` → ``loss``).
    A float/uint8 image input gets: decode → bilinear resize to ``image_size`` (default: the placeholder's H×W)
    → ``channel_order`` (RGB or BGR) → ``(pixel − mean) * scale`` (one number or three, in the model's channel
    order). A string input (like our ``image_bytes:0``) gets the encoded bytes. The output must be probabilities
    (N×C); ``softmax=True`` if it gives logits."""

    def __init__(self, pb_path: str | Path, input_tensor: str, output_tensor: str, image_size: tuple[int, int] | None,
                 labels: str | Path | Iterable[str] | None, mean: float | Sequence[float] = 0.0,
                 scale: float | Sequence[float] = 1.0, channel_order: str = "RGB", *, softmax: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.pb_path = Path(pb_path).expanduser()
        graph_def = load_graph_def(self.pb_path)
        self.channel_order = str(channel_order).upper()
        if self.channel_order not in ("RGB", "BGR"):
            raise InteropError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}.")
        self.mean, self.scale = self._per_channel(mean, "mean"), self._per_channel(scale, "scale")
        self.softmax, self.max_pixels = bool(softmax), max_pixels
        wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
        self.input_name, self.output_name = (n if ":" in n else f"{n}:0" for n in (input_tensor, output_tensor))
        inp = self._lookup(wrapped.graph, self.input_name, "input")
        out = self._lookup(wrapped.graph, self.output_name, "output")
        self.input_dtype, self.input_shape, self.string_input = inp.dtype, _shape(inp.shape), inp.dtype == tf.string
        self._fn = wrapped.prune(feeds=[inp], fetches=[out])
        if not self.string_input and not (inp.dtype.is_floating or inp.dtype == tf.uint8):
            raise InteropError(f"Input {self.input_name} has dtype {inp.dtype.name}; the scorer feeds float/uint8 "
                               "pixels or string bytes.")
        if not self.string_input and (self.input_shape is None or len(self.input_shape) != 4):
            raise InteropError(f"Input {self.input_name} has shape {self.input_shape}; expected an NHWC image batch "
                               "[N, H, W, C].")
        self.image_size = self._resolve_size(image_size)
        self.batch_limit = 1 if (self.input_shape and self.input_shape[0] == 1) or self.input_shape == () else None
        self.labels = load_labels(labels) if labels is not None else None

    def _lookup(self, graph: Any, name: str, role: str) -> Any:
        try:
            return graph.get_tensor_by_name(name)
        except (KeyError, ValueError) as exc:
            listing = inspect_graph(self.pb_path).to_string(index=False)
            raise InteropError(f"The {role} tensor {name!r} is not in {str(self.pb_path)!r}. Its inputs and likely "
                               f"outputs:\n{listing}") from exc

    @staticmethod
    def _per_channel(value: float | Sequence[float], what: str) -> np.ndarray:
        arr = np.asarray(value, dtype=np.float32).reshape(-1)
        if arr.size not in (1, 3):
            raise InteropError(f"{what} must be one number or three (one per channel), got {value!r}.")
        return arr

    def _resolve_size(self, image_size: tuple[int, int] | None) -> tuple[int, int] | None:
        if self.string_input:
            return None if image_size is None else (int(image_size[0]), int(image_size[1]))
        graph_hw = self.input_shape[1:3]
        if image_size is None:
            if None in graph_hw:
                raise InteropError(f"Input {self.input_name} has no fixed height/width {self.input_shape}; pass "
                                   "image_size=(h, w).")
            return int(graph_hw[0]), int(graph_hw[1])
        size = (int(image_size[0]), int(image_size[1]))
        if None not in graph_hw and tuple(graph_hw) != size:
            raise InteropError(f"image_size {size} does not match input {self.input_name} of shape "
                               f"{self.input_shape}; use image_size={tuple(graph_hw)}.")
        return size

    def preprocess(self, data: bytes, name: str | Path | None = None) -> np.ndarray:
        """Bytes → the float32 (H, W, 3) array fed to the graph (after resize, channel order, mean, scale)."""
        info = check_image_bytes(data, name=name, max_pixels=self.max_pixels, complete=True)
        try:
            pixels = decode_image(tf.constant(bytes(data)), self.image_size, info.orientation)
        except tf.errors.InvalidArgumentError as exc:
            raise undecodable(name, exc) from exc
        if self.channel_order == "BGR":
            pixels = pixels[..., ::-1]
        return ((pixels.numpy() - self.mean) * self.scale).astype(np.float32)

    def predict_proba(self, images: Sequence[bytes], names: Sequence[str | Path | None] | None = None) -> np.ndarray:
        """Score a list of encoded images; returns an (N, C) array of the output tensor's values."""
        names = list(names) if names is not None else [None] * len(images)
        # a graph with a fixed batch of 1 (or a scalar string input) is fed one image at a time
        groups = [list(range(len(images)))] if self.batch_limit is None else [[i] for i in range(len(images))]
        if self.string_input:
            for data, name in zip(images, names):
                check_image_bytes(data, name=name, max_pixels=self.max_pixels, complete=True)
            feeds = [tf.constant([bytes(images[i]) for i in g] if self.input_shape != () else bytes(images[g[0]]))
                     for g in groups]
        else:
            arrays = [self.preprocess(b, n) for b, n in zip(images, names)]
            feeds = [tf.cast(tf.constant(np.stack([arrays[i] for i in g])), self.input_dtype) for g in groups]
        outs = []
        for group, feed in zip(groups, feeds):
            try:
                result = self._fn(feed)
            except tf.errors.InvalidArgumentError as exc:
                if self.string_input:  # the graph decodes the bytes itself: a bad image fails in here
                    raise undecodable(names[group[0]] if len(group) == 1 else None, exc, len(group)) from exc
                raise
            result = result[0] if isinstance(result, (list, tuple)) else result
            rows = int(feed.shape[0]) if feed.shape.rank else 1
            outs.append(np.asarray(result, dtype=np.float64).reshape(rows, -1))
        scores = np.concatenate(outs, axis=0)
        return special.softmax(scores, axis=1) if self.softmax else scores

    def __repr__(self) -> str:
        return (f"FrozenGraphScorer({str(self.pb_path)!r}, {self.input_name!r} → {self.output_name!r}, "
                f"image_size={self.image_size}, {self.channel_order}, mean={self.mean.tolist()}, "
                f"scale={self.scale.tolist()})")
