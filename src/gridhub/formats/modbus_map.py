"""Modbus register maps in the X-FLEX Modbus wrapper's format, and register word codecs.

The map format is section 3.3.5.2 of the X-FLEX platform deliverable (the ``modbusMaps``
entries of its Modbus wrapper): a list of points, each one object with the keys

``name``
    name of the variable (here also its topic sub-level, so ``load/L1`` is allowed);
``type``
    ``holding``, ``input`` or ``coil``;
``address``
    0-based address of the first register (or coil);
``datatype``
    ``string`` (needs ``datasize``, the length in characters), ``bits``, ``8int``, ``8uint``,
    ``16int``, ``16uint``, ``32int``, ``32uint``, ``64int``, ``64uint``, ``16float``,
    ``32float``, ``64float`` or ``ignore`` (needs ``datasize``, the length in registers);
``factor``
    multiplier applied to the reading (numeric types; default 1);
``shift``
    bits to shift right (integer types; default 0);
``mask``
    mask applied after shifting (integer types; default none);
``translation``
    value translations applied last, as the X-FLEX example writes them (``[[1, "COLD"],
    [2, "HEAT"]]``) or as an object (``{"1": "COLD"}``); a value without a translation is an
    error, never passed through silently.

Where the X-FLEX text is silent this module decides, and says so:

- Transformations run in the order the text lists them for reading: shift, then mask (the
  text: "mask to be applied to read value after shifting"), then factor, then translation
  (the text: "after previous value transformations"). ``value = ((raw >> shift) & mask) *
  factor``; writing runs the exact inverse.
- ``shift`` and ``mask`` act on the typed value (a ``16int`` is sign-extended first), and
  writing a shifted or masked field keeps the register's other bits (read-modify-write:
  pass the current registers to :meth:`Point.encode`).
- ``bits`` is the raw bit pattern of ``datasize`` registers (default 1) as an unsigned
  integer, meant for ``shift``/``mask`` flag fields; on a coil it is ``datasize`` coils (the
  first coil is bit 0). A single coil reads as a Boolean.
- ``8int``/``8uint`` take one register and use its low-order byte (the second on the wire).
- Registers are big-endian (Modbus) and multi-register values put the most significant word
  first. The gridhub keys ``wordOrder`` and ``byteOrder`` (``big``/``little``) change that
  for a point; strings use the byte order only.
- ``string`` values are bytes decoded as UTF-8, two characters a register, first character in
  the high byte, trailing NULs and spaces removed.

gridhub adds these optional point keys: ``wordOrder``, ``byteOrder``, ``units``,
``displayUnits``, ``sigFigs`` (Data Series Metadata, LV-CAP 9.4), ``min``/``max`` (the expected
range of the value) and ``writable`` (the point may be written from the marketplace).

Pure: no I/O; the Modbus client lives in gridhub.edge.apps.modbus.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal, TypeAlias

Number: TypeAlias = int | float
PointValue: TypeAlias = bool | int | float | str
ByteOrder: TypeAlias = Literal["big", "little"]

MAX_READ_REGISTERS = 125
"""Most registers one Read Holding/Input Registers request may ask for (Modbus spec, FC 3/4)."""
MAX_READ_COILS = 2000
"""Most coils one Read Coils request may ask for (FC 1)."""
MAX_ADDRESS = 65535


class ModbusMapError(ValueError):
    """The register map is unusable; the message names the point and the key."""


class PointValueError(ValueError):
    """A value cannot be decoded from, or encoded into, a point's registers."""


class RegisterType(StrEnum):
    """The Modbus table a point lives in (3.3.5.2 ``type``)."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"


class DataType(StrEnum):
    """The point's data type (3.3.5.2 ``datatype``), spelled as the X-FLEX map spells it."""

    STRING = "string"
    BITS = "bits"
    INT8 = "8int"
    UINT8 = "8uint"
    INT16 = "16int"
    UINT16 = "16uint"
    INT32 = "32int"
    UINT32 = "32uint"
    INT64 = "64int"
    UINT64 = "64uint"
    FLOAT16 = "16float"
    FLOAT32 = "32float"
    FLOAT64 = "64float"
    IGNORE = "ignore"


