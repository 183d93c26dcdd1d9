"""TFLite model metadata: what an app's task library reads to run a model unchanged.

MediaPipe Tasks (ImageClassifier, ObjectDetector, ImageSegmenter) and the TFLite Task Library
read a model's metadata for the input's normalization, the labels and the role of each
output. The metadata is a flatbuffer of the published schema (tflite-support's
`metadata_schema.fbs`, version 1.5.0 as MediaPipe ships it; file identifier "M001"), stored in
one of the model's buffers and named by an entry "TFLITE_METADATA" of `Model.metadata`; the
files it names (labels) are packed after the flatbuffer as an uncompressed zip archive, which
LiteRT ignores and the task libraries open.

Written here with the `flatbuffers` runtime (already in our stack) from the schema's field
ids, not with a writer package: tflite-support's writers no longer install next to TF 2.21
and MediaPipe's fail on import in its current wheel (`No module named
'mediapipe.tasks.cc'`); MediaPipe itself cannot share our venv (absl-py pins). The model
flatbuffer is edited with TensorFlow's own generated schema (`schema_py_generated`, the
object API), which keeps every other field as it was. `read` parses what `write` wrote,
with the same field ids, and is what the tests and the evaluation read back.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile

import flatbuffers
import numpy as np

from mnv2_tf.app_io import Tensor
from mnv2_tf.errors import UserError
from mnv2_tf.export import flatbuffer

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
# The schema version a parser needs: 1.5.0 added SubGraphMetadata.custom_metadata.
PARSER_VERSION = "1.0.0"
PARSER_VERSION_CUSTOM = "1.5.0"

# Enums (metadata_schema.fbs).
COLOR_SPACES = {"RGB": 1, "GRAYSCALE": 2}
FILE_TYPES = {"TENSOR_AXIS_LABELS": 2, "TENSOR_VALUE_LABELS": 3}
BOX_TYPES = {"BOUNDARIES": 1, "UPPER_LEFT": 2, "CENTER": 3}
COORDINATES = {"RATIO": 0, "PIXEL": 1}
# Union tags: ContentProperties and ProcessUnitOptions.
CONTENT = {"feature": 1, "image": 2, "bounding_box": 3}
NORMALIZATION_OPTIONS = 1
# MediaPipe's segmenter metadata (image_segmenter_metadata_schema.fbs, "V001").
SEGMENTER_METADATA = "SEGMENTER_METADATA"
SEGMENTER_IDENTIFIER = b"V001"
ACTIVATIONS = {"NONE": 0, "SIGMOID": 1, "SOFTMAX": 2}

# Field slots (declaration order in the schema; a union takes two: its type, then its value).
ASSOCIATED_FILE = {"name": 0, "description": 1, "type": 2}
IMAGE_SIZE = {"width": 0, "height": 1}
IMAGE_PROPERTIES = {"color_space": 0, "default_size": 1}
BOX_PROPERTIES = {"index": 0, "type": 1, "coordinate_type": 2}
VALUE_RANGE = {"min": 0, "max": 1}
CONTENT_TABLE = {"properties_type": 0, "properties": 1, "range": 2}
NORMALIZATION = {"mean": 0, "std": 1}
PROCESS_UNIT = {"options_type": 0, "options": 1}
STATS = {"max": 0, "min": 1}
TENSOR = {"name": 0, "description": 1, "content": 3, "process_units": 4, "stats": 5, "files": 6}
CUSTOM = {"name": 0, "data": 1}
SUBGRAPH = {"name": 0, "description": 1, "inputs": 2, "outputs": 3, "custom": 9}
MODEL = {
    "name": 0,
    "description": 1,
    "version": 2,
    "subgraphs": 3,
    "author": 4,
    "license": 5,
    "min_parser_version": 7,
}
SEGMENTER_OPTIONS = {"activation": 0, "min_parser_version": 1}


@dataclasses.dataclass
class Model:
    name: str
    description: str
    version: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    author: str = ""
    license: str = ""
    custom: dict[str, bytes] = dataclasses.field(default_factory=dict)
    min_parser_version: str = ""  # read back; `build` sets it from the fields it writes


# --- writing ---------------------------------------------------------------------------


def _table(b: flatbuffers.Builder, n: int, slots) -> int:
    """A table from (kind, slot, value) triples: "off" for offsets, "u8"/"u32" scalars."""
    b.StartObject(n)
    for kind, slot, value in slots:
        if value is None:
            continue
        if kind == "off":
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "u8":
            b.PrependUint8Slot(slot, value, None)  # no default: always written
        elif kind == "u32":
            b.PrependUint32Slot(slot, value, None)
    return b.EndObject()


def _offsets(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _file(b, name: str, kind: str) -> int:
    name_off = b.CreateString(name)
    return _table(
        b, 5, [("off", ASSOCIATED_FILE["name"], name_off),
               ("u8", ASSOCIATED_FILE["type"], FILE_TYPES[kind])],
    )  # fmt: skip


def _tensor(b: flatbuffers.Builder, t: Tensor) -> int:
    name = b.CreateString(t.name)
    description = b.CreateString(t.description) if t.description else None
    if t.content == "image":
        size = None
        if t.image_size:
            size = _table(b, 2, [("u32", IMAGE_SIZE["width"], t.image_size[0]),
                                 ("u32", IMAGE_SIZE["height"], t.image_size[1])])  # fmt: skip
        properties = _table(
            b, 2, [("u8", IMAGE_PROPERTIES["color_space"], COLOR_SPACES[t.color_space]),
                   ("off", IMAGE_PROPERTIES["default_size"], size)],
        )  # fmt: skip
    elif t.content == "bounding_box":
        index = b.CreateNumpyVector(np.asarray(t.box_index, np.uint32)) if t.box_index else None
        properties = _table(
            b, 3, [("off", BOX_PROPERTIES["index"], index),
                   ("u8", BOX_PROPERTIES["type"], BOX_TYPES[t.box_type]),
                   ("u8", BOX_PROPERTIES["coordinate_type"], COORDINATES[t.box_coordinates])],
        )  # fmt: skip
    elif t.content == "feature":
        properties = _table(b, 0, [])
    else:
        raise ValueError(f"unknown content {t.content!r}")
    value_range = None
    if t.value_range:
        b.StartObject(2)
        b.PrependInt32Slot(VALUE_RANGE["min"], t.value_range[0], None)
        b.PrependInt32Slot(VALUE_RANGE["max"], t.value_range[1], None)
        value_range = b.EndObject()
    content = _table(
        b, 3, [("u8", CONTENT_TABLE["properties_type"], CONTENT[t.content]),
               ("off", CONTENT_TABLE["properties"], properties),
               ("off", CONTENT_TABLE["range"], value_range)],
    )  # fmt: skip
    units = None
    if t.normalization:
        mean = b.CreateNumpyVector(np.asarray(t.normalization[0], np.float32))
        std = b.CreateNumpyVector(np.asarray(t.normalization[1], np.float32))
        options = _table(b, 2, [("off", NORMALIZATION["mean"], mean),
                                ("off", NORMALIZATION["std"], std)])  # fmt: skip
        unit = _table(b, 2, [("u8", PROCESS_UNIT["options_type"], NORMALIZATION_OPTIONS),
                             ("off", PROCESS_UNIT["options"], options)])  # fmt: skip
        units = _offsets(b, [unit])
    stats = None
    if t.stats:
        low = b.CreateNumpyVector(np.asarray(t.stats[0], np.float32))
        high = b.CreateNumpyVector(np.asarray(t.stats[1], np.float32))
        stats = _table(b, 2, [("off", STATS["max"], high), ("off", STATS["min"], low)])
    files = _offsets(b, [_file(b, *t.labels)]) if t.labels else None
    return _table(
        b, 7, [("off", TENSOR["name"], name), ("off", TENSOR["description"], description),
               ("off", TENSOR["content"], content), ("off", TENSOR["process_units"], units),
               ("off", TENSOR["stats"], stats), ("off", TENSOR["files"], files)],
    )  # fmt: skip


def build(model: Model) -> bytes:
    """The ModelMetadata flatbuffer of `model` (file identifier "M001")."""
    b = flatbuffers.Builder(1024)
    inputs = _offsets(b, [_tensor(b, t) for t in model.inputs])
    outputs = _offsets(b, [_tensor(b, t) for t in model.outputs])
    custom = None
    if model.custom:
        entries = []
        for name, data in model.custom.items():
            name_off = b.CreateString(name)
            b.StartVector(1, len(data), 16)  # data:[ubyte] (force_align: 16)
            b.head = b.head - len(data)
            b.Bytes[b.head : b.head + len(data)] = data
            data_off = b.EndVector()
            entries.append(_table(b, 2, [("off", CUSTOM["name"], name_off),
                                         ("off", CUSTOM["data"], data_off)]))  # fmt: skip
        custom = _offsets(b, entries)
    subgraph = _table(
        b, 10, [("off", SUBGRAPH["inputs"], inputs), ("off", SUBGRAPH["outputs"], outputs),
                ("off", SUBGRAPH["custom"], custom)],
    )  # fmt: skip
    subgraphs = _offsets(b, [subgraph])
    strings = {
        k: b.CreateString(v)
        for k, v in {
            "name": model.name,
            "description": model.description,
            "version": model.version,
            "author": model.author,
            "license": model.license,
            "min_parser_version": PARSER_VERSION_CUSTOM if model.custom else PARSER_VERSION,
        }.items()
        if v
    }
    root = _table(
        b, 8, [("off", MODEL["subgraphs"], subgraphs)]
        + [("off", MODEL[k], off) for k, off in strings.items()],
    )  # fmt: skip
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def segmenter_options(activation: str = "NONE") -> bytes:
    """MediaPipe's ImageSegmenterOptions flatbuffer ("V001"): the output's activation."""
    b = flatbuffers.Builder(64)
    version = b.CreateString("1.0.0")
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(SEGMENTER_OPTIONS["min_parser_version"], version, 0)
    b.PrependInt8Slot(SEGMENTER_OPTIONS["activation"], ACTIVATIONS[activation], -1)
    root = b.EndObject()
    b.Finish(root, file_identifier=SEGMENTER_IDENTIFIER)
    return bytes(b.Output())


def write(content: bytes, model: Model, files: dict[str, bytes]) -> bytes:
    """`content` (a .tflite flatbuffer, with or without metadata) with `model`'s metadata
    and `files` (name -> bytes) packed in. Every labels file a tensor names must be given.

    The model's own bytes are kept as they are: the new tables (a Model root that shares
    every field of the old one but `buffers` and `metadata`, a Buffer holding the metadata,
    a Metadata entry) go in front of the old flatbuffer, whose objects all keep their
    positions relative to its end, and so their 16-byte alignment.
    """
    named = {t.labels[0] for t in (*model.inputs, *model.outputs) if t.labels}
    missing = named - set(files)
    if missing:
        raise ValueError(f"metadata names files that are not given: {sorted(missing)}")
    flat = strip(content)
    counts = flatbuffer.io_counts(flat)
    if (len(model.inputs), len(model.outputs)) != counts:
        raise ValueError(
            f"metadata for {len(model.inputs)} inputs / {len(model.outputs)} outputs, the model "
            f"has {counts[0]} / {counts[1]}"
        )
    out = io.BytesIO()
    out.write(flatbuffer.with_metadata_buffer(flat, METADATA_NAME, build(model)))
    if files:
        with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
            for name, data in files.items():
                archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


# --- reading ---------------------------------------------------------------------------


def _flatbuffer_size(content: bytes) -> int:
    """Where the flatbuffer ends and a packed zip begins (the whole file without one)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile:
        return len(content)
    return min(i.header_offset for i in infos) if infos else len(content)


