"""The Data Marketplace: the MQTT broker every LV-CAP app talks through (sections 3, 5.3 and 8.1).

Three ways to run it, chosen by ``[marketplace] mode``:

- ``managed``: gridhub writes mosquitto.conf, a password file, an ACL file (and a dynamic-security
  file, see below) into ``<data_dir>/marketplace/`` and runs the mosquitto binary on the
  configured port, as LV-CAP itself does;
- ``embedded``: an amqtt broker runs in a child process of the runtime (on an asyncio event loop
  in a daemon thread there), with gridhub's auth plugin and a synchronous topic check enforcing the
  same rules; the app kit's harness runs the same broker in its own process to observe it;
- ``external``: an operator runs the broker; gridhub only renders the files to install.

Access control (section 3: "ACLs are used on the MQTT broker to secure it, preventing
Applications from publishing on and subscribing to topics they should not"): an app's
username is its APID (Table 4) and it may publish only in its own IID's namespace, the
topics the API names for its IID. It may subscribe to anything except other apps'
``config/response/<IID>`` and ``command/<IID>``. The core services have full access.

Mosquitto 2.0's ``acl_file`` filters publishes and deliveries but never refuses a SUBSCRIBE
(its subscribe check is a FIXME that always allows), so in managed mode the subscription
refusal (SUBACK 0x80) comes from mosquitto's bundled dynamic-security plugin, loaded with a
generated role per app that only denies subscriptions; everything else it defers to the
password and ACL files. Without the plugin, such a subscription is granted but nothing is ever
delivered on it (the ACL file's read denial), which keeps the data private all the same.

Client ids (Table 4: client id = APID): MQTT allows one connection per client id, so a client that
connects with another app's client id drops that app's connection. An app account is therefore
bound to the client ids the runtime gives its instances (``MarketplaceUser.client_ids``): the
embedded broker refuses any other before it touches the existing session, and in managed mode the
dynamic-security plugin's ``clientid`` does the same (it can bind one client id per username, so an
account shared by several instances of one APID stays unbound there). Core accounts stay unbound:
their credentials never leave the runtime, and operator tools use them with client ids of their own.

Managed Mosquitto keeps its sessions and queued messages on disk (``persistence true``, saved
every ``AUTOSAVE_INTERVAL`` seconds and on SIGTERM), so messages it acknowledged to a publisher
but had not yet delivered to the storage survive a restart of the runtime.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import getpass
import hashlib
import hmac
import json
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id
from cryptography import x509
from cryptography.x509.oid import NameOID

from gridhub.edge import certs
from gridhub.edge.settings import ConfigError, get_bool, get_int, get_str, reject_unknown
from gridhub.sdk.mqtt import BrokerAddress, MarketplaceError, TlsSettings

log = logging.getLogger(__name__)

Mode = Literal["managed", "embedded", "external"]
AclAction = Literal["publish", "subscribe"]
MODES: tuple[Mode, ...] = ("managed", "embedded", "external")
MANAGER_USER = "gridhub-manager"
STORAGE_USER = "gridhub-storage"
CORE_USERNAMES: tuple[str, ...] = (MANAGER_USER, STORAGE_USER)
# mosquitto drops QoS 0 messages for a slow subscriber beyond max_queued_messages (default 1000);
# limits.md measured a third of a fast stream lost to a paho subscriber with the default.
MAX_QUEUED_MESSAGES = 100_000
# The storage acknowledges a message only after committing it, so the broker's limit of QoS 1/2
# messages in flight to one client (mosquitto's default: 20) caps how many it can commit
# together; with 20, commits held ~10 rows and ingest ran at 0.6x the raw broker rate.
MAX_INFLIGHT_MESSAGES = 1000
# Managed Mosquitto writes its in-memory state (sessions, queued messages) to mosquitto.db this
# often and on SIGTERM: after a power loss, what it accepted in the last interval and had not yet
# delivered to (and had committed by) the storage can be lost.
AUTOSAVE_INTERVAL = 5
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for the $7$ format
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
DYNSEC_PLUGIN_CANDIDATES: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/arm-linux-gnueabihf/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
_SETTING_KEYS = (
    "mode", "host", "port", "tls", "tls_port", "ca_file", "cert_file", "key_file", "mosquitto", "username", "password",
)  # fmt: skip
_USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_IID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def find_mosquitto(name: str = "mosquitto") -> str | None:
    """Return the path of the mosquitto binary (PATH, then /usr/sbin), or None."""
    found = shutil.which(name)
    if found is None and "/" not in name:
        for folder in ("/usr/sbin", "/usr/local/sbin"):
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return found


def find_dynsec_plugin() -> Path | None:
    """Return mosquitto's dynamic-security plugin library when installed, else None."""
    for candidate in DYNSEC_PLUGIN_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


