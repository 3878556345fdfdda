"""ROS 2 message types through the ``rosbags`` typestore: what mcap-ros2-support cannot decode, and fast layouts.

* **Types without a usable schema**: a ``ros2msg`` schema whose text is empty (writers that rely on the
  receiver knowing standard types) is resolved from rosbags' standard ROS 2 store by its name, so an
  ``sensor_msgs/msg/Image`` keeps its pixels instead of decoding to an empty message. Service-event schemas
  that carry the raw ``.srv`` text (``request --- response``, rosbag2) are expanded into the ``_Event`` type
  (``service_msgs/msg/ServiceEventInfo info``, ``request[<=1]``, ``response[<=1]``); texts mcap-ros2-support
  rejects otherwise are parsed by rosbags.
* **Layouts computed, not probed**: for a topic whose messages have one byte layout (fixed-size fields,
  strings and sequence lengths as in the first message), the offset of every numeric leaf follows from the
  type definition and CDR alignment, in one walk over the first message. ``cdr_fast.decode_batch`` then
  slices every message of a batch column-wise; sequences of messages (``tf`` transforms) become their JSON
  string from a template, as the generic path writes them. The first message of each batch is still checked
  against the library decoder (``mcap_reader._check``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from .cdr_fast import Layout

_PRIMITIVES = {
    "bool": "?",
    "byte": "u1",
    "char": "u1",
    "int8": "i1",
    "uint8": "u1",
    "int16": "<i2",
    "uint16": "<u2",
    "int32": "<i4",
    "uint32": "<u4",
    "int64": "<i8",
    "uint64": "<u8",
    "float32": "<f4",
    "float64": "<f8",
}
_BYTES_LIKE = {"byte", "char", "uint8", "int8"}  # arrays of these decode to ``bytes`` in mcap-ros2-support
BASE, NAME, ARRAY, SEQUENCE = 1, 2, 3, 4  # rosbags.typesys.base.Nodetype


class Unsupported(Exception):
    """A type or message this module does not lay out (the generic decoder handles it)."""


def _srv_event_text(name: str, text: str) -> dict[str, Any]:
    """The rosbags type dict of a service ``_Event`` whose schema is the raw ``.srv`` text."""
    from rosbags.typesys import get_types_from_msg

    base = name.removesuffix("_Event")
    request, _, response = text.partition("\n---")
    types = {
        **get_types_from_msg(request, f"{base}_Request"),
        **get_types_from_msg(response.lstrip("-\n"), f"{base}_Response"),
    }
    event = f"service_msgs/msg/ServiceEventInfo info\n{base}_Request[<=1] request\n{base}_Response[<=1] response\n"
    types.update(get_types_from_msg(event, name))
    return types


@lru_cache(maxsize=256)
def typestore_for(schema_name: str, text: str) -> tuple[Any, str]:
    """(typestore, type name in it) for a schema: rosbags' standard ROS 2 (Jazzy) types plus the schema's own.

    Raises ``Unsupported`` naming why when neither the text nor the standard store defines the type.
    """
    from rosbags.typesys import Stores, TypesysError, get_types_from_msg, get_typestore
    from rosbags.typesys.msg import normalize_msgtype

    # rosbags names every type pkg/msg/Name; a service's _Event/_Request/_Response types included
    name = normalize_msgtype(schema_name.replace("/srv/", "/msg/"))
    store = get_typestore(Stores.ROS2_JAZZY)
    if not text.strip():
        if name not in store.fielddefs:
            raise Unsupported(f"the schema text is empty and {schema_name!r} is not a standard ROS 2 type")
        return store, name
    # some writers separate the concatenated definitions with fewer than the 80 '=' the format has
    text = re.sub(r"(?m)^={3,}\s*$", "=" * 80, text)
    try:
        types = _srv_event_text(name, text) if "\n---" in text and name.endswith("_Event") else None
        types = types or get_types_from_msg(text, name)
    except Exception as exc:  # rosbags' parser raises its own errors for texts it does not read either
        raise Unsupported(f"rosbags cannot parse the schema text either ({type(exc).__name__}: {exc})") from exc
    try:
        store.register(types)
    except TypesysError:  # a custom type reusing a standard name: only the schema's own definitions
        store = get_typestore(Stores.EMPTY)
        store.register(types)
    if name not in store.fielddefs:
        raise Unsupported(f"the schema text does not define {schema_name!r}")
    return store, name


def _field_names(store: Any, obj: Any) -> list[str]:
    """The message fields of a rosbags object (its dataclass also carries the type tag and the constants)."""
    return [name for name, _ in store.fielddefs[obj.__msgtype__][1]]


def flatten_rosbags(store: Any, obj: Any, prefix: str, out: dict[str, Any], to_json: Callable[[Any], str]) -> None:
    """A rosbags message -> flattened columns, as ``mcap_reader._flatten_obj`` flattens mcap-ros2 messages."""
    for field_name in _field_names(store, obj):
        v = getattr(obj, field_name)
        name = prefix + field_name
        if dataclasses.is_dataclass(v):
            flatten_rosbags(store, v, name + ".", out, to_json)
        elif isinstance(v, np.ndarray):
            out[name] = v.tobytes() if v.dtype.itemsize == 1 and v.dtype.kind in "ui" else v.astype(float).tolist()
        elif isinstance(v, list):
            if all(isinstance(x, bool | int | float) for x in v):
                out[name] = [float(x) for x in v]
            elif all(isinstance(x, str) for x in v):
                out[name] = list(v)
            else:
                out[name] = to_json(v)
        else:
            out[name] = v


def rosbags_decoder(name: str, text: str) -> tuple[Callable[[bytes], Any], Callable[[Any], dict[str, Any]]]:
    """(decode, flatten) for a cdr topic through rosbags; raises ``Unsupported`` with the reason."""
    store, typename = typestore_for(name, text)
    try:
        store.get_msgdef(typename)  # compile now: a broken definition fails here, not per message
    except Exception as exc:
        raise Unsupported(f"rosbags cannot compile {name!r} ({type(exc).__name__}: {exc})") from exc

    def json_default(o: Any) -> Any:
        if dataclasses.is_dataclass(o):
            return {name: getattr(o, name) for name in _field_names(store, o)}
        return o.tolist() if isinstance(o, np.ndarray) else str(o)

    def to_json(v: Any) -> str:
        return json.dumps(v, default=json_default, separators=(",", ":"))

    def flatten(m: Any) -> dict[str, Any]:
        d: dict[str, Any] = {}
        flatten_rosbags(store, m, "", d, to_json)
        return d

    return (lambda payload: store.deserialize_cdr(payload, typename)), flatten


# ------------------------------------------------------------------ computed layouts
class _Walk:
    """One pass over a template message, recording where each numeric leaf lives (CDR, little endian)."""

    def __init__(self, store: Any, payload: bytes) -> None:
        self.store = store
        self.buf = payload
        self.pos = 0  # relative to the data after the 4-byte encapsulation header
        self.fields: dict[str, Any] = {}
        self.const: dict[str, Any] = {}
        self.json: dict[str, tuple[str, list[tuple[int, np.dtype]]]] = {}
        self.keys: list[str] = []

    def _align(self, size: int) -> None:
        self.pos += -self.pos % min(size, 8)

    def _u32(self) -> int:
        self._align(4)
        value = struct.unpack_from("<I", self.buf, 4 + self.pos)[0]
        self.pos += 4
        return int(value)

    def _string(self) -> str:
        n = self._u32()
        raw = self.buf[4 + self.pos : 4 + self.pos + n]
        if len(raw) != n or n == 0:
            raise Unsupported("truncated string")
        self.pos += n
        return raw[:-1].decode()

    def _number(self, typ: str) -> tuple[int, np.dtype]:
        dt = np.dtype(_PRIMITIVES[typ])
        self._align(dt.itemsize)
        offset = 4 + self.pos
        self.pos += dt.itemsize
        if self.pos > len(self.buf) - 4:
            raise Unsupported("truncated message")
        return offset, dt

    def message(self, typename: str, prefix: str) -> None:
        for name, desc in self.store.fielddefs[typename][1]:
            self.field(prefix + name, desc)

    def field(self, key: str, desc: Any) -> None:
        node, arg = desc
        if node == BASE:
            typ = arg[0]
            if typ == "string":
                self.const[key] = self._string()
            elif typ in _PRIMITIVES:
                self.fields[key] = self._number(typ)
            else:
                raise Unsupported(f"type {typ}")
            self.keys.append(key)
        elif node == NAME:
            self.message(arg, key + ".")
        elif node in (ARRAY, SEQUENCE):
            sub, length = arg
            count = self._u32() if node == SEQUENCE else length
            self.keys.append(key)
            if count == 0:
                self.const[key] = []
            elif sub[0] == BASE and sub[1][0] == "string":
                self.const[key] = [self._string() for _ in range(count)]
            elif sub[0] == BASE and sub[1][0] in _BYTES_LIKE:
                raise Unsupported("byte arrays")  # payloads: bytes columns, left to the generic path
            elif sub[0] == BASE:
                self.fields[key] = [self._number(sub[1][0]) for _ in range(count)]
            elif sub[0] == NAME:
                leaves: list[tuple[int, np.dtype]] = []
                template = json.dumps([self.json_value(sub[1], leaves) for _ in range(count)], separators=(",", ":"))
                self.json[key] = (template.replace("%", "%%").replace('"\\u0000"', "%r"), leaves)
            else:
                raise Unsupported("nested arrays")

    def json_value(self, typename: str, leaves: list[tuple[int, np.dtype]]) -> dict[str, Any]:
        """A message inside a sequence, as the JSON object the generic path writes; numbers as placeholders."""
        out: dict[str, Any] = {}
        for name, (node, arg) in self.store.fielddefs[typename][1]:
            if node == NAME:
                out[name] = self.json_value(arg, leaves)
            elif node == BASE and arg[0] == "string":
                out[name] = self._string()
            elif node == BASE and arg[0] in _PRIMITIVES and arg[0] not in ("bool",):
                leaves.append(self._number(arg[0]))
                out[name] = "\0"  # placeholder, formatted with %r (= json.dumps of a finite float / an int)
            else:
                raise Unsupported(f"{node} inside a sequence of messages")
        return out


def computed_layout(name: str, text: str, payload: bytes) -> Layout | None:
    """The byte layout of a topic's messages shaped like ``payload``, or None where none applies."""
    if len(payload) < 4 or payload[1] != 1:  # little-endian CDR only
        return None
    try:
        store, typename = typestore_for(name, text)
        walk = _Walk(store, payload)
        walk.message(typename, "")
    except (Unsupported, KeyError, struct.error, UnicodeDecodeError):
        return None
    if 4 + walk.pos + 3 < len(payload):  # trailing bytes beyond CDR padding: not the type we think
        return None
    covered = np.zeros(len(payload), dtype=bool)
    for spec in [*walk.fields.values(), *(leaf for _, leaves in walk.json.values() for leaf in leaves)]:
        for off, dt in spec if isinstance(spec, list) else [spec]:
            covered[off : off + dt.itemsize] = True
    layout = Layout(len(payload), np.frombuffer(payload, dtype=np.uint8), walk.fields, np.flatnonzero(~covered))
    layout.const = walk.const  # type: ignore[attr-defined]
    layout.keys = walk.keys  # type: ignore[attr-defined]
    layout.json = walk.json  # type: ignore[attr-defined]
    return layout
