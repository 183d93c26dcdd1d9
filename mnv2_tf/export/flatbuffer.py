"""Small, exact edits of a `.tflite` flatbuffer (the schema's `Model` -> `SubGraph` tables).

The TFLite converter does not keep the order of a function's outputs in the subgraph's
output list (TF 2.21: a dict of four outputs came out 3, 0, 1, 2; a tuple 1, 3, 0, 2), and
apps that read outputs by position (MediaPipe's ObjectDetector, the TFLite Task Library:
location, category, score, number of detections) need one. `order_outputs` rewrites the
list in place: the same tensor indices in another order, the same length, so nothing else
in the file moves; the signature (outputs by name) is untouched.
"""

from __future__ import annotations

import struct

from mnv2_tf.errors import UserError

# Field numbers in tensorflow/compiler/mlir/lite/schema/schema.fbs.
MODEL_SUBGRAPHS = 2
SUBGRAPH_OUTPUTS = 2


def _u32(buf, at: int) -> int:
    return struct.unpack_from("<I", buf, at)[0]


def _field(buf, table: int, field: int) -> int | None:
    """The absolute position of a table's field, or None when it is absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * field
    if slot >= vtable_size:
        return None
    offset = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + offset if offset else None


def _vector(buf, at: int) -> tuple[int, int]:
    """(position of the first element, length) of the vector referenced at `at`."""
    start = at + _u32(buf, at)
    return start + 4, _u32(buf, start)


def output_positions(content: bytes, subgraph: int = 0) -> tuple[int, list[int]]:
    """(byte position of the subgraph's output list, the tensor indices it holds)."""
    buf = memoryview(content)
    try:
        root = _u32(buf, 0)
        subgraphs = _field(buf, root, MODEL_SUBGRAPHS)
        first, count = _vector(buf, subgraphs)
        if subgraph >= count:
            raise UserError(f"the model has {count} subgraph(s), not {subgraph + 1}")
        table = first + 4 * subgraph
        table += _u32(buf, table)
        outputs = _field(buf, table, SUBGRAPH_OUTPUTS)
        start, length = _vector(buf, outputs)
        return start, list(struct.unpack_from(f"<{length}i", buf, start))
    except (struct.error, TypeError) as e:
        raise UserError(f"not a valid TFLite flatbuffer ({e}); is the file complete?") from e


def order_outputs(content: bytes, tensor_order: list[int]) -> bytes:
    """`content` with subgraph 0's outputs listed in `tensor_order` (tensor indices: a
    permutation of the current list)."""
    start, current = output_positions(content)
    if sorted(current) != sorted(tensor_order):
        raise ValueError(f"{tensor_order} is not a permutation of the outputs {current}")
    out = bytearray(content)
    struct.pack_into(f"<{len(tensor_order)}i", out, start, *tensor_order)
    return bytes(out)