@dataclass(frozen=True)
class MarketplaceSettings:
    """The ``[marketplace]`` section of the edge configuration file."""

    mode: Mode = "embedded"
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    tls_port: int = 8883
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    mosquitto: str = "mosquitto"
    username: str = ""
    password: str = field(default="", repr=False)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str, base_dir: Path) -> MarketplaceSettings:
        """Read the section; mode defaults to managed when a mosquitto binary is found, else embedded."""
        reject_unknown(data, _SETTING_KEYS, where)
        mosquitto = get_str(data, "mosquitto", "mosquitto", where)
        if not mosquitto:
            raise ConfigError(f"{where} mosquitto: expected the mosquitto binary's name or path, got ''")
        default_mode: Mode = "managed" if find_mosquitto(mosquitto) else "embedded"
        mode = get_str(data, "mode", default_mode, where)
        if mode not in MODES:
            raise ConfigError(f"{where} mode: expected one of {', '.join(MODES)}, got {mode!r}")
        host = get_str(data, "host", "127.0.0.1", where)
        if not host.strip():
            raise ConfigError(f"{where} host: expected a host name or IP address, got ''")
        port = get_int(data, "port", 1883, where, minimum=1, maximum=65535)
        tls = get_bool(data, "tls", False, where)
        tls_port = get_int(data, "tls_port", 8883, where, minimum=1, maximum=65535)
        if tls and tls_port == port:
            raise ConfigError(f"{where} tls_port: must differ from port ({port})")
        files = {key: _optional_path(data, key, where, base_dir) for key in ("ca_file", "cert_file", "key_file")}
        given = [key for key, value in files.items() if value is not None]
        if given and len(given) != 3:
            missing = sorted(set(files) - set(given))
            raise ConfigError(
                f"{where} {', '.join(missing)}: give ca_file, cert_file and key_file together, "
                "or none of them to have gridhub generate a CA and certificates"
            )
        username = get_str(data, "username", "", where)
        password = get_str(data, "password", "", where)
        if bool(username) != bool(password):
            raise ConfigError(f"{where} username/password: give both or neither")
        return cls(
            mode=mode,  # checked against MODES above
            host=host,
            port=port,
            tls=tls,
            tls_port=tls_port,
            ca_file=files["ca_file"],
            cert_file=files["cert_file"],
            key_file=files["key_file"],
            mosquitto=mosquitto,
            username=username,
            password=password,
        )


def _optional_path(data: Mapping[str, Any], key: str, where: str, base_dir: Path) -> Path | None:
    text = get_str(data, key, "", where)
    if not text:
        return None
    path = Path(text).expanduser()
    return path if path.is_absolute() else base_dir / path


@dataclass(frozen=True)
class MarketplaceUser:
    """One account on the marketplace: an app (username = APID, with its IID) or a core service."""

    username: str
    password: str = field(repr=False)
    iid: str | None = None
    core: bool = False
    iids: tuple[str, ...] = ()  # further instances of the same APID (one account, several IIDs)
    # The MQTT client ids this account may connect with (the runtime's LVCAP_CLIENT_ID of each
    # instance); empty: any (core services, and accounts made outside a runtime).
    client_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.username or not set(self.username) <= _USERNAME_CHARS:
            raise ValueError(
                f"marketplace user {self.username!r}: username must be ASCII letters, digits, '.', '_' or '-'"
            )
        if not self.password or "\n" in self.password or "\r" in self.password:
            raise ValueError(f"marketplace user {self.username!r}: password must be non-empty and on one line")
        for iid in self.all_iids:
            if not iid or not set(iid) <= _IID_CHARS:
                raise ValueError(
                    f"marketplace user {self.username!r}: IID {iid!r} must be ASCII letters, digits, '_' or '-'"
                )
        for client_id in self.client_ids:
            if not client_id or not set(client_id) <= _USERNAME_CHARS:
                raise ValueError(
                    f"marketplace user {self.username!r}: client id {client_id!r} must be ASCII letters, "
                    "digits, '.', '_' or '-'"
                )

    def allows_client_id(self, client_id: str | None) -> bool:
        """Tell whether this account may connect with the given MQTT client id."""
        return not self.client_ids or client_id in self.client_ids

    @property
    def all_iids(self) -> tuple[str, ...]:
        """Every IID this account acts for (``iid`` first, then ``iids``)."""
        first = (self.iid,) if self.iid is not None else ()
        return tuple(dict.fromkeys(first + tuple(self.iids)))

    @classmethod
    def core_service(cls, username: str, password: str | None = None) -> MarketplaceUser:
        """Make a core service account (full access) with a random password unless one is given."""
        return cls(username=username, password=password or secrets.token_urlsafe(24), core=True)


def _user_table(users: Iterable[MarketplaceUser]) -> dict[str, MarketplaceUser]:
    table: dict[str, MarketplaceUser] = {}
    iids: dict[str, str] = {}
    for user in users:
        if user.username in table:
            raise ValueError(f"marketplace users: username {user.username!r} appears twice")
        for iid in user.all_iids:
            if iid in iids:
                raise ValueError(f"marketplace users: IID {iid!r} given to both {iids[iid]} and {user.username}")
            iids[iid] = user.username
        table[user.username] = user
    return table


# --- access rules ------------------------------------------------------------------------------


