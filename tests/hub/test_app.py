"""create_app: the faces it mounts and the OpenAPI document, checked against X-FLEX Annex 1."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gridhub.hub.app import create_app
from gridhub.hub.auth import SYSTEM_LAYER
from gridhub.hub.settings import HubSettings
from tests.conftest import REFERENCE_DIR, service_absent

# Annex 1 paths (relative to /api/v2), their methods and operationIds.
ANNEX_OPERATIONS = {
    ("/health", "get"): "health",
    ("/login", "post"): "login",
    ("/{layer}/{collection}", "get"): "layer_col_get",
    ("/{layer}/{collection}", "post"): "layer_col_post",
    ("/{layer}/{collection}", "patch"): "layer_col_patch",
    ("/{layer}/{collection}", "delete"): None,
    ("/{layer}/{collection}/{id}", "get"): "layer_col_id_get",
    ("/{layer}/{collection}/{id}", "patch"): "layer_col_id_patch",
    ("/{layer}/{collection}/{id}", "delete"): "layer_col_id_delete",
    ("/{layer}/{collection}/field/{field}", "get"): "layer_col_field",
    ("/{layer}/{collection}/{id}/field/{field}", "get"): "layer_col_id_field",
    ("/range/{layer}/{collection}", "get"): "range",
    ("/near/{layer}/{collection}", "get"): "near",
    ("/bulk/{layer}/{collection}", "post"): "bulk",
    ("/config/{layer}/{item}", "get"): "config_get",
    ("/config/{layer}/{item}", "put"): "config_put",
    ("/notify/twitter", "post"): "twitter",
    ("/notify/email", "post"): "mail",
    ("/resources", "get"): "resources_get",
    ("/resources", "post"): "resources_post",
    ("/resources/{id}", "get"): "resources_id_get",
    ("/resources/{id}", "delete"): "resources_id_del",
    ("/resources/{id}/info", "get"): "resources_id_info",
    ("/resources/{id}/metadata", "patch"): "resources_id_metadata",
    ("/gateway", "post"): None,
}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = HubSettings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'hub.sqlite'}")
    with TestClient(create_app(settings)) as running:
        yield running


@pytest.fixture
def openapi(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def schema(openapi: dict[str, Any], operation: dict[str, Any], status: str = "200") -> dict[str, Any]:
    ref: dict[str, Any] = operation["responses"][status]["content"]["application/json"]["schema"]
    while "$ref" in ref:
        ref = openapi["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
    if ref.get("type") == "array":
        item: dict[str, Any] = ref["items"]
        if "$ref" in item:
            item = openapi["components"]["schemas"][item["$ref"].rsplit("/", 1)[1]]
        return item
    return ref


def resolve(openapi: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "anyOf" in node:
        node = next(n for n in node["anyOf"] if n.get("type") != "null")
    while "$ref" in node:
        node = openapi["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_every_annex_operation_is_served(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]
    for (path, method), operation_id in ANNEX_OPERATIONS.items():
        assert method in paths.get(f"/api/v2{path}", {}), f"{method.upper()} {path} is missing"
        if operation_id is not None:
            assert paths[f"/api/v2{path}"][method]["operationId"] == operation_id


def test_security_schemes_are_the_annex_headers_plus_the_query_form(openapi: dict[str, Any]) -> None:
    schemes = openapi["components"]["securitySchemes"]
    assert schemes["userId"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-User-ID",
        "description": "User ID or App ID",
    }
    assert schemes["authToken"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-Auth-Token",
        "description": "Authentication token or Key ID",
    }
    assert (schemes["appId"]["in"], schemes["keyId"]["in"]) == ("query", "query")
    assert (schemes["appId"]["name"], schemes["keyId"]["name"]) == ("appId", "keyId")


def test_security_needs_both_members_of_a_credential_pair(openapi: dict[str, Any]) -> None:
    both = [{"userId": [], "authToken": []}, {"appId": [], "keyId": []}]  # AND within an entry, OR across
    for path, item in openapi["paths"].items():
        if not path.startswith("/api/v2"):
            continue
        for method, operation in item.items():
            if path in ("/api/v2/health", "/api/v2/login"):
                assert "security" not in operation, f"{method.upper()} {path} needs no credentials"
            else:
                assert operation["security"] == both, f"{method.upper()} {path}"
                assert "401" in operation["responses"], f"{method.upper()} {path}"


def test_response_shapes_match_the_annex(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]
    login = schema(openapi, paths["/api/v2/login"]["post"])
    assert set(resolve(openapi, login["properties"]["data"])["properties"]) >= {"userId", "authToken"}
    inserted = schema(openapi, paths["/api/v2/{layer}/{collection}"]["post"])
    assert set(inserted["properties"]) == {"status", "message", "data"}
    report = resolve(openapi, inserted["properties"]["data"])["properties"]
    assert {"ok", "insertedIds", "err", "errorIds"} <= set(report)
    updated = resolve(openapi, schema(openapi, paths["/api/v2/{layer}/{collection}"]["patch"])["properties"]["data"])
    assert {"ok", "updatedIds", "err", "errorIds"} <= set(updated["properties"])
    deleted = resolve(openapi, schema(openapi, paths["/api/v2/{layer}/{collection}"]["delete"])["properties"]["data"])
    assert set(deleted["properties"]) == {"ok", "deletedIds", "err", "errorIds"}
    bulk = resolve(openapi, schema(openapi, paths["/api/v2/bulk/{layer}/{collection}"]["post"])["properties"]["data"])
    assert {"ok", "insertedIds", "updatedIds", "err", "errorIds"} <= set(bulk["properties"])
    file = schema(openapi, paths["/api/v2/resources/{id}/info"]["get"])
    assert set(file["properties"]) == {"_id", "length", "chunkSize", "uploadDate", "md5", "filename", "metadata"}
    assert schema(openapi, paths["/api/v2/resources"]["get"])["properties"].keys() == file["properties"].keys()
    assert set(schema(openapi, paths["/api/v2/resources"]["post"], "201")["properties"]) == {"_id", "filename"}
    assert set(schema(openapi, paths["/api/v2/resources/{id}/metadata"]["patch"])["properties"]) == {"key", "update"}
    for path, method in (("/api/v2/{layer}/{collection}", "get"), ("/api/v2/login", "post")):
        error = schema(openapi, paths[path][method], "401")
        assert set(error["properties"]) == {"status", "message"}


def test_query_parameters_match_the_annex(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]

    def params(path: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in paths[f"/api/v2{path}"]["get"]["parameters"] if p["in"] == "query"}

    ranged = params("/range/{layer}/{collection}")
    assert ranged["from"]["required"] and ranged["to"]["required"]
    assert ranged["field"]["schema"]["default"] == "timestamp"
    near = params("/near/{layer}/{collection}")
    assert {n: near[n]["required"] for n in ("lat", "lon", "distance")} == {"lat": True, "lon": True, "distance": True}
    assert (near["lat"]["schema"]["minimum"], near["lat"]["schema"]["maximum"]) == (-90, 90)
    files = params("/resources/{id}")
    assert files["fs"]["required"] and files["key"]["schema"]["enum"] == ["id", "filename"]


def test_faces_are_mounted_and_the_api_root_serves_the_docs(client: TestClient) -> None:
    root = client.get("/api/v2")
    assert root.status_code == 200 and "swagger" in root.text.lower()
    assert client.get("/docs").status_code == 200
    upload = client.post("/edge/v1/upload", json={"Batch": "b", "Tables": []})
    assert upload.status_code == 401  # the edge upload face answers (no site token)
    store = client.app.state.ctx.store  # type: ignore[attr-defined]
    assert store.get_layer(SYSTEM_LAYER).label == "gridhub identities"


def test_validation_errors_are_documented_as_the_400_envelope_never_422(openapi: dict[str, Any]) -> None:
    assert '"422"' not in json.dumps(openapi["paths"])  # the hub never answers 422 on these routes
    assert not {"HTTPValidationError", "ValidationError"} & set(openapi["components"]["schemas"])
    error = openapi["components"]["schemas"]["ErrorOut"]
    assert set(error["properties"]) == {"status", "message"}
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            if path.startswith("/api/v2") and (operation.get("parameters") or "requestBody" in operation):
                bad = operation["responses"]["400"]["content"]["application/json"]["schema"]
                assert bad == {"$ref": "#/components/schemas/ErrorOut"}, f"{method.upper()} {path}"


def test_the_document_is_valid_openapi_3(openapi: dict[str, Any]) -> None:
    try:
        from openapi_spec_validator import validate  # type: ignore[import-not-found, unused-ignore]
    except ImportError:  # not a dependency: the structural checks below still hold
        pass
    else:
        validate(openapi)
    assert openapi["openapi"].startswith("3.") and openapi["info"]["title"] and openapi["info"]["version"]
    schemes = openapi["components"]["securitySchemes"]
    operation_ids: list[str] = []
    for ref in re.findall(r'"\$ref": "([^"]+)"', json.dumps(openapi)):
        node: Any = openapi
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
            node = node[part]
    for path, item in openapi["paths"].items():
        templated = set(re.findall(r"\{(\w+)\}", path))
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            assert method in {"get", "put", "post", "delete", "options", "head", "patch", "trace"}, where
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == templated, where
            for parameter in operation.get("parameters", []):
                assert parameter["in"] in {"query", "header", "path", "cookie"} and "schema" in parameter, where
                assert parameter["in"] != "path" or parameter["required"] is True, where
            assert operation["responses"], where
            for status, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d|default", status) and response["description"], where
            for requirement in operation.get("security", []):
                assert set(requirement) <= set(schemes), where
            if "operationId" in operation:
                operation_ids.append(operation["operationId"])
    assert len(operation_ids) == len(set(operation_ids))


def test_the_edge_upload_face_is_documented(openapi: dict[str, Any]) -> None:
    upload = openapi["paths"]["/edge/v1/upload"]["post"]
    assert openapi["components"]["securitySchemes"]["siteToken"] | {"description": ""} == {
        "type": "http",
        "scheme": "bearer",
        "description": "",
    }
    assert upload["security"] == [{"siteToken": []}]
    batch = upload["requestBody"]["content"]["application/json"]["schema"]
    assert batch["required"] == ["Tables"] and set(batch["properties"]) == {"Batch", "Tables"}
    table = batch["properties"]["Tables"]["items"]
    assert set(table["properties"]) == {"TableName", "TableRows"}
    assert set(table["properties"]["TableRows"]["items"]["required"]) == {"ID", "Timestamp", "Data"}
    assert "gzip" in upload["requestBody"]["description"]
    encoding = next(p for p in upload["parameters"] if p["name"] == "Content-Encoding")
    assert "gzip" in encoding["schema"]["enum"]
    assert {"200", "400", "401", "413", "503"} <= set(upload["responses"])
    assert set(upload["responses"]["400"]["content"]["application/json"]["schema"]["properties"]) == {
        "status",
        "message",
    }
    stats = openapi["paths"]["/edge/v1/sites/{name}/stats"]["get"]
    assert {"siteToken": []} in stats["security"] and "422" not in stats["responses"]


SEED = REFERENCE_DIR.parent / "seeds" / "001_3faa2d3ce1633dcc.txt"


def annex_operations(text: str) -> dict[tuple[str, str], set[str]]:
    """Read Annex 1's paths, methods and parameter names out of the seed text (the JSON is split by page breaks)."""
    lines = text[text.index("## ANNEX 1") :].splitlines()
    components = next(i for i, line in enumerate(lines) if re.match(r'^\s*"parameters": \{', line))
    component_names: dict[str, str] = {}
    key = None
    for line in lines[components + 1 :]:
        if '"securitySchemes"' in line:
            break
        if found := re.match(r'^\s*"(\w+)": \{\s*$', line):
            key = found[1]
        if (found := re.search(r'"name": "(\w+)"', line)) and key:
            component_names.setdefault(key, found[1])
    operations: dict[tuple[str, str], set[str]] = {}
    path = method = None
    for i, line in enumerate(lines[:components]):
        if found := re.match(r'^\s*"(/[^"]*)": \{', line):
            path, method = found[1], None
        elif path and (found := re.search(r'"(get|post|put|patch|delete)": \{', line)):
            method = found[1]
            operations[(path, method)] = set()
        elif path and method and (found := re.search(r"#/components/parameters/(\w+)", line)):
            operations[(path, method)].add(component_names[found[1]])
        elif (
            path
            and method
            and (found := re.search(r'"name": "(\w+)"', line))
            and re.search(r'"in": "(query|path|header)"', " ".join(lines[max(0, i - 1) : i + 2]))
        ):
            operations[(path, method)].add(found[1])  # an inline parameter, not an example's "name"
    return operations


def test_annex_operations_keep_their_parameter_names(openapi: dict[str, Any]) -> None:
    if not SEED.is_file():
        service_absent(f"the X-FLEX specification {SEED} is absent")
    annex = annex_operations(SEED.read_text(encoding="utf-8"))
    assert len(annex) >= 20 and annex[("/range/{layer}/{collection}", "get")] >= {"from", "to", "field"}
    for (path, method), names in annex.items():
        operation = openapi["paths"].get(f"/api/v2{path}", {}).get(method)
        assert operation is not None, f"{method.upper()} {path} of Annex 1 is not served"
        served = {p["name"] for p in operation.get("parameters", [])}
        assert names <= served, f"{method.upper()} {path}: {sorted(names - served)} missing"
    text = SEED.read_text(encoding="utf-8")
    schemes = text[text.index('"securitySchemes"') :]
    for scheme, header in (("userId", "X-User-ID"), ("authToken", "X-Auth-Token")):
        block = schemes[schemes.index(f'"{scheme}"') :][:300]
        assert f'"name": "{header}"' in block and '"in": "header"' in block
        served = openapi["components"]["securitySchemes"][scheme]
        assert (served["name"], served["in"]) == (header, "header")
