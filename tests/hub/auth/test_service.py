"""AuthService over a real store, on both backends: users, sessions, applications, sites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gridhub.hub.auth import SYSTEM_LAYER, AuthenticationError, AuthService, Grant, IdentityError, Role
from gridhub.hub.auth.service import SITES, TOKENS, USERS
from gridhub.hub.store import Store, open_store
from tests.hub.auth.conftest import Clock


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def auth(store: Store, clock: Clock) -> AuthService:
    return AuthService(store, token_ttl=3600, clock=clock, password_time_cost=1, password_memory_kib=8192)


def test_first_start_creates_the_system_layer_and_no_user(auth: AuthService, store: Store) -> None:
    layer = store.get_layer(SYSTEM_LAYER)
    assert {c.name for c in layer.collections} == {"users", "apps", "tokens", "sites"}
    assert auth.has_users() is False
    AuthService(store)  # a second start keeps what is there
    assert store.get_layer(SYSTEM_LAYER) == layer


def test_password_is_stored_as_an_argon2_hash(auth: AuthService, store: Store) -> None:
    user_id = auth.add_user("alice", "correct horse", Role.ADMIN, email="alice@example.org")
    doc = store.get_document(SYSTEM_LAYER, USERS, user_id).to_document()
    assert doc["password"].startswith("$argon2id$")
    assert "correct horse" not in str(doc)
    assert auth.has_users() is True


@pytest.mark.parametrize("login_as", ["alice", "alice@example.org", "id"])
def test_login_by_id_name_or_email(auth: AuthService, login_as: str) -> None:
    user_id = auth.add_user("alice", "correct horse", "operator", email="alice@example.org")
    session = auth.login(user_id if login_as == "id" else login_as, "correct horse")
    assert session.user_id == user_id
    principal = auth.authenticate(user_id, session.token)
    assert (principal.name, principal.kind, principal.role) == ("alice", "user", Role.OPERATOR)


def test_wrong_password_unknown_user_and_wrong_pairing_are_refused(auth: AuthService) -> None:
    alice = auth.add_user("alice", "correct horse", "admin")
    bob = auth.add_user("bob", "battery staple", "consumer")
    with pytest.raises(AuthenticationError, match="wrong user or password"):
        auth.login("alice", "battery staple")
    with pytest.raises(AuthenticationError, match="wrong user or password"):
        auth.login("carol", "correct horse")
    session = auth.login("bob", "battery staple")
    with pytest.raises(AuthenticationError, match="wrong credentials"):
        auth.authenticate(alice, session.token)  # bob's token does not work as alice
    with pytest.raises(AuthenticationError, match="credentials required"):
        auth.authenticate(bob, None)


def test_session_expires_and_renewal_replaces_the_token(auth: AuthService, clock: Clock, store: Store) -> None:
    user_id = auth.add_user("alice", "correct horse", "admin")
    first = auth.login("alice", "correct horse")
    assert first.expires == clock.now + auth.token_ttl
    clock.advance(minutes=59)
    renewed = auth.renew(user_id, first.token)
    assert renewed.token != first.token and renewed.expires == clock.now + auth.token_ttl
    with pytest.raises(AuthenticationError, match="wrong credentials"):
        auth.authenticate(user_id, first.token)
    clock.advance(minutes=59)
    assert auth.authenticate(user_id, renewed.token).id == user_id  # still valid thanks to the renewal
    clock.advance(minutes=2)
    with pytest.raises(AuthenticationError, match="expired"):
        auth.authenticate(user_id, renewed.token)
    with pytest.raises(AuthenticationError, match="expired"):
        auth.renew(user_id, renewed.token)
    auth.login("alice", "correct horse")  # a login purges the expired tokens
    assert store.count_documents(SYSTEM_LAYER, TOKENS) == 1


def test_logout_ends_the_session(auth: AuthService) -> None:
    user_id = auth.add_user("alice", "correct horse", "admin")
    session = auth.login("alice", "correct horse")
    auth.logout(user_id, session.token)
    with pytest.raises(AuthenticationError):
        auth.authenticate(user_id, session.token)


def test_bad_users_are_refused_and_nothing_is_stored(auth: AuthService) -> None:
    with pytest.raises(IdentityError, match="at least 8"):
        auth.add_user("alice", "short", "admin")
    with pytest.raises(IdentityError, match="role 'root'"):
        auth.add_user("alice", "long enough", "root")
    with pytest.raises(IdentityError, match="grant 'grid'"):
        auth.add_user("alice", "long enough", "consumer", grants=["grid"])
    assert auth.has_users() is False
    auth.add_user("alice", "long enough", "admin")
    with pytest.raises(IdentityError, match="already exists"):
        auth.add_user("alice", "other password", "consumer")


def test_application_credentials(auth: AuthService) -> None:
    app_id, key_id = auth.add_app("dashboard", "consumer", grants=["grid/feeders:read"])
    principal = auth.authenticate(app_id, key_id)
    assert (principal.kind, principal.name, principal.role) == ("app", "dashboard", Role.CONSUMER)
    assert principal.grants == (Grant.parse("grid/feeders:read"),)
    with pytest.raises(AuthenticationError, match="wrong credentials"):
        auth.authenticate(app_id, key_id + "x")
    with pytest.raises(IdentityError, match="already exists"):
        auth.add_app("dashboard")
    with pytest.raises(IdentityError, match="do not expire"):
        auth.renew(app_id, key_id)


def test_site_tokens_are_hashed_verified_and_rotated(auth: AuthService, store: Store) -> None:
    token = auth.issue_site_token("substation-0042")
    site = auth.verify_site_token(token)
    assert site is not None and site.name == "substation-0042"
    stored = store.find_documents(SYSTEM_LAYER, SITES, {"name": "substation-0042"})[0].to_document()
    assert token.split(".", 1)[1] not in str(stored)
    assert auth.verify_site_token(token + "x") is None
    assert auth.verify_site_token("garbage") is None
    rotated = auth.issue_site_token("substation-0042")
    assert auth.verify_site_token(token) is None
    assert auth.verify_site_token(rotated) == site
    assert auth.get_site("substation-0042") == site
    assert [s.name for s in auth.list_sites()] == ["substation-0042"]
    with pytest.raises(IdentityError, match="site name"):
        auth.issue_site_token("a/b")
