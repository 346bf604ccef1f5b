"""Identities of the hub: users, application credentials, session tokens and site upload tokens.

Everything is kept through the :class:`~gridhub.hub.store.Store` interface as documents of the
reserved layer :data:`SYSTEM_LAYER` (collections ``users``, ``apps``, ``tokens``, ``sites``), which the
policy hides from the API. Passwords are argon2id hashes; session tokens, application keys and
site tokens are random 256-bit secrets kept only as SHA-256 digests (a digest suffices for a
random secret and keeps each request's check cheap). Secrets are shown once and never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gridhub.hub.auth.policy import SYSTEM_LAYER, Grant, Principal, Role
from gridhub.hub.model import CollectionSpec, Layer, ModelError, format_time, parse_time, utc_now
from gridhub.hub.store import NotFoundError, Store

__all__ = [
    "APPS",
    "SITES",
    "SYSTEM_LAYER",
    "TOKENS",
    "USERS",
    "AuthService",
    "AuthenticationError",
    "IdentityError",
    "Session",
    "Site",
]

logger = logging.getLogger(__name__)

USERS, APPS, TOKENS, SITES = "users", "apps", "tokens", "sites"
MIN_PASSWORD_LENGTH = 8


class AuthenticationError(Exception):
    """The credentials are missing, wrong or expired; the message says which (never the secret)."""


class IdentityError(ValueError):
    """A user, application or site cannot be created as asked; the message says why."""


@dataclass(frozen=True)
class Session:
    """A login session: the X-FLEX userId and authToken, and when the token expires."""

    user_id: str
    token: str
    expires: datetime


@dataclass(frozen=True)
class Site:
    """A substation site allowed to upload to the hub."""

    id: str
    name: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _new_id() -> str:
    return uuid.uuid4().hex[:24]


def _grants(values: object) -> tuple[Grant, ...]:
    if not isinstance(values, list):
        return ()
    out = []
    for value in values:
        try:
            out.append(Grant.parse(str(value)))
        except ValueError:
            logger.warning("ignoring a stored grant that does not parse: %r", value)
    return tuple(out)


class AuthService:
    """Create and check identities; one per hub process, over the hub's store."""

    def __init__(
        self,
        store: Store,
        *,
        token_ttl: float = 86_400.0,
        clock: Callable[[], datetime] = utc_now,
        password_time_cost: int = 3,
        password_memory_kib: int = 65_536,
    ) -> None:
        self.store = store
        self.token_ttl = timedelta(seconds=token_ttl)
        self.clock = clock
        self._hasher = PasswordHasher(time_cost=password_time_cost, memory_cost=password_memory_kib)
        self._dummy_hash: str | None = None
        self.ensure_system_layer()

    # -- the identities layer
    def ensure_system_layer(self) -> None:
        """Create the reserved layer holding identities when it does not exist yet."""
        try:
            self.store.get_layer(SYSTEM_LAYER)
            return
        except NotFoundError:
            pass
        self.store.put_layer(
            Layer(
                id=SYSTEM_LAYER,
                label="gridhub identities",
                description="Users, application credentials, session tokens and sites (internal).",
                collections=tuple(CollectionSpec(name) for name in (USERS, APPS, TOKENS, SITES)),
            )
        )
        logger.info("created the %s layer", SYSTEM_LAYER)

    def _find(self, collection: str, selector: dict[str, Any]) -> list[dict[str, Any]]:
        return [a.to_document() for a in self.store.find_documents(SYSTEM_LAYER, collection, selector)]

    def _get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        try:
            return self.store.get_document(SYSTEM_LAYER, collection, doc_id).to_document()
        except NotFoundError:
            return None

    def _insert(self, collection: str, doc: dict[str, Any]) -> None:
        report = self.store.insert_documents(SYSTEM_LAYER, collection, [doc])
        if not report.ok:
            raise IdentityError(report.errors[0].message)

    # -- users
    def has_users(self) -> bool:
        """Tell whether at least one user exists (the first run has none)."""
        return self.store.count_documents(SYSTEM_LAYER, USERS) > 0

    def add_user(
        self, name: str, password: str, role: Role | str, *, email: str = "", grants: Iterable[str | Grant] = ()
    ) -> str:
        """Create a user with an argon2 password hash; return its id (the X-FLEX userId)."""
        role = self._role(role)
        parsed = self._parse_grants(grants)
        if not name or not name.strip() or name != name.strip() or len(name) > 128:
            raise IdentityError(f"user name {name!r}: expected 1-128 characters without outer spaces")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise IdentityError(f"user {name!r}: the password must have at least {MIN_PASSWORD_LENGTH} characters")
        clash = {"$or": [{"name": name}, {"email": name}] + ([{"name": email}, {"email": email}] if email else [])}
        if self._find(USERS, clash):
            raise IdentityError(f"user {name!r}: a user with this name or email already exists")
        user_id = _new_id()
        self._insert(
            USERS,
            {
                "_id": user_id,
                "name": name,
                "email": email,
                "role": role.value,
                "password": self._hasher.hash(password),
                "grants": [str(g) for g in parsed],
                "created": format_time(self.clock()),
            },
        )
        logger.info("user %s added with role %s", name, role.value)
        return user_id

    def user_principal(self, user_id: str) -> Principal | None:
        """Return the principal of a user id, or None."""
        doc = self._get(USERS, user_id)
        if doc is None:
            return None
        return Principal(doc["_id"], doc["name"], "user", Role(doc["role"]), _grants(doc.get("grants")))

    def login(self, user: str, password: str) -> Session:
        """Check a user (id, name or email) and password; store and return a new session token."""
        found = self._find(USERS, {"$or": [{"_id": user}, {"name": user}, {"email": user}]}) if user else []
        if len(found) != 1:
            self._burn_time(password)
            raise AuthenticationError("wrong user or password")
        doc = found[0]
        try:
            self._hasher.verify(doc["password"], password)
        except (VerificationError, InvalidHashError):
            raise AuthenticationError("wrong user or password") from None
        if self._hasher.check_needs_rehash(doc["password"]):
            self.store.patch_document(SYSTEM_LAYER, USERS, doc["_id"], {"password": self._hasher.hash(password)})
        self._purge_expired()
        return self._new_session(doc["_id"])

    def _burn_time(self, password: str) -> None:
        """Verify against a dummy hash so unknown users take as long as wrong passwords."""
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_hex(16))
        with contextlib.suppress(VerificationError):
            self._hasher.verify(self._dummy_hash, password)

    def _new_session(self, user_id: str) -> Session:
        token = secrets.token_urlsafe(32)
        expires = self.clock() + self.token_ttl
        self._insert(
            TOKENS,
            {
                "_id": _digest(token),
                "user": user_id,
                "expires": format_time(expires),
                "created": format_time(self.clock()),
            },
        )
        return Session(user_id, token, expires)

    def _purge_expired(self) -> None:
        removed = self.store.delete_documents(SYSTEM_LAYER, TOKENS, {"expires": {"$lt": format_time(self.clock())}})
        if removed:
            logger.debug("removed %s expired session tokens", removed)

    def renew(self, user_id: str, token: str) -> Session:
        """Replace a valid session token by a new one with a fresh expiry (X-FLEX renewToken)."""
        principal = self.authenticate(user_id, token)
        if principal.kind != "user":
            raise IdentityError("application credentials do not expire and need no renewal")
        self.store.delete_document(SYSTEM_LAYER, TOKENS, _digest(token))
        return self._new_session(principal.id)

    def logout(self, user_id: str, token: str) -> None:
        """End a session: its token stops working."""
        self.authenticate(user_id, token)
        self.store.delete_document(SYSTEM_LAYER, TOKENS, _digest(token))

    # -- authentication of requests
    def authenticate(self, principal_id: str | None, secret: str | None) -> Principal:
        """Return who a (userId, authToken) or (appId, keyId) pair belongs to; AuthenticationError if nobody."""
        if not principal_id or not secret:
            raise AuthenticationError(
                "credentials required: X-User-ID and X-Auth-Token headers, or appId and keyId query parameters"
            )
        app = self._get(APPS, principal_id)
        if app is not None:
            if hmac.compare_digest(app.get("key", ""), _digest(secret)):
                return Principal(app["_id"], app["name"], "app", Role(app["role"]), _grants(app.get("grants")))
            raise AuthenticationError("wrong credentials")
        session = self._get(TOKENS, _digest(secret))
        if session is None or not hmac.compare_digest(str(session.get("user", "")), principal_id):
            raise AuthenticationError("wrong credentials")
        try:
            expires = parse_time(session.get("expires"), "expires")
        except ModelError:
            raise AuthenticationError("wrong credentials") from None
        if expires <= self.clock():
            raise AuthenticationError(f"session token expired at {format_time(expires)}; log in again")
        principal = self.user_principal(principal_id)
        if principal is None:
            raise AuthenticationError("wrong credentials")
        return principal

    # -- application credentials
    def add_app(
        self, name: str, role: Role | str = Role.CONSUMER, *, grants: Iterable[str | Grant] = ()
    ) -> tuple[str, str]:
        """Register an application; return (appId, keyId). The keyId is shown only now."""
        role = self._role(role)
        parsed = self._parse_grants(grants)
        if not name or name != name.strip() or len(name) > 128:
            raise IdentityError(f"application name {name!r}: expected 1-128 characters without outer spaces")
        if self._find(APPS, {"name": name}):
            raise IdentityError(f"application {name!r} already exists")
        app_id, key_id = _new_id(), secrets.token_urlsafe(32)
        self._insert(
            APPS,
            {
                "_id": app_id,
                "name": name,
                "role": role.value,
                "key": _digest(key_id),
                "grants": [str(g) for g in parsed],
                "created": format_time(self.clock()),
            },
        )
        logger.info("application %s added with role %s", name, role.value)
        return app_id, key_id

    # -- sites
    def issue_site_token(self, name: str) -> str:
        """Create the site (or keep it) and issue its upload token, replacing any earlier one; return the token."""
        if not name or name != name.strip() or len(name) > 128 or "/" in name:
            raise IdentityError(f"site name {name!r}: expected 1-128 characters without '/' or outer spaces")
        secret = secrets.token_urlsafe(32)
        found = self._find(SITES, {"name": name})
        if found:
            site_id = found[0]["_id"]
            self.store.patch_document(SYSTEM_LAYER, SITES, site_id, {"token": _digest(secret)})
            logger.info("site %s: upload token replaced", name)
        else:
            site_id = _new_id()
            self._insert(
                SITES, {"_id": site_id, "name": name, "token": _digest(secret), "created": format_time(self.clock())}
            )
            logger.info("site %s added", name)
        return f"{site_id}.{secret}"

    def verify_site_token(self, token: str) -> Site | None:
        """Return the site an upload token belongs to, or None."""
        site_id, dot, secret = token.partition(".")
        if not dot or not site_id or not secret:
            return None
        doc = self._get(SITES, site_id)
        if doc is None or not hmac.compare_digest(str(doc.get("token", "")), _digest(secret)):
            return None
        return Site(doc["_id"], doc["name"])

    def record_site_certificate(self, name: str, fingerprint: str) -> None:
        """Make the certificate of that SHA-256 fingerprint the site's only accepted client certificate."""
        found = self._find(SITES, {"name": name})
        if not found:
            raise IdentityError(f"no site named {name!r}; add it first with `gridhub hub site add`")
        self.store.patch_document(SYSTEM_LAYER, SITES, found[0]["_id"], {"cert": fingerprint.lower()})
        logger.info("site %s: client certificate %s… recorded", name, fingerprint[:16])

    def verify_site_certificate(self, common_name: str | None, fingerprint: str) -> Site:
        """Return the site a verified client certificate belongs to; AuthenticationError says why not.

        The certificate's Common Name names the site and its fingerprint must be the one recorded
        when it was issued: a removed site, or a certificate replaced by a newer one, is refused.
        """
        if not common_name:
            raise AuthenticationError("the client certificate has no Common Name (expected the site name)")
        found = self._find(SITES, {"name": common_name})
        if not found:
            raise AuthenticationError(f"client certificate CN={common_name}: no such site (removed or never added)")
        stored = str(found[0].get("cert", ""))
        if not stored or not hmac.compare_digest(stored, fingerprint.lower()):
            raise AuthenticationError(
                f"client certificate CN={common_name}: not the site's current certificate (revoked or replaced; "
                "issue one with `gridhub hub site cert`)"
            )
        return Site(found[0]["_id"], found[0]["name"])

    def remove_site(self, name: str) -> bool:
        """Remove a site: its token and its client certificate stop working at once; False when unknown."""
        found = self._find(SITES, {"name": name})
        for doc in found:
            self.store.delete_document(SYSTEM_LAYER, SITES, doc["_id"])
        if found:
            logger.info("site %s removed", name)
        return bool(found)

    def get_site(self, name: str) -> Site | None:
        """Return the site of that name, or None."""
        found = self._find(SITES, {"name": name})
        return Site(found[0]["_id"], found[0]["name"]) if found else None

    def list_sites(self) -> list[Site]:
        """Return every site, by name."""
        return sorted((Site(d["_id"], d["name"]) for d in self._find(SITES, {})), key=lambda s: s.name)

    # -- helpers
    @staticmethod
    def _role(role: Role | str) -> Role:
        try:
            return Role(role)
        except ValueError:
            raise IdentityError(f"role {role!r}: expected one of {', '.join(r.value for r in Role)}") from None

    @staticmethod
    def _parse_grants(grants: Iterable[str | Grant]) -> list[Grant]:
        out = []
        for grant in grants:
            try:
                out.append(grant if isinstance(grant, Grant) else Grant.parse(grant))
            except ValueError as exc:
                raise IdentityError(str(exc)) from None
        return out
