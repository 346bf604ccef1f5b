"""/resources: the file store (multipart upload, download, info, metadata, delete), on both backends."""

from __future__ import annotations

import dataclasses
import hashlib

from gridhub.hub.auth import Role
from gridhub.hub.settings import HubSettings
from tests.hub.auth.conftest import Clock
from tests.hub.faces.xflex.conftest import API, Hub, start_hub

RES = f"{API}/resources"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def upload(hub: Hub, name: str, content: bytes, headers: dict[str, str], media: str = "image/png") -> str:
    response = hub.client.post(RES, params={"fs": "fs"}, files={"file": (name, content, media)}, headers=headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"_id", "filename"} and body["filename"] == name
    file_id: str = body["_id"]
    return file_id


def test_upload_download_and_info(hub: Hub) -> None:
    file_id = upload(hub, "citric.png", PNG, hub.admin)
    got = hub.client.get(f"{RES}/{file_id}", params={"fs": "fs", "key": "id"}, headers=hub.admin)
    assert got.status_code == 200 and got.content == PNG and got.headers["content-type"] == "image/png"
    by_name = hub.client.get(f"{RES}/citric.png", params={"fs": "fs", "key": "filename"}, headers=hub.admin)
    assert by_name.content == PNG
    info = hub.client.get(f"{RES}/{file_id}/info", params={"fs": "fs", "key": "id"}, headers=hub.admin).json()
    assert info["_id"] == file_id and info["filename"] == "citric.png" and info["length"] == len(PNG)
    assert info["md5"] == hashlib.md5(PNG).hexdigest() and info["metadata"] == {"type": "image/png"}
    assert info["uploadDate"].endswith("Z") and info["chunkSize"] > 0
    (stored,) = [p for p in (hub.settings.resources_dir / "fs").iterdir()]
    assert stored.read_bytes() == PNG


def test_list_filters_by_type_and_newest_file_of_a_name_wins(hub: Hub) -> None:
    upload(hub, "a.png", PNG, hub.admin)
    upload(hub, "notes.txt", b"first", hub.admin, "text/plain")
    upload(hub, "notes.txt", b"second", hub.admin, "text/plain")
    listed = hub.client.get(RES, params={"fs": "fs"}, headers=hub.admin).json()
    assert sorted(f["filename"] for f in listed) == ["a.png", "notes.txt", "notes.txt"]
    texts = hub.client.get(RES, params={"fs": "fs", "type": "text/plain"}, headers=hub.admin).json()
    assert [f["filename"] for f in texts] == ["notes.txt", "notes.txt"]
    newest = hub.client.get(f"{RES}/notes.txt", params={"fs": "fs", "key": "filename"}, headers=hub.admin)
    assert newest.content == b"second"


def test_metadata_patch_merges_and_type_changes_the_media_type(hub: Hub) -> None:
    file_id = upload(hub, "a.png", PNG, hub.admin)
    query = {"fs": "fs", "key": "id"}
    response = hub.client.patch(
        f"{RES}/{file_id}/metadata",
        params=query,
        json={"creationTime": "2019-11-10T07:00:00.000Z", "site": "S1"},
        headers=hub.admin,
    )
    assert response.status_code == 200
    assert response.json()["key"] == {"_id": file_id} and response.json()["update"]["modifiedCount"] == 1
    by_name = hub.client.patch(
        f"{RES}/a.png/metadata",
        params={"fs": "fs", "key": "filename"},
        json={"site": None, "type": "image/x-png"},
        headers=hub.admin,
    )
    assert by_name.json()["key"] == {"filename": "a.png"}
    info = hub.client.get(f"{RES}/{file_id}/info", params=query, headers=hub.admin).json()
    assert info["metadata"] == {"type": "image/x-png", "creationTime": "2019-11-10T07:00:00.000Z"}
    hidden = hub.client.patch(f"{RES}/{file_id}/metadata", params=query, json={"_md5": "x"}, headers=hub.admin)
    assert hidden.status_code == 400