# datatype -> (registers, struct code) for the fixed-size numeric types.
_FIXED: dict[DataType, tuple[int, str]] = {
    DataType.INT16: (1, "h"),
    DataType.UINT16: (1, "H"),
    DataType.INT32: (2, "i"),
    DataType.UINT32: (2, "I"),
    DataType.INT64: (4, "q"),
    DataType.UINT64: (4, "Q"),
    DataType.FLOAT16: (1, "e"),
    DataType.FLOAT32: (2, "f"),
    DataType.FLOAT64: (4, "d"),
}
_INTEGER_TYPES = frozenset(
    {
        DataType.BITS,
        DataType.INT8,
        DataType.UINT8,
        DataType.INT16,
        DataType.UINT16,
        DataType.INT32,
        DataType.UINT32,
        DataType.INT64,
        DataType.UINT64,
    }
)
_FLOAT_TYPES = frozenset({DataType.FLOAT16, DataType.FLOAT32, DataType.FLOAT64})

SEED_KEYS = ("name", "type", "address", "datatype", "datasize", "factor", "shift", "mask", "translation")
"""Point keys of the X-FLEX format (3.3.5.2)."""
GRIDHUB_KEYS = ("wordOrder", "byteOrder", "units", "displayUnits", "sigFigs", "min", "max", "writable")
"""Optional point keys gridhub adds (see the module docstring)."""
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