def strip(content: bytes) -> bytes:
    """The model flatbuffer without the packed files."""
    return content[: _flatbuffer_size(content)]


def packed_files(content: bytes) -> dict[str, bytes]:
    """The files packed after the flatbuffer (name -> bytes)."""
    if _flatbuffer_size(content) == len(content):
        return {}
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _read_tensor(r: flatbuffer.Table) -> Tensor:
    t = Tensor(name=r.string(TENSOR["name"]), description=r.string(TENSOR["description"]))
    content = r.table(TENSOR["content"])
    if content:
        kind = content.u8(CONTENT_TABLE["properties_type"])
        t.content = {v: k for k, v in CONTENT.items()}.get(kind, f"unknown({kind})")
        p = content.table(CONTENT_TABLE["properties"])
        if t.content == "image" and p:
            t.color_space = {v: k for k, v in COLOR_SPACES.items()}.get(
                p.u8(IMAGE_PROPERTIES["color_space"]), "UNKNOWN"
            )
            size = p.table(IMAGE_PROPERTIES["default_size"])
            if size:
                t.image_size = (size.u32(IMAGE_SIZE["width"]), size.u32(IMAGE_SIZE["height"]))
        elif t.content == "bounding_box" and p:
            t.box_index = tuple(p.numbers(BOX_PROPERTIES["index"], "I"))
            t.box_type = {v: k for k, v in BOX_TYPES.items()}.get(
                p.u8(BOX_PROPERTIES["type"]), "UNKNOWN"
            )
            t.box_coordinates = {v: k for k, v in COORDINATES.items()}[
                p.u8(BOX_PROPERTIES["coordinate_type"])
            ]
        value_range = content.table(CONTENT_TABLE["range"])
        if value_range:
            t.value_range = (
                value_range.i32(VALUE_RANGE["min"]),
                value_range.i32(VALUE_RANGE["max"]),
            )
    for unit in r.tables(TENSOR["process_units"]):
        if unit.u8(PROCESS_UNIT["options_type"]) == NORMALIZATION_OPTIONS:
            o = unit.table(PROCESS_UNIT["options"])
            t.normalization = (
                o.numbers(NORMALIZATION["mean"], "f"),
                o.numbers(NORMALIZATION["std"], "f"),
            )
    stats = r.table(TENSOR["stats"])
    if stats:
        t.stats = (stats.numbers(STATS["min"], "f"),
                   stats.numbers(STATS["max"], "f"))  # fmt: skip
    files = r.tables(TENSOR["files"])
    if files:
        kind = files[0].u8(ASSOCIATED_FILE["type"])
        t.labels = (
            files[0].string(ASSOCIATED_FILE["name"]),
            {v: k for k, v in FILE_TYPES.items()}.get(kind, f"unknown({kind})"),
        )
    return t


