"""Small, exact edits of a `.tflite` flatbuffer (the schema's `Model` -> `SubGraph` tables).

`with_metadata_buffer` adds a named metadata buffer (see metadata.py) without touching
the model's own bytes.

The TFLite converter does not keep the order of a function's outputs in the subgraph's
output list (TF 2.21: a dict of four outputs came out 3, 0, 1, 2; a tuple 1, 3, 0, 2), and
apps that read outputs by position (MediaPipe's ObjectDetector, the TFLite Task Library:
location, category, score, number of detections) need one. `order_outputs` rewrites the
list in place: the same tensor indices in another order, the same length, so nothing else
in the file moves; the signature (outputs by name) is untouched.
"""

from __future__ import annotations

import struct

import flatbuffers

from mnv2_tf.errors import UserError

# Field numbers in tensorflow/compiler/mlir/lite/schema/schema.fbs.
MODEL_VERSION = 0  # the Model's one scalar field; the others (1-7) are offsets
MODEL_SUBGRAPHS = 2
MODEL_BUFFERS = 4
MODEL_METADATA = 6
MODEL_FIELDS = 8
SUBGRAPH_INPUTS = 1
SUBGRAPH_OUTPUTS = 2
BUFFER_DATA = 0
BUFFER_OFFSET = 1
METADATA_NAME = 0
METADATA_BUFFER = 1
TFLITE_IDENTIFIER = b"TFL3"
ALIGNMENT = 16  # Buffer.data is force_align: 16


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


def _tables(buf, at: int | None) -> list[int]:
    """Positions of the tables a vector of offsets (referenced at `at`) points to."""
    if at is None:
        return []
    first, count = _vector(buf, at)
    return [first + 4 * i + _u32(buf, first + 4 * i) for i in range(count)]


def _invalid(e: Exception) -> UserError:
    return UserError(f"not a valid TFLite flatbuffer ({e}); is the file complete?")


def _subgraph(buf, subgraph: int) -> int:
    tables = _tables(buf, _field(buf, _u32(buf, 0), MODEL_SUBGRAPHS))
    if subgraph >= len(tables):
        raise UserError(f"the model has {len(tables)} subgraph(s), not {subgraph + 1}")
    return tables[subgraph]


def output_positions(content: bytes, subgraph: int = 0) -> tuple[int, list[int]]:
    """(byte position of the subgraph's output list, the tensor indices it holds)."""
    buf = memoryview(content)
    try:
        outputs = _field(buf, _subgraph(buf, subgraph), SUBGRAPH_OUTPUTS)
        start, length = _vector(buf, outputs)
        return start, list(struct.unpack_from(f"<{length}i", buf, start))
    except (struct.error, TypeError) as e:
        raise _invalid(e) from e


def io_counts(content: bytes, subgraph: int = 0) -> tuple[int, int]:
    """(inputs, outputs) of a subgraph."""
    buf = memoryview(content)
    try:
        table = _subgraph(buf, subgraph)
        return tuple(
            _vector(buf, _field(buf, table, f))[1] for f in (SUBGRAPH_INPUTS, SUBGRAPH_OUTPUTS)
        )
    except (struct.error, TypeError) as e:
        raise _invalid(e) from e


def _string(buf, at: int | None) -> str:
    if at is None:
        return ""
    start, length = _vector(buf, at)
    return bytes(buf[start : start + length]).decode("utf-8", "replace")


def metadata(content: bytes) -> dict[str, bytes]:
    """The model's metadata buffers by name (Model.metadata: "min_runtime_version",
    "TFLITE_METADATA", ...)."""
    buf = memoryview(content)
    try:
        root = _u32(buf, 0)
        buffers = _tables(buf, _field(buf, root, MODEL_BUFFERS))
        out = {}
        for entry in _tables(buf, _field(buf, root, MODEL_METADATA)):
            name = _string(buf, _field(buf, entry, METADATA_NAME))
            index_at = _field(buf, entry, METADATA_BUFFER)
            data_at = _field(buf, buffers[_u32(buf, index_at) if index_at else 0], BUFFER_DATA)
            if data_at is None:
                out[name] = b""
                continue
            start, length = _vector(buf, data_at)
            out[name] = bytes(buf[start : start + length])
        return out
    except (struct.error, TypeError, IndexError) as e:
        raise _invalid(e) from e