@dataclass(frozen=True)
class Point:
    """One variable of a register map: where it is, how to decode it, what it means."""

    name: str
    type: RegisterType
    address: int
    datatype: DataType
    datasize: int | None = None
    factor: Number = 1
    shift: int = 0
    mask: int | None = None
    translation: tuple[tuple[Number, PointValue], ...] | None = None
    word_order: ByteOrder = "big"
    byte_order: ByteOrder = "big"
    units: str | None = None
    display_units: str | None = None
    sig_figs: int | None = None
    minimum: Number | None = None
    maximum: Number | None = None
    writable: bool = False

    @property
    def count(self) -> int:
        """Return how many registers (or coils) the point occupies."""
        if self.datatype in _FIXED:
            return _FIXED[self.datatype][0]
        if self.datatype is DataType.STRING:
            return (self._size + 1) // 2
        if self.datatype in (DataType.INT8, DataType.UINT8):
            return 1
        return self._size  # bits, ignore

    @property
    def end(self) -> int:
        """Return the address just after the point."""
        return self.address + self.count

    @property
    def is_boolean(self) -> bool:
        """Tell whether the point is a single coil, read as a Boolean."""
        return self.type is RegisterType.COIL and self.datatype is DataType.BITS and self.count == 1

    @property
    def published(self) -> bool:
        """Tell whether the point carries a value (``ignore`` only pads block reads)."""
        return self.datatype is not DataType.IGNORE

    @property
    def _size(self) -> int:
        return 1 if self.datasize is None else self.datasize

    @property
    def _bit_width(self) -> int:
        if self.type is RegisterType.COIL:
            return self.count
        if self.datatype in (DataType.INT8, DataType.UINT8):
            return 8
        return 16 * self.count

    # -- reading -----------------------------------------------------------------------------

    def decode(self, words: Sequence[int] | Sequence[bool]) -> PointValue:
        """Turn the point's registers (or coils) into its value: type, shift, mask, factor, translation.

        Raises PointValueError for a wrong number of words, a non-finite float or a value
        without a translation.
        """
        if len(words) != self.count:
            raise PointValueError(f"{self.name}: expected {self.count} word(s), got {len(words)}")
        if self.datatype is DataType.IGNORE:
            raise PointValueError(f"{self.name}: an 'ignore' point has no value")
        if self.type is RegisterType.COIL:
            raw: PointValue = sum(1 << i for i, bit in enumerate(words) if bit)
            if self.is_boolean:
                raw = bool(words[0])
        else:
            raw = self._from_registers([int(w) for w in words])
        if isinstance(raw, str):
            return self._translate(raw)
        if isinstance(raw, float) and not math.isfinite(raw):
            raise PointValueError(f"{self.name}: the device returned {raw} (not a finite number)")
        if isinstance(raw, bool):
            return self._translate(raw)
        value: int | float = raw
        if isinstance(value, int):
            value >>= self.shift
            if self.mask is not None:
                value &= self.mask
        if self.factor != 1:
            value *= self.factor
            if isinstance(raw, int):
                # An integer times a decimal factor has no more decimals than the factor: drop the
                # binary noise (3 * 0.1 = 0.30000000000000004 is published as 0.3).
                value = round(value, _decimals(self.factor))
        return self._translate(value)

    def _from_registers(self, words: list[int]) -> PointValue:
        data = self._words_to_bytes(words, self.datatype is not DataType.STRING)
        if self.datatype in _FIXED:
            result: int | float = struct.unpack(">" + _FIXED[self.datatype][1], data)[0]
            return result
        if self.datatype in (DataType.INT8, DataType.UINT8):
            return int.from_bytes(data[1:2], "big", signed=self.datatype is DataType.INT8)
        if self.datatype is DataType.STRING:
            return data[: self._size].decode("utf-8", errors="replace").rstrip("\x00 ")
        return int.from_bytes(data, "big")  # bits

    def _words_to_bytes(self, words: list[int], use_word_order: bool) -> bytes:
        for word in words:
            if not 0 <= word <= 0xFFFF:
                raise PointValueError(f"{self.name}: register value {word} is not a 16-bit word")
        ordered = list(reversed(words)) if use_word_order and self.word_order == "little" else words
        code = ">H" if self.byte_order == "big" else "<H"
        return b"".join(struct.pack(code, w) for w in ordered)

    def _translate(self, value: PointValue) -> PointValue:
        if self.translation is None:
            return value
        for key, target in self.translation:
            if _same(key, value):
                return target
        known = ", ".join(repr(k) for k, _ in self.translation)
        raise PointValueError(f"{self.name}: value {value!r} has no translation (translated: {known})")

    # -- writing -----------------------------------------------------------------------------

    def encode(self, value: object, current: Sequence[int] | Sequence[bool] | None = None) -> list[int] | list[bool]:
        """Turn a value into the registers (or coils) to write: the inverse of decode().

        ``current`` is what the device holds now; with ``shift`` or ``mask`` the bits outside the
        field are kept from it (zero without it). Integer types take the value rounded to the
        point's resolution (``factor``). Raises PointValueError when the value is of the wrong
        kind, out of the configured min/max or out of the data type's range.
        """
        where = self.name
        if self.datatype is DataType.IGNORE:
            raise PointValueError(f"{where}: an 'ignore' point cannot be written")
        if self.translation is not None:
            value = self._untranslate(value)
        elif not self.in_range(value):
            raise PointValueError(f"{where}: {value!r} is outside the expected range {self._range_text()}")
        if self.datatype is DataType.STRING:
            return self._encode_string(value)
        if self.is_boolean:
            if not isinstance(value, bool | int) or value not in (0, 1):
                raise PointValueError(f"{where}: a coil takes true/false (or 1/0), got {value!r}")
            return [bool(value)]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise PointValueError(f"{where}: expected a finite number, got {value!r}")
        if self.datatype in _FLOAT_TYPES:
            scaled = float(value) / self.factor
            _, code = _FIXED[self.datatype]
            try:
                data = struct.pack(">" + code, scaled)
            except (OverflowError, struct.error):
                raise PointValueError(f"{where}: {value!r} does not fit a {self.datatype.value}") from None
            if not math.isfinite(struct.unpack(">" + code, data)[0]):
                raise PointValueError(f"{where}: {value!r} does not fit a {self.datatype.value}")
            return self._bytes_to_words(data, True)
        return self._encode_integer(value, current)

    def _encode_integer(self, value: Number, current: Sequence[int] | Sequence[bool] | None) -> list[int] | list[bool]:
        where = self.name
        # Decimal arithmetic: exact for 64-bit integers, and 21.5 / 0.1 is 215, not 214.99999999999997.
        field_value = round(Decimal(repr(value)) / Decimal(repr(self.factor)))
        if self.mask is not None and not 0 <= field_value <= self.mask:
            raise PointValueError(f"{where}: {value!r} does not fit the mask 0x{self.mask:X} (raw {field_value})")
        low, high = self._typed_range()
        if self.shift or self.mask is not None:
            field_bits = (self.mask << self.shift) if self.mask is not None else ~((1 << self.shift) - 1)
            old = 0
            if current is not None:
                old_value = self._typed_raw(current)
                old = old_value & ~field_bits
            # Without a mask the field is every bit from `shift` up, so a negative value stays negative.
            typed = old | ((field_value << self.shift) & field_bits)
        else:
            typed = field_value
        if not low <= typed <= high:
            raise PointValueError(
                f"{where}: {value!r} is out of range for a {self.datatype.value}"
                f" (raw {typed}, allowed {low}..{high}{self._factor_text()})"
            )
        if self.type is RegisterType.COIL:
            return [bool(typed >> i & 1) for i in range(self.count)]
        if self.datatype in _FIXED:
            data = struct.pack(">" + _FIXED[self.datatype][1], typed)
        elif self.datatype in (DataType.INT8, DataType.UINT8):
            data = b"\x00" + (typed & 0xFF).to_bytes(1, "big")
        else:  # bits
            data = typed.to_bytes(2 * self.count, "big")
        return self._bytes_to_words(data, True)

    def _typed_raw(self, current: Sequence[int] | Sequence[bool]) -> int:
        """Return the current words as the typed integer, before shift and mask."""
        if len(current) != self.count:
            raise PointValueError(f"{self.name}: expected {self.count} current word(s), got {len(current)}")
        if self.type is RegisterType.COIL:
            return sum(1 << i for i, bit in enumerate(current) if bit)
        raw = self._from_registers([int(w) for w in current])
        assert isinstance(raw, int)
        return raw

    def _typed_range(self) -> tuple[int, int]:
        width = self._bit_width
        if self.datatype in (DataType.INT8, DataType.INT16, DataType.INT32, DataType.INT64):
            return -(1 << (width - 1)), (1 << (width - 1)) - 1
        return 0, (1 << width) - 1

    def _encode_string(self, value: object) -> list[int]:
        if not isinstance(value, str):
            raise PointValueError(f"{self.name}: expected a string, got {value!r}")
        data = value.encode("utf-8")
        if len(data) > self._size:
            raise PointValueError(f"{self.name}: {value!r} is longer than {self._size} bytes")
        return self._bytes_to_words(data.ljust(2 * self.count, b"\x00"), False)

    def _bytes_to_words(self, data: bytes, use_word_order: bool) -> list[int]:
        code = ">H" if self.byte_order == "big" else "<H"
        words = [struct.unpack(code, data[i : i + 2])[0] for i in range(0, len(data), 2)]
        return list(reversed(words)) if use_word_order and self.word_order == "little" else words

    def _untranslate(self, value: object) -> PointValue:
        assert self.translation is not None
        for key, target in self.translation:
            if _same(target, value):
                return key
        targets = ", ".join(repr(t) for _, t in self.translation)
        raise PointValueError(f"{self.name}: {value!r} is not one of the translated values ({targets})")

    def in_range(self, value: object) -> bool:
        """Tell whether a value lies in the point's configured ``min``/``max`` (always true without them)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return True
        if self.minimum is not None and value < self.minimum:
            return False
        return not (self.maximum is not None and value > self.maximum)

    def _range_text(self) -> str:
        low = "-inf" if self.minimum is None else f"{self.minimum:g}"
        high = "inf" if self.maximum is None else f"{self.maximum:g}"
        return f"[{low}, {high}]"

    def _factor_text(self) -> str:
        return "" if self.factor == 1 else f" before factor {self.factor:g}"


@dataclass(frozen=True)
class ReadBlock:
    """Contiguous points of one table read with one request."""

    type: RegisterType
    address: int
    count: int
    points: tuple[Point, ...] = field(default=())

    def split(self, words: Sequence[int] | Sequence[bool]) -> list[tuple[Point, Sequence[int] | Sequence[bool]]]:
        """Return each point with its own slice of the block's words."""
        return [(p, words[p.address - self.address : p.end - self.address]) for p in self.points]


