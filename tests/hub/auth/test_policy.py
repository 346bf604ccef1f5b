"""The access policy: who may read, write and configure what."""

from __future__ import annotations

import pytest

from gridhub.hub.auth import Access, Grant, PolicyError, Principal, Role, policy
from gridhub.hub.model import Layer, Resource

GRID = Layer.from_document(
    {
        "_id": "grid",
        "label": "Grid",
        "description": "",
        "owner": "dno",
        "collections": [{"name": "feeders"}, {"name": "meters"}],
    }
)
AMI = Layer.from_document(
    {"_id": "ami", "label": "AMI", "description": "", "owner": "retailer", "collections": [{"name": "meters"}]}
)


def who(role: Role, name: str = "someone", grants: tuple[str, ...] = (), kind: str = "user") -> Principal:
    return Principal(f"id-{name}", name, kind, role, tuple(Grant.parse(g) for g in grants))  # type: ignore[arg-type]


def test_grant_syntax_and_coverage() -> None:
    grant = Grant.parse("grid/*:write")
    assert grant.covers("grid", "feeders", Access.READ) and grant.covers("grid", "meters", Access.WRITE)
    assert not grant.covers("ami", "meters", Access.READ)
    read = Grant.parse("grid/feeders:read")
    assert read.covers("grid", "feeders", Access.READ) and not read.covers("grid", "feeders", Access.WRITE)
    assert str(read) == "grid/feeders:read"
    for bad in ("grid", "grid/feeders", "grid/feeders:delete", "/feeders:read"):
        with pytest.raises(ValueError, match="expected LAYER/COLLECTION:read"):
            Grant.parse(bad)


def test_admin_and_operator_reach_every_data_collection() -> None:
    for role in (Role.ADMIN, Role.OPERATOR):
        assert policy.can_access(who(role), GRID, "feeders", Access.WRITE)
        assert policy.can_access(who(role), AMI, "meters", Access.READ)


def test_owner_reaches_its_own_layers_only() -> None:
    dno = who(Role.OWNER, "dno")
    assert policy.can_access(dno, GRID, "feeders", Access.WRITE)
    assert not policy.can_access(dno, AMI, "meters", Access.READ)
    with pytest.raises(PolicyError, match="may not read ami/meters") as refused:
        policy.require_access(dno, AMI, "meters", Access.READ)
    assert refused.value.status == 403
    policy.require_configure_collection(dno, GRID)
    with pytest.raises(PolicyError):
        policy.require_configure_collection(dno, AMI)


def test_consumer_reads_only_what_it_was_granted_and_never_writes() -> None:
    reader = who(Role.CONSUMER, "reader", ("grid/feeders:read", "ami/*:write"))
    assert policy.can_access(reader, GRID, "feeders", Access.READ)
    assert not policy.can_access(reader, GRID, "meters", Access.READ)
    assert not policy.can_access(reader, GRID, "feeders", Access.WRITE)
    assert not policy.can_access(reader, AMI, "meters", Access.WRITE)  # a consumer's write grant does not count
    assert policy.can_access(reader, AMI, "meters", Access.READ)


def test_only_admins_create_layers_and_reserved_layers_are_hidden() -> None:
    policy.require_put_layer(who(Role.ADMIN), "grid")
    with pytest.raises(PolicyError, match="only an admin"):
        policy.require_put_layer(who(Role.OPERATOR), "grid")
    hidden = Layer(id="system0", label="x")  # any layer; the reserved check is on the id prefix
    assert policy.is_reserved_layer("_system") and not policy.is_reserved_layer(hidden.id)
    with pytest.raises(PolicyError) as refused:
        policy.require_put_layer(who(Role.ADMIN), "_system")
    assert refused.value.status == 404


def test_files_belong_to_their_uploader() -> None:
    mine = Resource(id="f1", bucket="fs", filename="a.txt", owner="id-owner")
    owner, other = who(Role.OWNER, "owner"), who(Role.OWNER, "other")
    policy.require_read_resource(owner, mine)
    policy.require_write_resource(owner, mine)
    with pytest.raises(PolicyError) as refused:
        policy.require_read_resource(other, mine)
    assert refused.value.status == 404  # another's file is not even shown to exist
    policy.require_read_resource(who(Role.OPERATOR), mine)
    with pytest.raises(PolicyError, match="consumer"):
        policy.require_upload_resource(who(Role.CONSUMER))


def test_notifications_services_and_site_counters() -> None:
    with pytest.raises(PolicyError):
        policy.require_send_email(who(Role.CONSUMER))
    policy.require_send_email(who(Role.OWNER))
    with pytest.raises(PolicyError):
        policy.require_call_service(who(Role.OWNER), "weather.get")
    policy.require_call_service(who(Role.OPERATOR), "weather.get")
    with pytest.raises(PolicyError):
        policy.require_view_site_stats(who(Role.CONSUMER))
    policy.require_view_site_stats(who(Role.OPERATOR))
    with pytest.raises(PolicyError):
        policy.require_manage_identity(who(Role.OPERATOR))
    policy.require_read_layer(who(Role.CONSUMER, grants=("grid/feeders:read",)), GRID)
    with pytest.raises(PolicyError):
        policy.require_read_layer(who(Role.CONSUMER, grants=("grid/feeders:read",)), AMI)
