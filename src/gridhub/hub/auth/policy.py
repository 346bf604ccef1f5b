"""Who may do what: the hub's one access policy (X-FLEX PLF_003 access control, PLF_008 privacy).

Every route asks this module; no route decides on a role itself. The rules:

- ``admin``: everything, including creating or replacing layers and managing identities.
- ``operator``: reads and writes every data collection, every file, sends notifications,
  calls every gateway service, sees every site's upload counters; does not create layers.
- ``owner`` (data owner): reads, writes and configures the collections of the layers it owns
  (``_layers.owner`` is its name), plus what its grants allow; its own files only.
- ``consumer``: reads only the collections it was granted; writes nothing.

A grant is ``layer/collection:read`` or ``layer/collection:write`` (``*`` for every collection of
the layer); write includes read. Reserved layers (the identities layer holding users, apps, tokens and
sites, and any id starting with ``_``) are invisible through the API: they answer 404 to everyone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from gridhub.hub.model import Layer, Resource

__all__ = [
    "SYSTEM_LAYER",
    "Access",
    "Grant",
    "PolicyError",
    "Principal",
    "Role",
    "can_access",
    "is_reserved_layer",
    "require_access",
    "require_call_service",
    "require_configure_collection",
    "require_manage_identity",
    "require_put_layer",
    "require_read_layer",
    "require_read_resource",
    "require_send_email",
    "require_upload_resource",
    "require_view_site_stats",
    "require_write_resource",
]


class Role(StrEnum):
    """The roles of users and application credentials."""

    ADMIN = "admin"
    OPERATOR = "operator"
    OWNER = "owner"
    CONSUMER = "consumer"


class Access(StrEnum):
    """What a request does to a collection."""

    READ = "read"
    WRITE = "write"


_GRANT = re.compile(
    r"^(?P<layer>[A-Za-z0-9][A-Za-z0-9_.\-]{0,127})/(?P<col>\*|[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}):"
    r"(?P<access>read|write)$"
)


@dataclass(frozen=True)
class Grant:
    """Permission to read (or write) one collection of a layer, or all of them (``*``)."""

    layer: str
    collection: str
    access: Access

    @classmethod
    def parse(cls, text: str) -> Grant:
        """Read ``layer/collection:read|write``; ValueError says what is wrong."""
        match = _GRANT.match(text.strip())
        if match is None:
            raise ValueError(
                f"grant {text!r}: expected LAYER/COLLECTION:read or LAYER/COLLECTION:write (COLLECTION may be *)"
            )
        return cls(match["layer"], match["col"], Access(match["access"]))

    def __str__(self) -> str:
        return f"{self.layer}/{self.collection}:{self.access.value}"

    def covers(self, layer: str, collection: str, access: Access) -> bool:
        """Tell whether this grant allows access to layer/collection."""
        if self.layer != layer or self.collection not in ("*", collection):
            return False
        return self.access == Access.WRITE or access == Access.READ


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user (session token) or an application (appId/keyId)."""

    id: str
    name: str
    kind: Literal["user", "app"]
    role: Role
    grants: tuple[Grant, ...] = ()