def test_delete_by_id_and_by_filename(hub: Hub) -> None:
    first = upload(hub, "a.png", PNG, hub.admin)
    second = upload(hub, "b.png", PNG, hub.admin)
    gone = hub.client.delete(f"{RES}/{first}", params={"fs": "fs", "key": "id"}, headers=hub.admin)
    assert gone.json() == {"_id": first}
    assert hub.client.get(f"{RES}/{first}", params={"fs": "fs", "key": "id"}, headers=hub.admin).status_code == 404
    assert hub.client.delete(f"{RES}/b.png", params={"fs": "fs", "key": "filename"}, headers=hub.admin).json() == {
        "_id": second
    }
    assert hub.client.get(RES, params={"fs": "fs"}, headers=hub.admin).json() == []
    assert list((hub.settings.resources_dir / "fs").iterdir()) == []


def test_files_are_private_to_their_uploader(hub: Hub) -> None:
    alice, bob = hub.user("alice", Role.OWNER), hub.user("bob", Role.OWNER)
    file_id = upload(hub, "mine.png", PNG, alice)
    query = {"fs": "fs", "key": "id"}
    assert hub.client.get(f"{RES}/{file_id}", params=query, headers=bob).status_code == 404
    assert hub.client.delete(f"{RES}/{file_id}", params=query, headers=bob).status_code == 404
    assert hub.client.get(RES, params={"fs": "fs"}, headers=bob).json() == []
    assert [f["_id"] for f in hub.client.get(RES, params={"fs": "fs"}, headers=alice).json()] == [file_id]
    assert hub.client.get(f"{RES}/{file_id}", params=query, headers=hub.admin).status_code == 200
    consumer = hub.user("carol", Role.CONSUMER)
    refused = hub.client.post(RES, params={"fs": "fs"}, files={"file": ("x", b"x")}, headers=consumer)
    assert refused.status_code == 403


def test_bad_requests(hub: Hub) -> None:
    unknown_bucket = hub.client.get(RES, params={"fs": "photos"}, headers=hub.admin)
    assert unknown_bucket.status_code == 404 and "bucket 'photos'" in unknown_bucket.json()["message"]
    no_bucket = hub.client.get(RES, headers=hub.admin)
    assert no_bucket.status_code == 400 and "fs" in no_bucket.json()["message"]
    bad_key = hub.client.get(f"{RES}/x", params={"fs": "fs", "key": "md5"}, headers=hub.admin)
    assert bad_key.status_code == 400 and "key" in bad_key.json()["message"]
    no_file = hub.client.post(RES, params={"fs": "fs"}, headers=hub.admin)
    assert no_file.status_code == 400 and "file" in no_file.json()["message"]


def test_too_large_files_are_refused_and_nothing_is_kept(hub_settings: HubSettings, clock: Clock) -> None:
    with start_hub(dataclasses.replace(hub_settings, resource_max_mb=0.001), clock) as hub:
        response = hub.client.post(
            RES, params={"fs": "fs"}, files={"file": ("big.bin", b"x" * 2000)}, headers=hub.admin
        )
        assert response.status_code == 413 and "larger than" in response.json()["message"]
        assert hub.client.get(RES, params={"fs": "fs"}, headers=hub.admin).json() == []
        assert list((hub.settings.resources_dir / "fs").iterdir()) == []


def test_metadata_patch_takes_the_annex_example_array_merged_in_order(hub: Hub) -> None:
    file_id = upload(hub, "a.png", PNG, hub.admin)
    query = {"fs": "fs", "key": "id"}
    url = f"{RES}/{file_id}/metadata"
    annex_example = [{"creationTime": "2019-11-10T07:00:00.000Z"}]  # Annex 1's own requestBody example
    response = hub.client.patch(url, params=query, json=annex_example, headers=hub.admin)
    assert response.status_code == 200, response.text
    assert response.json()["update"]["modifiedCount"] == 1
    later_wins = [{"site": "S1", "phase": "L1"}, {"site": "S2", "phase": None}, {"type": "image/x-png"}]
    assert hub.client.patch(url, params=query, json=later_wins, headers=hub.admin).status_code == 200
    info = hub.client.get(f"{RES}/{file_id}/info", params=query, headers=hub.admin).json()
    assert info["metadata"] == {"type": "image/x-png", "creationTime": "2019-11-10T07:00:00.000Z", "site": "S2"}
    not_objects = hub.client.patch(url, params=query, json=[{"site": "S3"}, 5], headers=hub.admin)
    assert not_objects.status_code == 400 and not_objects.json()["status"] == "error"
    after = hub.client.get(f"{RES}/{file_id}/info", params=query, headers=hub.admin).json()
    assert after["metadata"]["site"] == "S2"  # a refused body changes nothing
