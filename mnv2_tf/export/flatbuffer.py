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


class Table:
    """One table of a flatbuffer, its fields read by the schema's field ids: the one
    flatbuffer reader (the model's tables here, the metadata's in metadata.py). Read
    errors of a truncated buffer surface as struct.error / IndexError (see `_invalid`)."""

    def __init__(self, buf, pos: int):
        self.buf, self.pos = buf, pos

    @classmethod
    def root(cls, buf) -> Table:
        return cls(buf, _u32(buf, 0))

    def slots(self) -> int:
        """How many fields the table's vtable has room for."""
        vtable = self.pos - struct.unpack_from("<i", self.buf, self.pos)[0]
        return (struct.unpack_from("<H", self.buf, vtable)[0] - 4) // 2

    def field(self, field: int) -> int | None:
        """The absolute position of a field, or None when it is absent."""
        vtable = self.pos - struct.unpack_from("<i", self.buf, self.pos)[0]
        slot = 4 + 2 * field
        if slot >= struct.unpack_from("<H", self.buf, vtable)[0]:
            return None
        offset = struct.unpack_from("<H", self.buf, vtable + slot)[0]
        return self.pos + offset if offset else None

    def scalar(self, field: int, fmt: str, default=0):
        at = self.field(field)
        return struct.unpack_from("<" + fmt, self.buf, at)[0] if at is not None else default

    def u8(self, field: int, default: int = 0) -> int:
        return self.scalar(field, "B", default)

    def i32(self, field: int, default: int = 0) -> int:
        return self.scalar(field, "i", default)

    def u32(self, field: int, default: int = 0) -> int:
        return self.scalar(field, "I", default)

    def target(self, field: int) -> int | None:
        """Where the object an offset field refers to starts (None when absent)."""
        at = self.field(field)
        return None if at is None else at + _u32(self.buf, at)

    def vector(self, field: int) -> tuple[int, int]:
        """(position of the first element, length) of a vector field; (0, 0) if absent."""
        start = self.target(field)
        return (0, 0) if start is None else (start + 4, _u32(self.buf, start))

    def table(self, field: int) -> Table | None:
        start = self.target(field)
        return None if start is None else Table(self.buf, start)

    def tables(self, field: int) -> list[Table]:
        first, count = self.vector(field)
        return [
            Table(self.buf, first + 4 * i + _u32(self.buf, first + 4 * i)) for i in range(count)
        ]

    def numbers(self, field: int, fmt: str) -> list:
        first, count = self.vector(field)
        return list(struct.unpack_from(f"<{count}{fmt}", self.buf, first)) if count else []

    def raw(self, field: int) -> bytes:
        first, count = self.vector(field)
        return bytes(self.buf[first : first + count])

    def string(self, field: int) -> str:
        return self.raw(field).decode("utf-8", "replace")


def _invalid(e: Exception) -> UserError:
    return UserError(f"not a valid TFLite flatbuffer ({e}); is the file complete?")


def _subgraph(buf, subgraph: int) -> Table:
    tables = Table.root(buf).tables(MODEL_SUBGRAPHS)
    if subgraph >= len(tables):
        raise UserError(f"the model has {len(tables)} subgraph(s), not {subgraph + 1}")
    return tables[subgraph]


def output_positions(content: bytes, subgraph: int = 0) -> tuple[int, list[int]]:
    """(byte position of the subgraph's output list, the tensor indices it holds)."""
    buf = memoryview(content)
    try:
        table = _subgraph(buf, subgraph)
        return table.vector(SUBGRAPH_OUTPUTS)[0], table.numbers(SUBGRAPH_OUTPUTS, "i")
    except (struct.error, TypeError, IndexError) as e:
        raise _invalid(e) from e


def io_counts(content: bytes, subgraph: int = 0) -> tuple[int, int]:
    """(inputs, outputs) of a subgraph."""
    buf = memoryview(content)
    try:
        table = _subgraph(buf, subgraph)
        return table.vector(SUBGRAPH_INPUTS)[1], table.vector(SUBGRAPH_OUTPUTS)[1]
    except (struct.error, TypeError, IndexError) as e:
        raise _invalid(e) from e


def metadata(content: bytes) -> dict[str, bytes]:
    """The model's metadata buffers by name (Model.metadata: "min_runtime_version",
    "TFLITE_METADATA", ...)."""
    buf = memoryview(content)
    try:
        root = Table.root(buf)
        buffers = root.tables(MODEL_BUFFERS)
        return {
            entry.string(METADATA_NAME): buffers[entry.u32(METADATA_BUFFER)].raw(BUFFER_DATA)
            for entry in root.tables(MODEL_METADATA)
        }
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
        root = Table.root(buf)
        buffers = root.tables(MODEL_BUFFERS)
        for table in buffers:
            if table.scalar(BUFFER_OFFSET, "Q") > 1:
                raise UserError(
                    "the model keeps its weights outside the flatbuffer (a >2 GB model); "
                    "metadata cannot be added to it"
                )
        entries = [e for e in root.tables(MODEL_METADATA) if e.string(METADATA_NAME) != name]
        slots = root.slots()
        if slots > MODEL_FIELDS:
            raise UserError(
                f"the model's schema has {slots} Model fields, this code knows {MODEL_FIELDS}"
            )
        fields = {f: root.field(f) for f in range(slots)}
    except (struct.error, TypeError, ValueError, IndexError) as e:
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

    buffers_vector = vector([ref(t.pos) for t in buffers] + [new_buffer])
    metadata_vector = vector([ref(t.pos) for t in entries] + [new_entry])
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
