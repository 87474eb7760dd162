"""int8 weights for an exported tower, made one weight at a time (``xsearch.int8`` runs the result).

ONNX Runtime's ``quantize_dynamic`` loads a model whole and keeps copies while it writes the quantised one:
10.8 GB at the peak for ImageBind-huge's vision tower (2.5 GB of weights). The recipe here is the same
dynamic one, written directly: each ``MatMul`` whose second input is a weight becomes

    DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q, x_zero, W_zero) -> Cast -> Mul(x_scale * W_scale)

with the activations quantised per call (uint8, asymmetric) and the weights per output channel (int8,
symmetric; [-64, 64] where the CPU lacks int8 dot-product units, whose u8 x s8 kernels saturate otherwise).
On the test model it gives the same outputs as ``quantize_dynamic`` with the same settings.
Only one fp32 weight is in memory at a time; the int8 model (a quarter of the bytes) is written in one file.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np


def fold_weight_transposes(path: Path) -> int:
    """Replace each ``Transpose`` of a weight by the transposed weight, in the ONNX model at ``path``, one
    weight in memory at a time (a model over 2 GB keeps its weights in files beside it). A linear layer is
    exported as ``MatMul(x, Transpose(W))``; quantisation needs the weight itself. Returns how many."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    outputs = {output.name for output in graph.output}
    folded = 0
    for node in list(graph.node):
        if node.op_type != "Transpose" or node.input[0] not in weights or uses[node.input[0]] != 1:
            continue
        if node.output[0] in outputs:
            continue
        tensor = weights.pop(node.input[0])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        array = np.ascontiguousarray(numpy_helper.to_array(tensor, str(path.parent)).transpose(perm))
        replacement = numpy_helper.from_array(array, node.output[0])
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            replacement = _external(replacement, array, path.parent, tensor)
        graph.initializer.remove(tensor)
        graph.initializer.append(replacement)
        graph.node.remove(node)
        folded += 1
    onnx.save(model, str(path))
    return folded


def quantise_weights(source: Path, target: Path, seven_bits: bool) -> int:
    """Write to ``target`` the model at ``source`` with every weight ``MatMul`` in int8 (``seven_bits``: the
    weights in [-64, 64], as ONNX Runtime reduces them); returns how many. What stays in float (norms,
    biases, embeddings) goes inline."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    folder = str(source.parent)
    weights = {tensor.name: tensor for tensor in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    top = 64 if seven_bits else 127  # as ONNX Runtime: [-64, 64] when reduced
    nodes, quantised = [], 0
    for node in graph.node:
        name = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        tensor = weights.get(name) if name else None
        if tensor is None or uses[name] != 1 or len(tensor.dims) != 2:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(tensor, folder).astype(np.float32, copy=False)
        peak = np.abs(weight).max(axis=0)
        scale = np.where(peak > 0, peak / top, 1.0).astype(np.float32)
        codes = np.clip(np.rint(weight / scale), -top, top).astype(np.int8)
        del weight
        graph.initializer.remove(weights.pop(name))
        graph.initializer.extend(
            [
                numpy_helper.from_array(codes, f"{name}.int8"),
                numpy_helper.from_array(scale, f"{name}.scale"),
                numpy_helper.from_array(np.zeros(codes.shape[1], np.int8), f"{name}.zero"),
            ]
        )
        x, y = node.input[0], node.output[0]
        stem = f"{node.name or y}.q"
        nodes += [
            helper.make_node("DynamicQuantizeLinear", [x], [f"{stem}.x", f"{stem}.x_scale", f"{stem}.x_zero"]),
            helper.make_node(
                "MatMulInteger", [f"{stem}.x", f"{name}.int8", f"{stem}.x_zero", f"{name}.zero"], [f"{stem}.acc"]
            ),
            helper.make_node("Cast", [f"{stem}.acc"], [f"{stem}.float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{stem}.x_scale", f"{name}.scale"], [f"{stem}.scale"]),
            helper.make_node("Mul", [f"{stem}.float", f"{stem}.scale"], [y]),
        ]
        quantised += 1
    graph.ClearField("node")
    graph.node.extend(nodes)
    for tensor in graph.initializer:  # what stays in float comes inline: the int8 model is one file
        if tensor.data_location == TensorProto.EXTERNAL:
            onnx.external_data_helper.load_external_data_for_tensor(tensor, folder)
            tensor.data_location = TensorProto.DEFAULT
            tensor.ClearField("external_data")
    onnx.save(model, str(target))
    return quantised


def _external(tensor, array: np.ndarray, folder: Path, replaced):
    """``tensor`` with its data in a file of its own beside the model, in place of ``replaced``'s file."""
    import zlib

    import onnx
    from onnx.external_data_helper import set_external_data

    old = {entry.key: entry.value for entry in replaced.external_data}.get("location")
    name = f"folded-{zlib.crc32(tensor.name.encode()):08x}-{len(os.listdir(folder))}.bin"
    array.tofile(folder / name)
    set_external_data(tensor, location=name, offset=0, length=array.nbytes)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    if old and old != name and (folder / old).is_file():
        (folder / old).unlink()  # the exporter writes a file per weight: its one reader was folded away
    return tensor
