"""The edge runtime's configuration file (TOML): one ``EdgeConfig`` read by ``load_config``.

Each section is read by its own settings class (``[marketplace]`` -> MarketplaceSettings,
``[manager]`` -> ManagerSettings, ``[storage]`` -> StorageSettings, each ``[[app]]`` ->
AppEntry). Every error is a :class:`ConfigError` naming the file, the section and the key.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridhub.edge.manager import AppEntry, ManagerSettings
from gridhub.edge.marketplace import MarketplaceSettings
from gridhub.edge.settings import ConfigError, get_int, get_path, get_table, reject_unknown
from gridhub.edge.storage import StorageSettings

log = logging.getLogger(__name__)

#: The configuration format this runtime reads.
CONFIG_VERSION = 1
TOP_LEVEL_KEYS = ("version", "data_dir", "marketplace", "manager", "storage", "app")


@dataclass(frozen=True)
class EdgeConfig:
    """Everything the edge runtime needs, read from one TOML file."""

    version: int
    data_dir: Path
    marketplace: MarketplaceSettings
    manager: ManagerSettings
    storage: StorageSettings
    apps: tuple[AppEntry, ...] = ()
    path: Path | None = field(default=None, compare=False)

    def app(self, iid: str) -> AppEntry:
        """Return the app with this IID (KeyError when absent)."""
        for entry in self.apps:
            if entry.iid == iid:
                return entry
        raise KeyError(iid)


def load_config(path: Path | str) -> EdgeConfig:
    """Read and validate the configuration file at path."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_config(data, base_dir=path.resolve().parent, path=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_config(data: Mapping[str, Any], *, base_dir: Path, path: Path | None = None) -> EdgeConfig:
    """Validate a parsed configuration; relative paths are taken from base_dir (the file's folder)."""
    reject_unknown(data, TOP_LEVEL_KEYS, "top level")
    if "version" not in data:
        raise ConfigError(f"version: required (this runtime reads version = {CONFIG_VERSION})")
    version = get_int(data, "version", CONFIG_VERSION, "top level")
    if version != CONFIG_VERSION:
        raise ConfigError(f"version: this runtime reads configuration version {CONFIG_VERSION}, got {version}")
    data_dir = get_path(data, "data_dir", "var/edge", "top level", base_dir)
    marketplace = MarketplaceSettings.from_mapping(
        get_table(data, "marketplace", "top level"), where="[marketplace]", base_dir=data_dir
    )
    manager = ManagerSettings.from_mapping(
        get_table(data, "manager", "top level"), where="[manager]", base_dir=data_dir
    )
    storage = StorageSettings.from_mapping(
        get_table(data, "storage", "top level"), where="[storage]", base_dir=data_dir
    )
    apps = _read_apps(data.get("app", []), base_dir)
    return EdgeConfig(
        version=version,
        data_dir=data_dir,
        marketplace=marketplace,
        manager=manager,
        storage=storage,
        apps=apps,
        path=path,
    )


def _read_apps(raw: object, base_dir: Path) -> tuple[AppEntry, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, Mapping) for item in raw):
        raise ConfigError(f"app: expected an array of [[app]] tables, got {raw!r}")
    apps: list[AppEntry] = []
    seen: dict[str, int] = {}
    apids: dict[str, int] = {}
    for number, item in enumerate(raw, start=1):
        where = f"[[app]] #{number}"
        entry = AppEntry.from_mapping(item, where=where, base_dir=base_dir)
        if entry.iid in seen:
            raise ConfigError(
                f"{where} instance: IID {entry.iid} is already used by [[app]] #{seen[entry.iid]} (IIDs must be unique)"
            )
        seen[entry.iid] = number
        if entry.apid in apids:
            # Several instances of one app (4.2) share one marketplace account (username = APID),
            # so they must not be given different passwords.
            first = apps[apids[entry.apid] - 1]
            if entry.password and first.password and entry.password != first.password:
                raise ConfigError(
                    f"{where} password: APID {entry.apid} is also [[app]] #{apids[entry.apid]} with another "
                    "password; instances of one app share one marketplace account (username = APID)"
                )
        else:
            apids[entry.apid] = number
        apps.append(entry)
    return tuple(_with_client_ids(apps))


def _with_client_ids(apps: list[AppEntry]) -> list[AppEntry]:
    """Give each instance of a multi-instance app its own MQTT client id.

    Table 4 sets the client id to the APID; two instances of one APID (4.2 allows several)
    would then take each other's connection, as MQTT allows one session per client id. The
    only instance of an APID keeps the APID; further instances connect as <APID>-<Instance>.
    The manager passes it as LVCAP_CLIENT_ID.
    """
    counts: dict[str, int] = {}
    for entry in apps:
        counts[entry.apid] = counts.get(entry.apid, 0) + 1
    return [
        dataclasses.replace(entry, client_id=f"{entry.apid}-{entry.instance_id.instance}")
        if counts[entry.apid] > 1
        else entry
        for entry in apps
    ]