def plan_reads(points: Sequence[Point]) -> list[ReadBlock]:
    """Group a map's points into as few reads as possible without reading unmapped addresses.

    Points that touch or overlap (bit fields of one register) share a read; a gap starts a new
    one, since a device may refuse addresses it does not implement (``ignore`` points exist to
    bridge such gaps). Reads respect the Modbus limits of 125 registers and 2000 coils.
    """
    blocks: list[ReadBlock] = []
    for kind in RegisterType:
        limit = MAX_READ_COILS if kind is RegisterType.COIL else MAX_READ_REGISTERS
        group: list[Point] = []
        start = end = 0
        for point in sorted((p for p in points if p.type is kind), key=lambda p: (p.address, p.end)):
            if group and point.address <= end and max(end, point.end) - start <= limit:
                group.append(point)
                end = max(end, point.end)
                continue
            if group:
                blocks.append(ReadBlock(kind, start, end - start, tuple(group)))
            group, start, end = [point], point.address, point.end
        if group:
            blocks.append(ReadBlock(kind, start, end - start, tuple(group)))
    return blocks


# -- parsing -------------------------------------------------------------------------------------


def parse_register_map(
    data: object, where: str = "map", *, word_order: ByteOrder = "big", byte_order: ByteOrder = "big"
) -> tuple[Point, ...]:
    """Read and check a register map (a list of point objects); raise ModbusMapError naming point and key.

    ``word_order`` and ``byte_order`` are the defaults for points without ``wordOrder`` and
    ``byteOrder`` (a device's setting).
    """
    if not isinstance(data, list):
        raise ModbusMapError(f"{where}: expected a list of points, got {_show(data)}")
    if not data:
        raise ModbusMapError(f"{where}: the map has no points")
    points: list[Point] = []
    names: set[str] = set()
    for index, item in enumerate(data):
        point = parse_point(item, f"{where}[{index}]", word_order=word_order, byte_order=byte_order)
        if point.name in names:
            raise ModbusMapError(f"{where}[{index}] ({point.name}).name: {point.name!r} is used by another point")
        names.add(point.name)
        points.append(point)
    return tuple(points)


