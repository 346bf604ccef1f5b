"""The X-FLEX register map format: parsing, precise errors, and the register codecs."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from gridhub.formats.modbus_map import (
    DataType,
    ModbusMapError,
    Point,
    PointValueError,
    RegisterType,
    parse_point,
    parse_register_map,
    plan_reads,
)

# The map of the X-FLEX deliverable's own example (3.3.5.1), verbatim.
XFLEX_EXAMPLE: list[dict[str, Any]] = [
    {"name": "temperature", "type": "holding", "address": 1, "datatype": "16uint", "factor": 1},
    {"name": "luminance", "type": "holding", "address": 2, "datatype": "16int", "factor": 10},
    {
        "name": "mode",
        "type": "holding",
        "address": 3,
        "datatype": "16int",
        "translation": [[1, "COLD"], [2, "HEAT"], [3, "FAN"]],
    },
]


def point(**keys: Any) -> Point:
    data = {"name": "p", "type": "holding", "address": 0, **keys}
    return parse_point(data, "map[0]")


def test_the_xflex_example_map_parses_with_its_own_keys() -> None:
    points = parse_register_map(XFLEX_EXAMPLE)
    assert [p.name for p in points] == ["temperature", "luminance", "mode"]
    temperature, luminance, mode = points
    assert temperature.type is RegisterType.HOLDING and temperature.address == 1
    assert temperature.datatype is DataType.UINT16
    assert luminance.decode([0xFFFE]) == -20  # 16int -2, times factor 10
    assert mode.decode([3]) == "FAN"
    assert mode.encode("HEAT") == [2]


# (datatype, extra keys, registers, a value, its registers big-endian)
CODECS: list[tuple[str, dict[str, Any], int, Any, list[int]]] = [
    ("8int", {}, 1, -5, [0x00FB]),
    ("8uint", {}, 1, 250, [0x00FA]),
    ("16int", {}, 1, -2, [0xFFFE]),
    ("16uint", {}, 1, 65535, [0xFFFF]),
    ("32int", {}, 2, -100000, [0xFFFE, 0x7960]),
    ("32uint", {}, 2, 4_000_000_000, [0xEE6B, 0x2800]),
    ("64int", {}, 4, -(2**40) - 7, [0xFFFF, 0xFEFF, 0xFFFF, 0xFFF9]),
    ("64uint", {}, 4, 2**64 - 1, [0xFFFF] * 4),
    ("16float", {}, 1, -1.5, [0xBE00]),
    ("32float", {}, 2, 3.25, [0x4050, 0x0000]),
    ("64float", {}, 4, -0.1, list(struct.unpack(">4H", struct.pack(">d", -0.1)))),
    ("bits", {}, 1, 0b1010_0000_0000_0001, [0xA001]),
    ("bits", {"datasize": 2}, 2, 0x0001_0002, [0x0001, 0x0002]),
    ("string", {"datasize": 5}, 3, "ABCDE", [0x4142, 0x4344, 0x4500]),
]


@pytest.mark.parametrize(("datatype", "extra", "count", "value", "words"), CODECS)
def test_every_datatype_decodes_and_encodes_back(
    datatype: str, extra: dict[str, Any], count: int, value: Any, words: list[int]
) -> None:
    p = point(datatype=datatype, **extra)
    assert p.count == count
    assert p.decode(words) == value
    assert p.encode(value) == words


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("16int", -32768), ("32int", -(2**31)), ("64int", -(2**63)), ("16float", -65504.0), ("32float", -1e30)],
)
def test_negative_extremes_round_trip(datatype: str, value: float) -> None:
    p = point(datatype=datatype)
    decoded = p.decode(p.encode(value))
    assert decoded == pytest.approx(value, rel=1e-6)


def test_word_and_byte_order_options_swap_words_and_bytes() -> None:
    big = point(datatype="32float")
    little_words = point(datatype="32float", wordOrder="little")
    swapped_bytes = point(datatype="32uint", byteOrder="little")
    assert little_words.decode([0x0000, 0x4050]) == 3.25
    assert little_words.encode(3.25) == [0x0000, 0x4050]
    assert big.decode([0x4050, 0x0000]) == 3.25
    assert swapped_bytes.decode([0x3412, 0x7856]) == 0x12345678
    # A device default applies to points that do not say otherwise.
    (default,) = parse_register_map(
        [{"name": "x", "type": "input", "address": 0, "datatype": "32int"}], word_order="little"
    )
    assert default.word_order == "little" and default.decode([0x0001, 0x0000]) == 1


def test_factor_scales_both_ways_and_rounds_writes_to_the_resolution() -> None:
    tenths = point(datatype="16int", factor=0.1)
    assert tenths.decode([3]) == 0.3  # not 0.30000000000000004
    assert tenths.decode([0xFF29]) == -21.5
    assert tenths.encode(-21.5) == [0xFF29]
    assert tenths.encode(21.54) == [215]
    kilo = point(datatype="32uint", factor=1000)
    assert kilo.decode([0, 7]) == 7000
    assert point(datatype="32float", factor=0.5).encode(2.0) == [0x4080, 0]


def test_shift_and_mask_pick_bit_fields_and_writes_keep_the_other_bits() -> None:
    high = point(datatype="bits", shift=8, mask=0xFF)
    low = point(datatype="16uint", mask=0x0F)
    flag = point(datatype="16uint", shift=3, mask=1)
    assert high.decode([0x12AB]) == 0x12
    assert low.decode([0x12AB]) == 0x0B
    assert flag.decode([0b1000]) == 1 and flag.decode([0b0111]) == 0
    assert high.encode(0x34, current=[0x12AB]) == [0x34AB]
    assert flag.encode(1, current=[0x00F0]) == [0x00F8]
    assert flag.encode(0, current=[0x00F8]) == [0x00F0]
    with pytest.raises(PointValueError, match=r"p: 2 does not fit the mask 0x1"):
        flag.encode(2, current=[0])
    # Shift acts on the typed value: a negative 16int stays negative.
    assert point(datatype="16int", shift=4).decode([0xFFF0]) == -1


def test_translation_applies_last_in_both_directions() -> None:
    mode = point(datatype="16uint", shift=1, factor=2, translation=[[4, 1], [6, 0]])
    assert mode.decode([0b100]) == 1  # (4 >> 1) * 2 = 4 -> 1
    assert mode.encode(0) == [0b110]
    as_object = point(datatype="16uint", translation={"1": "ON", "0": "OFF"})
    assert as_object.decode([1]) == "ON" and as_object.encode("OFF") == [0]
    with pytest.raises(PointValueError, match=r"p: value 9 has no translation \(translated: 1, 0\)"):
        as_object.decode([9])
    with pytest.raises(PointValueError, match=r"p: 'AUTO' is not one of the translated values"):
        as_object.encode("AUTO")


def test_coils_read_as_booleans_or_bit_fields() -> None:
    single = parse_point({"name": "relay", "type": "coil", "address": 4, "datatype": "bits"}, "map[0]")
    assert single.is_boolean and single.decode([True]) is True
    assert single.encode(False) == [False] and single.encode(True) == [True]
    several = parse_point({"name": "alarms", "type": "coil", "address": 0, "datatype": "bits", "datasize": 3}, "m")
    assert several.decode([True, False, True]) == 0b101
    assert several.encode(0b011) == [True, True, False]
    with pytest.raises(PointValueError, match="relay: a coil takes true/false"):
        single.encode(2)


def test_writes_outside_the_type_or_the_configured_range_are_refused() -> None:
    with pytest.raises(
        PointValueError, match=r"p: 70000 is out of range for a 16uint \(raw 70000, allowed 0\.\.65535\)"
    ):
        point(datatype="16uint").encode(70000)
    with pytest.raises(PointValueError, match=r"p: -1 is out of range for a 8uint"):
        point(datatype="8uint").encode(-1)
    with pytest.raises(PointValueError, match=r"p: 101 is outside the expected range \[0, 100\]"):
        point(datatype="16uint", min=0, max=100).encode(101)
    with pytest.raises(PointValueError, match=r"does not fit a 16float"):
        point(datatype="16float").encode(1e6)
    with pytest.raises(PointValueError, match=r"p: expected a finite number, got 'x'"):
        point(datatype="16int").encode("x")
    with pytest.raises(PointValueError, match=r"p: expected a finite number, got nan"):
        point(datatype="32float").encode(math.nan)
    with pytest.raises(PointValueError, match=r"p: 'TOOLONG' is longer than 4 bytes"):
        point(datatype="string", datasize=4).encode("TOOLONG")


def test_a_device_returning_nan_is_an_error_not_a_value() -> None:
    with pytest.raises(PointValueError, match=r"p: the device returned nan"):
        point(datatype="32float").decode([0x7FC0, 0])


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"datatype": "16unit"}, r"map\[0\] \(p\)\.datatype: expected one of 'string', .*got '16unit'"),
        (
            {"datatype": "16int", "type": "register"},
            r"map\[0\] \(p\)\.type: expected one of 'holding', 'input', 'coil'",
        ),
        ({"type": None, "datatype": "16int"}, r"map\[0\] \(p\)\.type: required"),
        ({"datatype": "16int", "address": -1}, r"map\[0\] \(p\)\.address: expected an integer from 0 to 65535, got -1"),
        ({"datatype": "16int", "address": "1"}, r"map\[0\] \(p\)\.address: expected an integer, got '1'"),
        ({"datatype": "64int", "address": 65534}, r"map\[0\] \(p\)\.address: the point ends at 65537"),
        ({"datatype": "string"}, r"map\[0\] \(p\)\.datasize: required for datatype 'string'"),
        ({"datatype": "ignore"}, r"map\[0\] \(p\)\.datasize: required for datatype 'ignore'"),
        ({"datatype": "32int", "datasize": 2}, r"map\[0\] \(p\)\.datasize: only for string, bits and ignore"),
        (
            {"datatype": "string", "datasize": 300},
            r"map\[0\] \(p\)\.datasize: 150 registers do not fit one Modbus read",
        ),
        ({"datatype": "16int", "factor": 0}, r"map\[0\] \(p\)\.factor: expected a finite non-zero number, got 0"),
        ({"datatype": "16int", "factor": "10"}, r"map\[0\] \(p\)\.factor: expected a finite number, got '10'"),
        (
            {"datatype": "string", "datasize": 4, "factor": 2},
            r"\.factor: applies to numeric data types, not datatype 'string'",
        ),
        (
            {"datatype": "32float", "mask": 255},
            r"map\[0\] \(p\)\.mask: applies to integer data types, not datatype '32float'",
        ),
        ({"datatype": "16int", "shift": 16}, r"map\[0\] \(p\)\.shift: 16 bits shifts out the whole 16-bit value"),
        ({"datatype": "16int", "shift": 1.5}, r"map\[0\] \(p\)\.shift: expected an integer, got 1\.5"),
        ({"datatype": "16int", "mask": 0}, r"map\[0\] \(p\)\.mask: expected an integer from 1 to"),
        (
            {"datatype": "16int", "translation": [[1]]},
            r"map\[0\] \(p\)\.translation\[0\]: expected a \[value, translation\] pair",
        ),
        (
            {"datatype": "16int", "translation": [["a", 1]]},
            r"\.translation\[0\]: the value to translate must be a number, got 'a'",
        ),
        ({"datatype": "16int", "translation": [[1, "A"], [1, "B"]]}, r"\.translation\[1\]: 1 is translated twice"),
        ({"datatype": "16int", "translation": {"x": 1}}, r"map\[0\] \(p\)\.translation: key 'x' is not a number"),
        ({"datatype": "16int", "translation": []}, r"\.translation: no translations given"),
        ({"datatype": "16int", "facter": 10}, r"map\[0\] \(p\): unknown key\(s\) 'facter'; known: name, type"),
        ({"datatype": "16int", "wordOrder": "middle"}, r"map\[0\] \(p\)\.wordOrder: expected one of 'big', 'little'"),
        ({"datatype": "16int", "min": 5, "max": 1}, r"map\[0\] \(p\)\.min: 5 is above max 1"),
        ({"datatype": "16int", "writable": "yes"}, r"map\[0\] \(p\)\.writable: expected true or false, got 'yes'"),
        ({"datatype": "16int", "type": "input", "writable": True}, r"\.writable: input registers are read-only"),
        ({"datatype": "ignore", "datasize": 2, "factor": 2}, r"an 'ignore' point only pads reads; factor not allowed"),
        (
            {"datatype": "16int", "writable": True, "translation": [[1, "ON"], [2, "ON"]]},
            r"\.translation: several values translate to 'ON', so writing it is ambiguous",
        ),
    ],
)
def test_bad_points_give_errors_naming_the_point_and_key(keys: dict[str, Any], message: str) -> None:
    data = {"name": "p", "type": "holding", "address": 0, **keys}
    with pytest.raises(ModbusMapError, match=message):
        parse_register_map([data])


def test_bad_maps_and_names_are_refused_precisely() -> None:
    with pytest.raises(ModbusMapError, match=r"slave\.map: expected a list of points, got \{\}"):
        parse_register_map({}, "slave.map")
    with pytest.raises(ModbusMapError, match=r"map: the map has no points"):
        parse_register_map([])
    with pytest.raises(ModbusMapError, match=r"map\[1\]: expected a point object, got 3"):
        parse_register_map([{"name": "a", "type": "coil", "address": 0, "datatype": "bits"}, 3])
    with pytest.raises(ModbusMapError, match=r"map\[0\]\.name: expected a name of letters.*got 'bad name'"):
        parse_register_map([{"name": "bad name", "type": "coil", "address": 0, "datatype": "bits"}])
    with pytest.raises(ModbusMapError, match=r"map\[1\] \(a\)\.name: 'a' is used by another point"):
        parse_register_map([{"name": "a", "type": "coil", "address": 0, "datatype": "bits"}] * 2)
    with pytest.raises(ModbusMapError, match=r"map\[0\] \(c\)\.datatype: a coil holds bits: expected 'bits'"):
        parse_register_map([{"name": "c", "type": "coil", "address": 0, "datatype": "16int"}])
    with pytest.raises(ModbusMapError, match=r"\(c\)\.factor: applies to numeric data types, not a single coil"):
        parse_register_map([{"name": "c", "type": "coil", "address": 0, "datatype": "bits", "factor": 2}])


def test_reads_cover_touching_points_and_split_at_gaps_and_limits() -> None:
    points = parse_register_map(
        [
            {"name": "a", "type": "holding", "address": 0, "datatype": "32float"},
            {"name": "pad", "type": "holding", "address": 2, "datatype": "ignore", "datasize": 3},
            {"name": "b", "type": "holding", "address": 5, "datatype": "bits", "mask": 1},
            {"name": "c", "type": "holding", "address": 5, "datatype": "bits", "shift": 1, "mask": 1},
            {"name": "far", "type": "holding", "address": 100, "datatype": "16int"},
            {"name": "big", "type": "holding", "address": 101, "datatype": "string", "datasize": 250},
            {"name": "i", "type": "input", "address": 0, "datatype": "16int"},
            {"name": "k", "type": "coil", "address": 7, "datatype": "bits"},
        ]
    )
    blocks = plan_reads(points)
    assert [(b.type.value, b.address, b.count) for b in blocks] == [
        ("holding", 0, 6),
        ("holding", 100, 1),
        ("holding", 101, 125),
        ("input", 0, 1),
        ("coil", 7, 1),
    ]
    first = blocks[0]
    parts = dict((p.name, list(w)) for p, w in first.split([0x4050, 0, 9, 9, 9, 0b10]))
    assert parts == {"a": [0x4050, 0], "pad": [9, 9, 9], "b": [0b10], "c": [0b10]}
    assert not points[1].published and points[0].published