def with_metadata_buffer(content: bytes, name: str, data: bytes) -> bytes:
    """`content` with a buffer holding `data` listed in Model.metadata as `name` (an entry
    of that name already there is dropped; its buffer stays, unused).

    The old flatbuffer stays byte for byte at the end of the new one, padded to 16 bytes;
    in front of it go the new Buffer, the buffers and metadata vectors (the old tables plus
    the new ones) and a new root Model that refers to every other field of the old one.
    Offsets in a flatbuffer point forward (vtables excepted, which are relative), so the
    old objects need no change, and the new total being a multiple of 16 keeps their
    alignment.
    """
    buf = memoryview(content)
    try:
        if bytes(buf[4:8]) != TFLITE_IDENTIFIER:
            raise ValueError("no TFL3 identifier")
        root = _u32(buf, 0)
        buffers = _tables(buf, _field(buf, root, MODEL_BUFFERS))
        for table in buffers:
            at = _field(buf, table, BUFFER_OFFSET)
            if at is not None and struct.unpack_from("<Q", buf, at)[0] > 1:
                raise UserError(
                    "the model keeps its weights outside the flatbuffer (a >2 GB model); "
                    "metadata cannot be added to it"
                )
        entries = []
        for entry in _tables(buf, _field(buf, root, MODEL_METADATA)):
            if _string(buf, _field(buf, entry, METADATA_NAME)) != name:
                entries.append(entry)
        vtable = root - struct.unpack_from("<i", buf, root)[0]
        slots = (struct.unpack_from("<H", buf, vtable)[0] - 4) // 2
        if slots > MODEL_FIELDS:
            raise UserError(
                f"the model's schema has {slots} Model fields, this code knows {MODEL_FIELDS}"
            )
        fields = {f: _field(buf, root, f) for f in range(slots)}
    except (struct.error, TypeError, ValueError) as e:
        raise _invalid(e) from e

    old = bytes(content) + b"\0" * (-len(content) % ALIGNMENT)
    b = flatbuffers.Builder(0)
    b.Bytes = bytearray(len(old) + len(data) + 4096) + old
    b.head = len(b.Bytes) - len(old)
    b.minalign = ALIGNMENT

    def ref(position: int) -> int:  # the builder's offset of an object of the old buffer
        return len(old) - position

    b.StartVector(1, len(data), ALIGNMENT)
    b.head -= len(data)
    b.Bytes[b.head : b.head + len(data)] = data
    data_vector = b.EndVector()
    b.StartObject(3)
    b.PrependUOffsetTRelativeSlot(BUFFER_DATA, data_vector, 0)
    new_buffer = b.EndObject()
    name_offset = b.CreateString(name)
    b.StartObject(2)
    b.PrependUint32Slot(METADATA_BUFFER, len(buffers), None)
    b.PrependUOffsetTRelativeSlot(METADATA_NAME, name_offset, 0)
    new_entry = b.EndObject()

    def vector(offsets: list[int]) -> int:
        b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    buffers_vector = vector([ref(t) for t in buffers] + [new_buffer])
    metadata_vector = vector([ref(t) for t in entries] + [new_entry])
    b.StartObject(MODEL_FIELDS)
    for field, at in fields.items():
        if field in (MODEL_BUFFERS, MODEL_METADATA) or at is None:
            continue
        if field == MODEL_VERSION:
            b.PrependUint32Slot(field, _u32(buf, at), None)
        else:
            b.PrependUOffsetTRelativeSlot(field, ref(at + _u32(buf, at)), 0)
    b.PrependUOffsetTRelativeSlot(MODEL_BUFFERS, buffers_vector, 0)
    b.PrependUOffsetTRelativeSlot(MODEL_METADATA, metadata_vector, 0)
    model = b.EndObject()
    b.Finish(model, file_identifier=TFLITE_IDENTIFIER)
    return bytes(b.Output())


def order_outputs(content: bytes, tensor_order: list[int]) -> bytes:
    """`content` with subgraph 0's outputs listed in `tensor_order` (tensor indices: a
    permutation of the current list)."""
    start, current = output_positions(content)
    if sorted(current) != sorted(tensor_order):
        raise ValueError(f"{tensor_order} is not a permutation of the outputs {current}")
    out = bytearray(content)
    struct.pack_into(f"<{len(tensor_order)}i", out, start, *tensor_order)
    return bytes(out)