def parse_point(data: object, where: str, *, word_order: ByteOrder = "big", byte_order: ByteOrder = "big") -> Point:
    """Read and check one point object of a register map."""
    if not isinstance(data, Mapping):
        raise ModbusMapError(f"{where}: expected a point object, got {_show(data)}")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ModbusMapError(
            f"{where}.name: expected a name of letters, digits, '-' and '_' (levels split by '/'), got {_show(name)}"
        )
    at = f"{where} ({name})"
    unknown = sorted(set(data) - set(SEED_KEYS) - set(GRIDHUB_KEYS))
    if unknown:
        raise ModbusMapError(
            f"{at}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(SEED_KEYS + GRIDHUB_KEYS)}"
        )
    kind = _choice(data, "type", RegisterType, None, at)
    datatype = _choice(data, "datatype", DataType, None, at)
    address = _integer(data, "address", None, at, 0, MAX_ADDRESS)
    assert address is not None
    datasize = _integer(data, "datasize", None, at, 1, MAX_ADDRESS + 1)
    if datatype in (DataType.STRING, DataType.IGNORE) and datasize is None:
        raise ModbusMapError(f"{at}.datasize: required for datatype {datatype.value!r} (its length)")
    if datasize is not None and datatype not in (DataType.STRING, DataType.IGNORE, DataType.BITS):
        raise ModbusMapError(f"{at}.datasize: only for string, bits and ignore; {datatype.value!r} has a fixed size")
    if kind is RegisterType.COIL and datatype not in (DataType.BITS, DataType.IGNORE):
        raise ModbusMapError(f"{at}.datatype: a coil holds bits: expected 'bits' or 'ignore', got {datatype.value!r}")
    factor = _number(data, "factor", 1, at)
    assert factor is not None
    if factor == 0 or not math.isfinite(factor):
        raise ModbusMapError(f"{at}.factor: expected a finite non-zero number, got {factor!r}")
    shift = _integer(data, "shift", 0, at, 0, 63)
    assert shift is not None
    mask = _integer(data, "mask", None, at, 1, (1 << 64) - 1)
    point = Point(
        name=name,
        type=kind,
        address=address,
        datatype=datatype,
        datasize=datasize,
        factor=factor,
        shift=shift,
        mask=mask,
        translation=_translation(data.get("translation"), f"{at}.translation"),
        word_order=_choice(data, "wordOrder", _Order, _Order(word_order), at).value,
        byte_order=_choice(data, "byteOrder", _Order, _Order(byte_order), at).value,
        units=_text(data, "units", at),
        display_units=_text(data, "displayUnits", at),
        sig_figs=_integer(data, "sigFigs", None, at, 1, 2**31 - 1),
        minimum=_number(data, "min", None, at),
        maximum=_number(data, "max", None, at),
        writable=_flag(data, "writable", at),
    )
    _check_point(point, data, at)
    return point