def publish_topics(iid: str) -> tuple[str, ...]:
    """Return the topic filters an app with this IID may publish on (8.2-8.6)."""
    return (
        f"sensor/data/{iid}/#",
        f"algorithm/data/{iid}/#",
        f"storage/data/{iid}/#",
        f"storage/data/error/{iid}",
        f"status/response/{iid}",
        f"config/request/{iid}",
        f"storage/request/{iid}",
        f"storage/request/newdata/{iid}",
        f"storage/uploaded/{iid}",
    )


def _filter_matches(pattern: str, topic: str) -> bool:
    """MQTT wildcard match of a concrete topic against a filter."""
    pattern_levels = pattern.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(pattern_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(pattern_levels) == len(topic_levels)


def _private_to_other(levels: Sequence[str], own: Sequence[str]) -> bool:
    """Tell whether a topic or filter reaches into another app's config/response or command topics."""
    if len(levels) >= 3 and levels[0] == "config" and levels[1] == "response":
        return levels[2] not in own
    if len(levels) >= 2 and levels[0] == "command":
        return levels[1] not in own
    return False


def acl_allows(user: MarketplaceUser | None, action: AclAction, topic: str) -> bool:
    """Decide whether user may publish on a topic, or subscribe to a filter / receive a topic.

    Apps publish only on their own IID's topics; they may subscribe to (and receive) anything
    except other apps' ``config/response/<IID>`` and ``command/<IID>``. A filter that could only
    be narrowed to those (``config/response/+``) is refused as well. Core users may do anything.
    """
    if user is None or not topic or topic.startswith("$"):
        return False
    if user.core:
        return True
    if action == "publish":
        if "+" in topic or "#" in topic:
            return False
        return any(_filter_matches(pattern, topic) for iid in user.all_iids for pattern in publish_topics(iid))
    if action == "subscribe":
        return not _private_to_other(topic.split("/"), user.all_iids)
    raise ValueError(f"acl_allows: action must be 'publish' or 'subscribe', got {action!r}")


# --- mosquitto files ---------------------------------------------------------------------------


def render_mosquitto_acl(users: Iterable[MarketplaceUser]) -> str:
    """Render mosquitto's acl_file: one ``user`` block per account with explicit grants and denials."""
    table = _user_table(users)
    iids = sorted(iid for user in table.values() for iid in user.all_iids)
    lines = ["# Generated by gridhub from the app registry; changes are overwritten.", ""]
    for user in sorted(table.values(), key=lambda u: u.username):
        lines.append(f"user {user.username}")
        if user.core:
            lines.append("topic readwrite #")
        else:
            # mosquitto 2.x checks denials before grants, so each other app's private topics
            # are named explicitly (a "deny config/response/#" would also hide the app's own).
            for other in iids:
                if other not in user.all_iids:
                    lines.append(f"topic deny config/response/{other}/#")
                    lines.append(f"topic deny command/{other}/#")
            if not user.all_iids:
                lines.append("topic deny config/response/#")
                lines.append("topic deny command/#")
            lines.append("topic read #")
            for iid in user.all_iids:
                lines.extend(f"topic write {pattern}" for pattern in publish_topics(iid))
        lines.append("")
    return "\n".join(lines)


def hash_mosquitto_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Hash a password in mosquitto's ``$7$`` format (PBKDF2-HMAC-SHA512, 64-byte key)."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def render_mosquitto_passwords(users: Iterable[MarketplaceUser]) -> str:
    """Render mosquitto's password_file (``username:$7$...`` lines)."""
    table = _user_table(users)
    lines = [f"{name}:{hash_mosquitto_password(table[name].password)}" for name in sorted(table)]
    return "\n".join(lines) + "\n"


def render_mosquitto_dynsec(users: Iterable[MarketplaceUser]) -> str:
    """Render the dynamic-security plugin's JSON: per-app roles that only refuse subscriptions.

    Every default access is "deny", which the plugin turns into "no opinion", so publishing,
    delivery and the password check stay with the password and ACL files. An app account with
    one client id gets it as ``clientid``: the plugin refuses a CONNECT with that username and any
    other client id before the password file is consulted (Table 4: client id = APID). The plugin
    binds one client id per username, so an account shared by several instances stays unbound.
    """
    table = _user_table(users)
    clients: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    for user in sorted(table.values(), key=lambda u: u.username):
        if user.core:
            continue
        acls: list[dict[str, Any]] = []
        for iid in user.all_iids:
            for own in (f"config/response/{iid}", f"command/{iid}"):
                acls.append({"acltype": "subscribeLiteral", "topic": own, "priority": 10, "allow": True})
                acls.append({"acltype": "subscribePattern", "topic": f"{own}/#", "priority": 10, "allow": True})
        for private in ("config/response/#", "command/#"):
            acls.append({"acltype": "subscribePattern", "topic": private, "priority": 1, "allow": False})
        rolename = f"lvcap-{user.username}"
        roles.append({"rolename": rolename, "acls": acls})
        client: dict[str, Any] = {
            "username": user.username,
            "textname": " ".join(user.all_iids) or user.username,
            "roles": [{"rolename": rolename}],
        }
        if len(user.client_ids) == 1:
            client["clientid"] = user.client_ids[0]
        clients.append(client)
    document = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": False,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }
    return json.dumps(document, indent=1) + "\n"


@dataclass(frozen=True)
class MarketplacePaths:
    """Where the marketplace's files live (``<data_dir>/marketplace/``)."""

    directory: Path
    dynsec_plugin: Path | None = None

    @classmethod
    def under(cls, data_dir: Path, *, dynsec_plugin: Path | Literal["auto"] | None = "auto") -> MarketplacePaths:
        """Return the paths below a data directory, finding the dynamic-security plugin when asked."""
        plugin = find_dynsec_plugin() if dynsec_plugin == "auto" else dynsec_plugin
        return cls(directory=data_dir / "marketplace", dynsec_plugin=plugin)

    @property
    def conf_file(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def acl_file(self) -> Path:
        return self.directory / "acl"

    @property
    def password_file(self) -> Path:
        return self.directory / "passwords"

    @property
    def dynsec_file(self) -> Path:
        return self.directory / "dynamic-security.json"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def certs_dir(self) -> Path:
        return self.directory / "certs"

    @property
    def clients_dir(self) -> Path:
        return self.directory / "certs" / "clients"


def render_mosquitto_conf(
    settings: MarketplaceSettings,
    paths: MarketplacePaths | None = None,
    *,
    managed: bool | None = None,
    acl_file: Path | None = None,
    password_file: Path | None = None,
    data_dir: Path | None = None,
) -> str:
    """Render mosquitto.conf for the settings.

    ``managed`` (default: True when paths are given) runs mosquitto as the current user with
    its log on stdout and its persistence file in the marketplace directory, for gridhub to
    spawn; otherwise the file is for a broker an operator installs (external mode), with paths
    taken from ``data_dir`` and the explicit file names, and persistence left to the operator's
    main configuration (it is a global setting).
    """
    if managed is None:
        managed = paths is not None
    if paths is None:
        if data_dir is None:
            raise ValueError("render_mosquitto_conf: give paths or data_dir")
        paths = MarketplacePaths(directory=data_dir)
    lines = [
        "# Generated by gridhub; changes are overwritten.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {password_file or paths.password_file}",
        f"acl_file {acl_file or paths.acl_file}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        "max_queued_bytes 0",
        "set_tcp_nodelay true",
    ]
    if paths.dynsec_plugin is not None:
        lines += [
            "# Binds each app's username to its client id (Table 4), and refuses subscriptions to",
            "# other apps' config/response and command topics.",
            f"plugin {paths.dynsec_plugin}",
            f"plugin_opt_config_file {paths.dynsec_file}",
        ]
    else:
        lines += [
            "# password_file and acl_file cannot bind a username to a client id: without the",
            "# dynamic-security plugin (mosquitto_dynamic_security.so) a client with one app's",
            "# credentials can connect with another app's client id and drop that app's connection.",
            "# Install the plugin and run `gridhub edge mosquitto-config` again to bind them.",
        ]
    if managed:
        # Sessions and queued messages survive a restart of mosquitto (saved on SIGTERM and every
        # AUTOSAVE_INTERVAL seconds), so the storage's persistent session gets its backlog.
        lines += ["persistence true", f"persistence_location {paths.directory}/",
                  f"autosave_interval {AUTOSAVE_INTERVAL}"]  # fmt: skip
    else:
        lines += [
            "# Persistence is global: set `persistence true` (and a short autosave_interval) in the",
            "# main configuration so queued messages for the storage survive a broker restart.",
        ]
    if managed:
        # Never drop privileges to the "mosquitto" user: it could not read our 0600 files.
        lines += [f"user {getpass.getuser()}", "log_dest stdout", "log_type error", "log_type warning",
                  "log_type notice", "log_type information", "connection_messages true"]  # fmt: skip
    else:
        lines += [f"log_dest file {paths.log_file}"]
    lines += ["", f"listener {settings.port} {settings.host}"]
    if settings.tls:
        ca, server = tls_files(settings, paths)
        lines += [
            "",
            "# Table 4: TLS 1.2 or higher, X.509 client certificate, username = certificate CN = APID",
            f"listener {settings.tls_port} {settings.host}",
            f"cafile {ca}",
            f"certfile {server.cert_file}",
            f"keyfile {server.key_file}",
            "require_certificate true",
            "use_identity_as_username true",
            # Certificate logins skip the dynamic-security password check, and with it the client-id
            # binding: without this an app's certificate could take another app's client id and drop
            # its connection. The client id becomes the CN (= the APID, Table 4).
            "use_username_as_clientid true",
            "tls_version tlsv1.2",
        ]
    return "\n".join(lines) + "\n"


def tls_files(settings: MarketplaceSettings, paths: MarketplacePaths) -> tuple[Path, certs.CertFiles]:
    """Return the CA file and server certificate the TLS listener uses (configured or generated)."""
    if settings.ca_file is not None and settings.cert_file is not None and settings.key_file is not None:
        return settings.ca_file, certs.CertFiles(settings.cert_file, settings.key_file)
    return paths.certs_dir / "ca.crt", certs.CertFiles(paths.certs_dir / "server.crt", paths.certs_dir / "server.key")


def ensure_tls_files(settings: MarketplaceSettings, paths: MarketplacePaths) -> tuple[Path, certs.CertFiles]:
    """Create the CA and server certificate under paths when they are not configured or present."""
    ca_file, server = tls_files(settings, paths)
    if settings.ca_file is not None:
        for path in (ca_file, server.cert_file, server.key_file):
            if not path.is_file():
                raise MarketplaceError(f"[marketplace] TLS file {path} does not exist")
        return ca_file, server
    ca = certs.ensure_ca(paths.certs_dir)
    if not (server.cert_file.is_file() and server.key_file.is_file()):
        server = certs.issue_server_cert(ca, paths.certs_dir)
    return ca.cert_file, server


def write_mosquitto_files(
    settings: MarketplaceSettings, paths: MarketplacePaths, users: Iterable[MarketplaceUser], *, managed: bool = True
) -> None:
    """Write mosquitto.conf, the password, ACL and dynamic-security files into paths.directory."""
    user_list = list(users)
    _user_table(user_list)  # refuse duplicates before touching any file
    paths.directory.mkdir(parents=True, exist_ok=True)
    if settings.tls:
        ensure_tls_files(settings, paths)
    _write_private(paths.password_file, render_mosquitto_passwords(user_list))
    _write_private(paths.acl_file, render_mosquitto_acl(user_list))
    if paths.dynsec_plugin is not None:
        _write_private(paths.dynsec_file, render_mosquitto_dynsec(user_list))
    _write_private(paths.conf_file, render_mosquitto_conf(settings, paths, managed=managed))


def _write_private(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(temporary, path)


# --- embedded broker (amqtt) -------------------------------------------------------------------


class _Policy:
    """The user table an embedded broker's plugins consult; replaced whole on update."""

    def __init__(self, users: Iterable[MarketplaceUser]) -> None:
        self.users: dict[str, MarketplaceUser] = _user_table(users)


_POLICIES: dict[str, _Policy] = {}


def _policy(key: str) -> _Policy:
    try:
        return _POLICIES[key]
    except KeyError:
        raise MarketplaceError(
            f"marketplace policy {key!r} is not registered (broker outlived its Marketplace)"
        ) from None


def _certificate_cn(session: Session) -> str | None:
    ssl_object = session.ssl_object
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    values = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


class MarketplaceAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt auth plugin: username/password (or TLS client certificate CN) against the user table."""

    @dataclass
    class Config:
        policy: str = ""

    async def authenticate(self, *, session: Session) -> bool | None:
        """Accept a known user with the right password, or a valid certificate on the TLS listener."""
        users = _policy(self.config.policy).users
        if session.ssl_object is not None:
            # Like mosquitto's use_identity_as_username: the certificate's CN is the username.
            common_name = _certificate_cn(session)
            if common_name is None or (session.username and session.username != common_name):
                log.info("marketplace: refused TLS client %s (no certificate or CN mismatch)", session.client_id)
                return False
            session.username = common_name
            user = users.get(common_name)
        else:
            user = users.get(session.username or "")
            password = session.password or ""
            if user is None or not hmac.compare_digest(password.encode(), user.password.encode()):
                log.info("marketplace: refused client %s (bad username or password)", session.client_id)
                return False
        if user is None:
            return False
        if not user.allows_client_id(session.client_id):
            # Table 4: client id = the app's own; another's would drop that app's connection.
            log.info("marketplace: refused %s: client id %r is not its own", user.username, session.client_id)
            return False
        if session.will_flag and not acl_allows(user, "publish", session.will_topic or ""):
            # amqtt publishes wills without a topic check; refuse like mosquitto 2.x does.
            log.info("marketplace: refused %s: will topic %s not allowed", user.username, session.will_topic)
            return False
        return True


AclObserver = Callable[[str, str | None, Literal["publish", "subscribe"], str, bool], None]
"""Told (client id, username, action, topic, allowed) of each publish and subscribe decision."""


class _Broker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's broker, with clients authenticated before their session is looked up and retained
    messages checked like live deliveries."""

    policy_key = ""
    observer: AclObserver | None = None

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        # amqtt 0.12.1 deletes (clean session) or takes over the session of the CONNECT's client
        # id before it authenticates the new connection, so any client, even with a wrong
        # password or another app's credentials, could drop an app by using its client id.
        # Authenticate first; the rest is amqtt's own code.
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError as exc:
            await writer.close()
            raise MQTTError(exc) from exc
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        if not await self._authenticate(session, None):
            session.parent = 0
            handler.attach(session, reader, writer)
            with contextlib.suppress(Exception):
                await handler.mqtt_connack_authorize(False)
            await writer.close()
            raise AMQTTError(f"client {session.client_id!r} ({session.username!r}) refused")
        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif session.client_id in self._sessions:
            existing, _ = self._sessions[session.client_id]
            existing.will_flag = session.will_flag
            existing.will_message = session.will_message
            existing.will_topic = session.will_topic
            existing.will_qos = session.will_qos
            existing.keep_alive = session.keep_alive
            existing.username = session.username
            existing.password = session.password
            session = existing
            session.parent = 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        # Decide without awaiting: amqtt's plugin manager runs topic plugins as separate tasks,
        # and that suspension inside its broadcast loop loses about half of the QoS 1 messages
        # under load (amqtt 0.12.1; seen in bench_ingest). The rule is acl_allows, as for Mosquitto.
        user = _policy(self.policy_key).users.get(session.username or "") if session is not None else None
        kind: Literal["publish", "subscribe"] = "publish" if action == Action.PUBLISH else "subscribe"
        allowed = acl_allows(user, kind, topic)
        if self.observer is not None and session is not None and action != Action.RECEIVE:
            self.observer(session.client_id or "", session.username, kind, topic, allowed)
        return allowed

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt 0.12 sends retained messages on SUBSCRIBE without the RECEIVE check it applies
        # to live messages, which would leak a retained message on another app's private topic.
        # It also calls this on every CONNECT for every filter that ANY client subscribed to, at
        # QoS 0: a new client would get retained messages it never asked for, at the wrong QoS
        # (8.3.2 requires metadata at QoS 1). Deliver only for the session's own subscription,
        # at the QoS it subscribed with.
        topic_filter, _ = subscription
        granted = [qos for sub_session, qos in self._subscriptions.get(topic_filter, [])
                   if sub_session.client_id == session.client_id]  # fmt: skip
        if not granted:
            return
        qos = granted[0]
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = []
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                continue
            tasks.append(
                asyncio.ensure_future(
                    handler.mqtt_publish(retained.topic, retained.data, min(qos, retained.qos or qos), retain=True)
                )
            )
        if tasks:
            await asyncio.wait(tasks)


class _EmbeddedBroker:
    """An amqtt broker on its own event loop in a daemon thread."""

    def __init__(
        self, settings: MarketplaceSettings, paths: MarketplacePaths, users: Iterable[MarketplaceUser]
    ) -> None:
        self._settings = settings
        self._paths = paths
        self._key = uuid.uuid4().hex
        self._policy = _Policy(users)
        self.observer: AclObserver | None = None  # e.g. the app kit's conformance check
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Broker | None = None

    def _config(self) -> dict[str, Any]:
        settings = self._settings
        listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": f"{settings.host}:{settings.port}"}}
        if settings.tls:
            ca_file, server = ensure_tls_files(settings, self._paths)
            listeners["tls"] = {
                "type": "tcp",
                "bind": f"{settings.host}:{settings.tls_port}",
                "ssl": True,
                "cafile": str(ca_file),
                "certfile": str(server.cert_file),
                "keyfile": str(server.key_file),
            }
        plugin_config = {"policy": self._key}
        return {
            "listeners": listeners,
            "plugins": {
                f"{__name__}.MarketplaceAuthPlugin": plugin_config,
            },
        }

    def start(self) -> None:
        config = self._config()
        _POLICIES[self._key] = self._policy
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run, args=(loop,), name="marketplace-amqtt", daemon=True)
        self._thread.start()

        async def start_broker() -> Broker:
            broker = _Broker(config, loop=loop)
            broker.policy_key = self._key
            broker.observer = self.observer
            await broker.start()
            return broker

        try:
            self._broker = asyncio.run_coroutine_threadsafe(start_broker(), loop).result(START_TIMEOUT)
        except Exception as exc:
            self.stop()
            raise MarketplaceError(
                f"embedded marketplace could not listen on {self._settings.host}:{self._settings.port}"
                f"{f' / TLS {self._settings.tls_port}' if self._settings.tls else ''}: {exc}"
            ) from exc
        log.info("embedded marketplace (amqtt) listening on %s:%s", self._settings.host, self._settings.port)

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def update_users(self, users: Iterable[MarketplaceUser]) -> None:
        self._policy.users = _user_table(users)

    def stop(self) -> None:
        loop, thread, broker = self._loop, self._thread, self._broker
        self._broker = None
        if loop is not None and thread is not None and thread.is_alive():
            if broker is not None:
                try:
                    asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(STOP_TIMEOUT)
                except Exception:
                    log.warning("embedded marketplace did not shut down cleanly", exc_info=True)
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop).result(STOP_TIMEOUT)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT)
        if loop is not None and (thread is None or not thread.is_alive()):
            loop.close()
        self._loop = self._thread = None
        _POLICIES.pop(self._key, None)


