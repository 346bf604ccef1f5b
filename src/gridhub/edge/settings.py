"""Typed reading of the edge runtime's TOML configuration sections.

Each section's settings class (marketplace, manager, storage, apps) reads its own table with
these helpers, so every error names the file position it came from ("[storage] max_length:
expected an integer from 1 to 15000, got 'abc'") and nothing half-applied survives an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def reject_unknown(data: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse keys this section does not know (a typo must not be silently ignored)."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def get_str(data: Mapping[str, Any], key: str, default: str | None, where: str) -> str:
    """Read a string; a missing key takes the default, or is an error when there is none."""
    value = data.get(key, default)
    if value is None:
        raise ConfigError(f"{where} {key}: required, expected a string")
    if not isinstance(value, str):
        raise ConfigError(f"{where} {key}: expected a string, got {value!r}")
    return value


def get_optional_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    """Read a string that may be absent."""
    if key not in data:
        return None
    return get_str(data, key, None, where)


def get_bool(data: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    """Read a boolean (true/false, not a string)."""
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where} {key}: expected true or false, got {value!r}")
    return value


def get_number(
    data: Mapping[str, Any],
    key: str,
    default: float,
    where: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """Read an integer or float within optional bounds."""
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} {key}: expected a number, got {value!r}")
    _check_range(float(value), key, where, minimum, maximum)
    return float(value)


def get_int(
    data: Mapping[str, Any],
    key: str,
    default: int,
    where: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """Read an integer within optional bounds."""
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} {key}: expected an integer, got {value!r}")
    _check_range(value, key, where, minimum, maximum)
    return value


def get_str_list(data: Mapping[str, Any], key: str, default: list[str], where: str) -> list[str]:
    """Read a list of strings."""
    value = data.get(key, default)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where} {key}: expected a list of strings, got {value!r}")
    return list(value)


def get_table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """Read a sub-table (absent means empty)."""
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} {key}: expected a table, got {value!r}")
    return value


def get_path(data: Mapping[str, Any], key: str, default: str | None, where: str, base_dir: Path) -> Path:
    """Read a path; relative paths are taken from base_dir (the config file's data_dir)."""
    path = Path(get_str(data, key, default, where)).expanduser()
    return path if path.is_absolute() else base_dir / path


def _check_range(value: float, key: str, where: str, minimum: float | None, maximum: float | None) -> None:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "-inf" if minimum is None else f"{minimum:g}"
        high = "inf" if maximum is None else f"{maximum:g}"
        raise ConfigError(f"{where} {key}: expected a value from {low} to {high}, got {value!r}")