class _Order(StrEnum):
    BIG = "big"
    LITTLE = "little"


def _check_point(point: Point, data: Mapping[str, Any], at: str) -> None:
    """Refuse option combinations the data type cannot honour."""
    numeric = point.datatype in _INTEGER_TYPES or point.datatype in _FLOAT_TYPES
    if point.end - 1 > MAX_ADDRESS:
        raise ModbusMapError(f"{at}.address: the point ends at {point.end - 1}, beyond address {MAX_ADDRESS}")
    limit = MAX_READ_COILS if point.type is RegisterType.COIL else MAX_READ_REGISTERS
    if point.count > limit:
        raise ModbusMapError(
            f"{at}.datasize: {point.count} {'coils' if point.type is RegisterType.COIL else 'registers'}"
            f" do not fit one Modbus read (at most {limit})"
        )
    if point.datatype is DataType.IGNORE:
        extra = sorted(k for k in data if k not in ("name", "type", "address", "datatype", "datasize"))
        if extra:
            raise ModbusMapError(f"{at}: an 'ignore' point only pads reads; {', '.join(extra)} not allowed")
    if "factor" in data and (not numeric or point.is_boolean):
        raise ModbusMapError(f"{at}.factor: applies to numeric data types, not {_kind_text(point)}")
    for key in ("shift", "mask"):
        if key in data and (point.datatype not in _INTEGER_TYPES or point.is_boolean):
            raise ModbusMapError(f"{at}.{key}: applies to integer data types, not {_kind_text(point)}")
    if point.shift >= point._bit_width and "shift" in data:
        raise ModbusMapError(f"{at}.shift: {point.shift} bits shifts out the whole {point._bit_width}-bit value")
    if point.translation is not None and not (numeric or point.type is RegisterType.COIL):
        raise ModbusMapError(f"{at}.translation: applies to numbers and coils, not {_kind_text(point)}")
    for key in ("min", "max"):
        if key in data and (not numeric or point.is_boolean):
            raise ModbusMapError(f"{at}.{key}: applies to numeric data types, not {_kind_text(point)}")
    if point.minimum is not None and point.maximum is not None and point.minimum > point.maximum:
        raise ModbusMapError(f"{at}.min: {point.minimum!r} is above max {point.maximum!r}")
    if point.writable:
        if point.type is RegisterType.INPUT:
            raise ModbusMapError(f"{at}.writable: input registers are read-only (use holding or coil)")
        if point.translation is not None:
            targets = [t for _, t in point.translation]
            for target in targets:
                if sum(_same(target, t) for t in targets) > 1:
                    raise ModbusMapError(
                        f"{at}.translation: several values translate to {target!r}, so writing it is ambiguous"
                    )


