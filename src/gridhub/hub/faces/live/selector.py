"""Match one document against a MongoDB-style selector, with the store's semantics, in Python.

Live subscriptions filter change events without asking the database, so this module mirrors
what :class:`gridhub.hub.store.Store` selectors mean (the store checks a selector's syntax first):
equality and ``$eq $ne $gt $gte $lt $lte $in $nin $exists`` on top-level or dotted fields,
``$and``/``$or``; comparisons match values of the same JSON type only (numbers with numbers,
strings with strings); equality with null matches a missing field too; a dotted path never
reaches into arrays; dates are compared in their canonical UTC form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gridhub.hub.model import normalise_dates

__all__ = ["matches"]

_MISSING = object()


def _lookup(doc: Mapping[str, Any], field: str) -> Any:
    value: Any = doc
    for key in field.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(found: Any, wanted: Any) -> bool:
    if wanted is None:
        return found is _MISSING or found is None
    if isinstance(wanted, bool):
        return isinstance(found, bool) and found == wanted
    if _is_number(wanted):
        return _is_number(found) and found == wanted
    return isinstance(found, str) and found == wanted


def _compare(found: Any, op: str, wanted: Any) -> bool:
    if isinstance(wanted, str):
        if not isinstance(found, str):
            return False
    elif not (_is_number(wanted) and _is_number(found)):
        return False
    if op == "$gt":
        return bool(found > wanted)
    if op == "$gte":
        return bool(found >= wanted)
    if op == "$lt":
        return bool(found < wanted)
    return bool(found <= wanted)


def _field(doc: Mapping[str, Any], field: str, cond: Any) -> bool:
    found = _lookup(doc, field)
    if isinstance(cond, Mapping) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond):
        for op, operand in cond.items():
            operand = normalise_dates(operand)
            if op == "$eq":
                ok = _equal(found, operand)
            elif op == "$ne":
                ok = not _equal(found, operand)
            elif op in ("$in", "$nin"):
                hit = any(_equal(found, normalise_dates(v)) for v in operand)
                ok = hit if op == "$in" else not hit
            elif op in ("$gt", "$gte", "$lt", "$lte"):
                ok = _compare(found, op, operand)
            elif op == "$exists":
                ok = (found is not _MISSING) == bool(operand)
            else:
                raise ValueError(f"operator {op} is not supported")
            if not ok:
                return False
        return True
    return _equal(found, normalise_dates(cond))


def matches(selector: Mapping[str, Any] | None, doc: Mapping[str, Any]) -> bool:
    """Tell whether a document (as served, with ``_id``) matches a selector; None matches everything."""
    if selector is None:
        return True
    for key, cond in selector.items():
        if key == "$and":
            if not all(matches(part, doc) for part in cond):
                return False
        elif key == "$or":
            if not any(matches(part, doc) for part in cond):
                return False
        elif not _field(doc, key, cond):
            return False
    return True