class _IsolatedEmbeddedBroker:
    """The embedded amqtt broker in a child process of its own.

    In a thread of the runtime, the pure-Python broker shares one GIL with the storage service
    and the manager, and ingest ran at 0.73x the broker's own rate (bench_ingest); in its own
    process it competes for a core, not for the interpreter. The child runs the same
    _EmbeddedBroker; account changes travel over a pipe.
    """

    def __init__(
        self, settings: MarketplaceSettings, paths: MarketplacePaths, users: Iterable[MarketplaceUser]
    ) -> None:
        self._settings = settings
        self._paths = paths
        self._users = list(users)
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._stopping = False

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no inherited threads or locks
        parent, child = context.Pipe()
        process = context.Process(
            target=_serve_embedded, args=(self._settings, self._paths, self._users, child),
            name="gridhub-marketplace", daemon=True,
        )  # fmt: skip
        process.start()
        child.close()
        if not parent.poll(START_TIMEOUT):
            process.kill()
            raise MarketplaceError(f"embedded marketplace did not start within {START_TIMEOUT:g} s")
        answer = parent.recv()
        if answer != "ready":
            process.join(STOP_TIMEOUT)
            raise MarketplaceError(f"embedded marketplace failed to start: {answer}")
        self._process, self._conn, self._stopping = process, parent, False

    @property
    def failure(self) -> str | None:
        process = self._process
        if process is None or self._stopping or process.is_alive():
            return None
        return f"the embedded marketplace process exited unexpectedly with code {process.exitcode}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def update_users(self, users: Iterable[MarketplaceUser]) -> None:
        self._users = list(users)
        if self._conn is not None:
            self._conn.send(("users", self._users))

    def stop(self) -> None:
        self._stopping = True
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is None or conn is None:
            return
        with contextlib.suppress(OSError, EOFError):
            conn.send(("stop", None))
        process.join(STOP_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join(STOP_TIMEOUT)
        conn.close()


def _serve_embedded(
    settings: MarketplaceSettings,
    paths: MarketplacePaths,
    users: list[MarketplaceUser],
    conn: multiprocessing.connection.Connection,
) -> None:
    """Run an embedded broker in this (child) process until told to stop or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runtime's to handle
    broker = _EmbeddedBroker(settings, paths, users)
    try:
        broker.start()
    except Exception as exc:
        conn.send(f"{type(exc).__name__}: {exc}")
        return
    conn.send("ready")
    try:
        while True:
            try:
                command, argument = conn.recv()
            except (EOFError, OSError):
                break  # the runtime is gone: do not outlive it
            if command == "stop":
                break
            if command == "users":
                broker.update_users(argument)
    finally:
        broker.stop()


async def _cancel_tasks() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- managed broker (mosquitto) ----------------------------------------------------------------


class _ManagedBroker:
    """A mosquitto process gridhub configures, starts, reloads and stops."""

    def __init__(
        self, settings: MarketplaceSettings, paths: MarketplacePaths, users: Iterable[MarketplaceUser]
    ) -> None:
        self._settings = settings
        self._paths = paths
        self._users = list(users)
        self._process: subprocess.Popen[bytes] | None = None
        self._watcher: threading.Thread | None = None
        self._stopping = False
        self.failure: str | None = None

    def start(self) -> None:
        binary = find_mosquitto(self._settings.mosquitto)
        if binary is None:
            raise MarketplaceError(
                f"[marketplace] mosquitto: binary {self._settings.mosquitto!r} not found "
                '(install mosquitto, set mosquitto = "/path/to/mosquitto", or use mode = "embedded")'
            )
        if self._paths.dynsec_plugin is None:
            log.warning("mosquitto dynamic-security plugin not found: subscriptions to other apps' "
                        "config/response topics are granted but never delivered")  # fmt: skip
        write_mosquitto_files(self._settings, self._paths, self._users)
        for port in self._ports():
            if _port_open(self._connect_host(), port):
                raise MarketplaceError(f"[marketplace] port {port} on {self._settings.host} is already in use")
        log_handle = self._paths.log_file.open("ab")
        try:
            self._process = subprocess.Popen(
                [binary, "-c", str(self._paths.conf_file)],
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log_handle.close()
        self._stopping = False
        self.failure = None
        deadline = time.monotonic() + START_TIMEOUT
        while not all(_port_open(self._connect_host(), port) for port in self._ports()):
            if self._process.poll() is not None:
                raise MarketplaceError(
                    f"mosquitto exited with code {self._process.returncode} while starting; "
                    f"last lines of {self._paths.log_file}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise MarketplaceError(
                    f"mosquitto did not accept connections within {START_TIMEOUT:g} s; "
                    f"last lines of {self._paths.log_file}:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self._watcher = threading.Thread(
            target=self._watch, args=(self._process,), name="marketplace-watch", daemon=True
        )
        self._watcher.start()
        log.info("managed marketplace (mosquitto pid %s) listening on %s:%s", self._process.pid,
                 self._settings.host, self._settings.port)  # fmt: skip

    def _ports(self) -> list[int]:
        return [self._settings.port, self._settings.tls_port] if self._settings.tls else [self._settings.port]

    def _connect_host(self) -> str:
        return _connect_host(self._settings.host)

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        if not self._stopping:
            self.failure = f"mosquitto exited unexpectedly with code {code}; last log lines:\n{self.log_tail()}"
            log.error("marketplace: %s", self.failure)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self._paths.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def update_users(self, users: Iterable[MarketplaceUser]) -> None:
        user_list = list(users)
        write_mosquitto_files(self._settings, self._paths, user_list)
        self._users = user_list
        if self.running():
            assert self._process is not None
            # Reloads the password and ACL files; the dynamic-security file is only read at start.
            self._process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        self._stopping = True
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto (pid %s) ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait(STOP_TIMEOUT)
        if self._watcher is not None:
            self._watcher.join(STOP_TIMEOUT)
        self._process = None


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "*") else "::1" if host == "::" else host


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --- the marketplace ---------------------------------------------------------------------------


class Marketplace:
    """The Data Marketplace in the configured mode: start, stop, users and client addresses."""

    def __init__(
        self,
        settings: MarketplaceSettings,
        data_dir: Path,
        users: Iterable[MarketplaceUser] = (),
        *,
        paths: MarketplacePaths | None = None,
    ) -> None:
        self.settings = settings
        self.paths = paths or MarketplacePaths.under(data_dir)
        self._users = _user_table(users)
        self._broker: _EmbeddedBroker | _IsolatedEmbeddedBroker | _ManagedBroker | None = None

    @property
    def users(self) -> list[MarketplaceUser]:
        """The accounts the marketplace currently accepts."""
        return list(self._users.values())

    def start(self, users: Iterable[MarketplaceUser] | None = None) -> None:
        """Start the broker (embedded or managed), with users when given; external has nothing to start."""
        if self._broker is not None:
            raise MarketplaceError("marketplace already started")
        if users is not None:
            self._users = _user_table(users)
        if self.settings.mode == "external":
            log.info("external marketplace at %s:%s", self.settings.host, self.settings.port)
            return
        broker: _EmbeddedBroker | _IsolatedEmbeddedBroker | _ManagedBroker
        if self.settings.mode == "embedded":
            broker = _IsolatedEmbeddedBroker(self.settings, self.paths, self._users.values())
        else:
            broker = _ManagedBroker(self.settings, self.paths, self._users.values())
        broker.start()
        self._broker = broker

    def stop(self) -> None:
        """Stop the broker, if this marketplace started one."""
        broker, self._broker = self._broker, None
        if broker is not None:
            broker.stop()

    def __enter__(self) -> Marketplace:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def failure(self) -> str | None:
        """Why the broker process died on its own (managed: with its log tail), or None."""
        if isinstance(self._broker, _ManagedBroker | _IsolatedEmbeddedBroker):
            return self._broker.failure
        return None

    @property
    def pid(self) -> int | None:
        """The broker's process id (managed mosquitto or the embedded broker's process), or None."""
        if isinstance(self._broker, _ManagedBroker | _IsolatedEmbeddedBroker):
            return self._broker.pid
        return None

    def update_users(self, users: Iterable[MarketplaceUser]) -> None:
        """Replace the accounts and ACLs (embedded: in memory; managed: rewrite files and SIGHUP)."""
        table = _user_table(users)
        if self._broker is not None:
            self._broker.update_users(table.values())
        self._users = table

    def address_for(self, user: MarketplaceUser | str, password: str | None = None) -> BrokerAddress:
        """Return where and how the given user (or username) connects; TLS with its client certificate when on."""
        if isinstance(user, str):
            known = self._users.get(user)
            if known is None:
                raise MarketplaceError(f"marketplace: no user {user!r}")
            user = known
        if password is not None and password != user.password:
            raise MarketplaceError(f"marketplace: password given for {user.username!r} does not match its account")
        settings = self.settings
        host = _connect_host(settings.host)
        username, password = user.username, user.password
        if settings.mode == "external" and user.core and settings.username:
            username, password = settings.username, settings.password
        if not settings.tls or user.core:
            return BrokerAddress(host=host, port=settings.port, username=username, password=password)
        if settings.mode == "external":
            ca_file = settings.ca_file or self.paths.certs_dir / "ca.crt"
            return BrokerAddress(host=host, port=settings.tls_port, username=username, password=password,
                                 tls=TlsSettings(ca_file=ca_file))  # fmt: skip
        client = self._client_cert(user.username)
        ca_file, _ = tls_files(settings, self.paths)
        return BrokerAddress(
            host=host,
            port=settings.tls_port,
            username=username,
            password=password,
            tls=TlsSettings(ca_file=ca_file, cert_file=client.cert_file, key_file=client.key_file),
        )

    def _client_cert(self, apid: str) -> certs.CertFiles:
        existing = certs.CertFiles(self.paths.clients_dir / f"{apid}.crt", self.paths.clients_dir / f"{apid}.key")
        if existing.cert_file.is_file() and existing.key_file.is_file():
            return existing
        ca_file, _ = ensure_tls_files(self.settings, self.paths)
        ca_key = ca_file.with_suffix(".key")
        if not ca_key.is_file():
            raise MarketplaceError(
                f"marketplace: cannot issue a client certificate for {apid}: CA key {ca_key} not found; "
                f"provision {existing.cert_file} and {existing.key_file}"
            )
        return certs.issue_client_cert(apid, certs.CertFiles(ca_file, ca_key), self.paths.clients_dir)


def tls_client_context(address: BrokerAddress) -> ssl.SSLContext | None:
    """Return the TLS 1.2+ client context for an address (None without TLS), for non-gridhub clients."""
    if address.tls is None:
        return None
    client = None
    if address.tls.cert_file is not None and address.tls.key_file is not None:
        client = certs.CertFiles(address.tls.cert_file, address.tls.key_file)
    return certs.client_ssl_context(address.tls.ca_file, client)
