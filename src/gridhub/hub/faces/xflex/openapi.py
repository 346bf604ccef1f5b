"""What FastAPI cannot say by itself in the X-FLEX part of the OpenAPI document (Annex 1).

:func:`finish_openapi` post-processes the generated document (create_app's ``openapi()``):

- security: Annex 1 requires ``X-User-ID`` *and* ``X-Auth-Token`` together (``[{"userId": [],
  "authToken": []}]``); FastAPI lists each ``Security`` dependency as an alternative on its own.
  Every /api/v2 operation but /health and /login gets the two real alternatives: both headers,
  or both ``appId`` and ``keyId`` query parameters.
- errors: validation failures answer 400 with the error envelope, never FastAPI's 422; the 422
  responses and the HTTPValidationError/ValidationError schemas go, and every operation that takes
  input lists 400 :class:`~.schemas.ErrorOut` (and 401 where credentials are needed).
"""

from __future__ import annotations

import json
from typing import Any

from gridhub.hub.faces.xflex.errors import PREFIX

__all__ = ["PUBLIC_PATHS", "XFLEX_SECURITY", "finish_openapi"]

XFLEX_SECURITY: list[dict[str, list[str]]] = [{"userId": [], "authToken": []}, {"appId": [], "keyId": []}]
"""Either both headers (Annex 1's userId + authToken) or both query parameters (section 3.3.1.3)."""
PUBLIC_PATHS = frozenset({f"{PREFIX}/health", f"{PREFIX}/login"})
"""Operations that need no credentials."""

_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
_ERROR_REF = "#/components/schemas/ErrorOut"


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}}}


def _cannot_fail_validation(operation: dict[str, Any]) -> bool:
    """Tell whether FastAPI could never answer 422 here: no body and only unconstrained string parameters."""
    if "requestBody" in operation:
        return False
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        if set(schema) - {"type", "title", "description"} or schema.get("type") != "string":
            return False
    return True


def finish_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Fix the document's X-FLEX security requirements and error responses in place and return it."""
    for path, item in document.get("paths", {}).items():
        ours = path == PREFIX or path.startswith(PREFIX + "/")
        for method, operation in item.items():
            if method not in _METHODS or not isinstance(operation, dict):
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if not ours:
                if _cannot_fail_validation(operation):
                    responses.pop("422", None)
                continue
            responses.pop("422", None)
            if operation.get("parameters") or "requestBody" in operation:
                responses.setdefault("400", _error_response("Bad request: the message says what and where"))
            if path in PUBLIC_PATHS:
                operation.pop("security", None)
            else:
                operation["security"] = [dict(requirement) for requirement in XFLEX_SECURITY]
                responses.setdefault("401", _error_response("Unauthorized"))
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    text = json.dumps(document.get("paths", {}))
    if not any(f"#/components/schemas/{name}" in text for name in _VALIDATION_SCHEMAS):
        for name in _VALIDATION_SCHEMAS:
            schemas.pop(name, None)
    return document