def metadata_buffer(content: bytes) -> bytes | None:
    """The raw ModelMetadata flatbuffer of a .tflite file, or None when it has none."""
    return flatbuffer.metadata(strip(content)).get(METADATA_NAME)


def read(content: bytes) -> Model | None:
    """The metadata of a .tflite file (None when it has none), as `write` takes it."""
    data = metadata_buffer(content)
    if data is None:
        return None
    buf = bytearray(data)
    if bytes(buf[4:8]) != FILE_IDENTIFIER:
        raise UserError(f"the model's metadata is not a {FILE_IDENTIFIER.decode()} flatbuffer")
    root = flatbuffer.Table.root(buf)
    subgraph = root.tables(MODEL["subgraphs"])[0]
    custom = {
        c.string(CUSTOM["name"]): c.raw(CUSTOM["data"]) for c in subgraph.tables(SUBGRAPH["custom"])
    }
    model = Model(
        name=root.string(MODEL["name"]),
        description=root.string(MODEL["description"]),
        version=root.string(MODEL["version"]),
        author=root.string(MODEL["author"]),
        license=root.string(MODEL["license"]),
        inputs=[_read_tensor(t) for t in subgraph.tables(SUBGRAPH["inputs"])],
        outputs=[_read_tensor(t) for t in subgraph.tables(SUBGRAPH["outputs"])],
        custom=custom,
    )
    model.min_parser_version = root.string(MODEL["min_parser_version"])
    return model


def read_segmenter_activation(data: bytes) -> str:
    r = flatbuffer.Table.root(data)
    value = r.u8(SEGMENTER_OPTIONS["activation"])
    return {v: k for k, v in ACTIVATIONS.items()}[value]