def _kind_text(point: Point) -> str:
    return "a single coil (a Boolean)" if point.is_boolean else f"datatype {point.datatype.value!r}"


def _translation(value: object, where: str) -> tuple[tuple[Number, PointValue], ...] | None:
    if value is None:
        return None
    pairs: list[tuple[object, object]] = []
    if isinstance(value, Mapping):
        for key, target in value.items():
            try:
                number: object = int(key) if re.fullmatch(r"[+-]?\d+", str(key)) else float(key)
            except ValueError:
                raise ModbusMapError(f"{where}: key {key!r} is not a number") from None
            pairs.append((number, target))
    elif isinstance(value, list):
        for index, pair in enumerate(value):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ModbusMapError(f"{where}[{index}]: expected a [value, translation] pair, got {_show(pair)}")
            pairs.append((pair[0], pair[1]))
    else:
        raise ModbusMapError(f"{where}: expected a list of [value, translation] pairs or an object, got {_show(value)}")
    if not pairs:
        raise ModbusMapError(f"{where}: no translations given")
    result: list[tuple[Number, PointValue]] = []
    for index, (key, target) in enumerate(pairs):
        if not isinstance(key, int | float) or (isinstance(key, float) and not math.isfinite(key)):
            raise ModbusMapError(f"{where}[{index}]: the value to translate must be a number, got {_show(key)}")
        if not isinstance(target, bool | int | float | str):
            raise ModbusMapError(
                f"{where}[{index}]: the translation must be a number, Boolean or text, got {_show(target)}"
            )
        if any(_same(key, k) for k, _ in result):
            raise ModbusMapError(f"{where}[{index}]: {key!r} is translated twice")
        result.append((key, target))
    return tuple(result)


def _decimals(number: Number) -> int:
    exponent = Decimal(repr(number)).as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _same(a: object, b: object) -> bool:
    """Compare translation values: numbers by value (1 == 1.0 == True), text by text."""
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return a == b


def _choice(data: Mapping[str, Any], key: str, enum: type[Any], default: Any, at: str) -> Any:
    value = data.get(key)
    if value is None:
        if default is None:
            raise ModbusMapError(f"{at}.{key}: required; one of {', '.join(repr(m.value) for m in enum)}")
        return default
    try:
        return enum(value)
    except ValueError:
        raise ModbusMapError(
            f"{at}.{key}: expected one of {', '.join(repr(m.value) for m in enum)}, got {_show(value)}"
        ) from None


def _integer(data: Mapping[str, Any], key: str, default: int | None, at: str, low: int, high: int) -> int | None:
    value = data.get(key, default)
    if value is None:
        if key in data or default is not None:
            raise ModbusMapError(f"{at}.{key}: expected an integer, got null")
        if key == "address":
            raise ModbusMapError(f"{at}.address: required (0-based register address)")
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModbusMapError(f"{at}.{key}: expected an integer, got {_show(value)}")
    if not low <= value <= high:
        raise ModbusMapError(f"{at}.{key}: expected an integer from {low} to {high}, got {value}")
    return value


def _number(data: Mapping[str, Any], key: str, default: Number | None, at: str) -> Number | None:
    value = data.get(key, default)
    if value is None and default is None and key not in data:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModbusMapError(f"{at}.{key}: expected a finite number, got {_show(value)}")
    return value


def _text(data: Mapping[str, Any], key: str, at: str) -> str | None:
    value = data.get(key)
    if value is None and key not in data:
        return None
    if not isinstance(value, str):
        raise ModbusMapError(f"{at}.{key}: expected a string, got {_show(value)}")
    return value


def _flag(data: Mapping[str, Any], key: str, at: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ModbusMapError(f"{at}.{key}: expected true or false, got {_show(value)}")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