class PolicyError(Exception):
    """The policy refuses a request; ``status`` is the HTTP code to answer (403, or 404 to hide)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


SYSTEM_LAYER = "system"
"""The reserved layer of identities. HUB.md names it ``_system``, but the model's layer names must start
with a letter or digit; switch to ``_system`` here once gridhub.hub.model accepts it."""
RESERVED_LAYERS = frozenset({SYSTEM_LAYER, "_system"})
"""Internal layers; with every id starting with ``_``, never served by the API."""


def is_reserved_layer(layer_id: str) -> bool:
    """Tell whether a layer is internal (never served by the API)."""
    return layer_id.startswith("_") or layer_id in RESERVED_LAYERS


def _owns(principal: Principal, layer: Layer) -> bool:
    return principal.role == Role.OWNER and bool(layer.owner) and layer.owner == principal.name


def can_access(principal: Principal, layer: Layer, collection: str, access: Access) -> bool:
    """Tell whether principal may read (or write) one collection of a layer."""
    if is_reserved_layer(layer.id):
        return False
    if principal.role in (Role.ADMIN, Role.OPERATOR) or _owns(principal, layer):
        return True
    if principal.role == Role.CONSUMER and access == Access.WRITE:
        return False
    return any(grant.covers(layer.id, collection, access) for grant in principal.grants)


def require_access(principal: Principal, layer: Layer, collection: str, access: Access) -> None:
    """Raise PolicyError unless principal may read (or write) layer/collection."""
    if is_reserved_layer(layer.id):
        raise PolicyError(f"layer {layer.id!r} does not exist", 404)
    if not can_access(principal, layer, collection, access):
        raise PolicyError(f"{principal.kind} {principal.name!r} may not {access.value} {layer.id}/{collection}")


def require_put_layer(principal: Principal, layer_id: str) -> None:
    """Raise PolicyError unless principal may create or replace a whole layer (admins only)."""
    if is_reserved_layer(layer_id):
        raise PolicyError(f"layer {layer_id!r} is reserved", 404)
    if principal.role != Role.ADMIN:
        raise PolicyError(f"only an admin may create or replace layer {layer_id!r}")


def require_configure_collection(principal: Principal, layer: Layer) -> None:
    """Raise PolicyError unless principal may change the configuration of a layer's collections and series."""
    if is_reserved_layer(layer.id):
        raise PolicyError(f"layer {layer.id!r} does not exist", 404)
    if principal.role != Role.ADMIN and not _owns(principal, layer):
        raise PolicyError(f"only an admin or the owner of layer {layer.id!r} may change its configuration")


def require_read_resource(principal: Principal, resource: Resource) -> None:
    """Raise PolicyError unless principal may read a stored file (operators, or the file's owner)."""
    if principal.role not in (Role.ADMIN, Role.OPERATOR) and resource.owner != principal.id:
        raise PolicyError(f"file {resource.id!r} does not exist in bucket {resource.bucket!r}", 404)


def require_write_resource(principal: Principal, resource: Resource) -> None:
    """Raise PolicyError unless principal may change or delete a stored file."""
    require_read_resource(principal, resource)
    if principal.role == Role.CONSUMER:
        raise PolicyError(f"{principal.kind} {principal.name!r} is a consumer and may not change files")


def require_upload_resource(principal: Principal) -> None:
    """Raise PolicyError unless principal may store new files."""
    if principal.role == Role.CONSUMER:
        raise PolicyError(f"{principal.kind} {principal.name!r} is a consumer and may not upload files")


def require_send_email(principal: Principal) -> None:
    """Raise PolicyError unless principal may send notifications."""
    if principal.role == Role.CONSUMER:
        raise PolicyError(f"{principal.kind} {principal.name!r} is a consumer and may not send notifications")


def require_call_service(principal: Principal, subject: str) -> None:
    """Raise PolicyError unless principal may call a gateway service other than metrics (whose data is checked)."""
    if principal.role not in (Role.ADMIN, Role.OPERATOR):
        raise PolicyError(f"only an admin or operator may call service {subject!r} through the gateway")


def require_view_site_stats(principal: Principal) -> None:
    """Raise PolicyError unless principal may see the upload counters of every site."""
    if principal.role not in (Role.ADMIN, Role.OPERATOR):
        raise PolicyError("only an admin or operator may see site upload counters")


def require_manage_identity(principal: Principal) -> None:
    """Raise PolicyError unless principal may manage users, applications and sites."""
    if principal.role != Role.ADMIN:
        raise PolicyError("only an admin may manage users, applications and sites")


def require_read_layer(principal: Principal, layer: Layer) -> None:
    """Raise PolicyError unless principal may see a layer's configuration (it may read some of its data)."""
    if is_reserved_layer(layer.id):
        raise PolicyError(f"layer {layer.id!r} does not exist", 404)
    if principal.role in (Role.ADMIN, Role.OPERATOR) or _owns(principal, layer):
        return
    if not any(grant.layer == layer.id for grant in principal.grants):
        raise PolicyError(f"{principal.kind} {principal.name!r} may not read layer {layer.id!r}")
