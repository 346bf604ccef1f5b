"""create_app: the faces it mounts and the OpenAPI document, checked against X-FLEX Annex 1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gridhub.hub.app import create_app
from gridhub.hub.auth import SYSTEM_LAYER
from gridhub.hub.settings import HubSettings

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
    secured = openapi["paths"]["/api/v2/{layer}/{collection}"]["get"]["security"]
    assert {"userId": []} in secured and {"authToken": []} in secured
    assert "security" not in openapi["paths"]["/api/v2/login"]["post"]


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
