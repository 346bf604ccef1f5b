"""The edge runtime: the LV-CAP core services and apps of one substation, started and stopped in order.

Start-up (5.1.1, 5.1.2): the Container Manager, the Data Marketplace, the Data Storage
Application, then the configured apps in their configured order. Shutdown (section 6): every
app through the shutdown command, then storage, then the marketplace. SIGHUP (sent by
``gridhub edge reload``) re-reads the configuration file.

Marketplace users: the core services connect as ``gridhub-manager`` and ``gridhub-storage`` with
passwords generated for this run; apps connect with username = client id = APID (Table 4) and a
password generated for this run, or the configured one (attached apps must have one, since
their developer starts them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import psutil

from gridhub.edge.config import EdgeConfig, load_config
from gridhub.edge.manager import AppEntry, ContainerManager, app_client_id
from gridhub.edge.marketplace import (
    MANAGER_USER,
    STORAGE_USER,
    Marketplace,
    MarketplacePaths,
    MarketplaceUser,
    find_dynsec_plugin,
)
from gridhub.edge.marketplace import write_mosquitto_files as render_mosquitto_files
from gridhub.edge.settings import ConfigError
from gridhub.edge.storage import StorageDB, StorageService, storage_client
from gridhub.sdk.mqtt import BrokerAddress, MarketplaceClient

log = logging.getLogger(__name__)

PID_FILE = "runtime.pid"
# How long a leftover managed Mosquitto gets to save its persistence file after SIGTERM.
BROKER_SAVE_TIMEOUT = 30.0


class EdgeRuntimeError(RuntimeError):
    """The runtime cannot start (already running, marketplace unavailable, ...)."""


def pid_path(data_dir: Path) -> Path:
    """Return the file holding the running runtime's process id."""
    return data_dir / PID_FILE


def read_pid(data_dir: Path) -> int | None:
    """Return the pid of the runtime running with this data_dir, or None when none is alive."""
    try:
        pid = int(pid_path(data_dir).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def reap_orphans(data_dir: Path, grace: float = 3.0, broker_grace: float = BROKER_SAVE_TIMEOUT) -> list[int]:
    """Stop the processes a previous runtime with this data_dir left behind; return their pids.

    A runtime killed with SIGKILL (or by a power cut of its supervisor) cannot shut its apps
    and its managed Mosquitto down: they live in their own sessions. Left running, the old
    Mosquitto holds the port and the old apps reconnect with the same client ids as the new
    ones, each taking the other's connection. They are recognised by what ties them to this
    data_dir: Mosquitto by its configuration file, apps by their LVCAP_DATA_DIR.

    The apps go first (``grace`` seconds after SIGTERM, then SIGKILL), so their last messages and
    wills reach the broker. The broker gets SIGTERM and up to ``broker_grace`` seconds to write
    its persistence file before SIGKILL: the new Mosquitto loads it, and the storage's persistent
    session receives the messages the old one had queued (acknowledged to their publishers, not
    yet committed by the killed storage).
    """
    root = data_dir.resolve()
    conf = str(root / "marketplace" / "mosquitto.conf")
    apps = str(root / "apps") + os.sep
    brokers: list[psutil.Process] = []
    others: list[psutil.Process] = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.pid == os.getpid():
            continue
        try:
            if conf in (process.info["cmdline"] or []):
                brokers.append(process)
            elif process.environ().get("LVCAP_DATA_DIR", "").startswith(apps):
                others.append(process)
        except (psutil.Error, OSError):
            continue
    for group, timeout in ((others, grace), (brokers, broker_grace)):
        for process in group:
            log.warning("stopping pid %d left behind by an earlier runtime of %s", process.pid, data_dir)
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(group, timeout=timeout)
        for process in alive:
            log.warning("pid %d ignored SIGTERM for %g s; killing it", process.pid, timeout)
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=timeout)
    return [process.pid for process in (*others, *brokers)]


def new_password() -> str:
    """Return a random password for one run."""
    return secrets.token_urlsafe(24)


def marketplace_users(apps: Sequence[AppEntry], passwords: dict[str, str]) -> list[MarketplaceUser]:
    """Return the marketplace users: the two core services and one per app (username = APID).

    ``passwords`` (username -> password) is completed in place for users that have none yet; an
    app's configured password always wins. Each app account is bound to the client ids its
    instances get as LVCAP_CLIENT_ID (the APID, or ``<APID>-<Instance>`` when several instances
    share it), so no app can connect with another's and drop its connection.
    """
    for core in (MANAGER_USER, STORAGE_USER):
        passwords.setdefault(core, new_password())
    users = [
        MarketplaceUser(username=MANAGER_USER, password=passwords[MANAGER_USER], core=True),
        MarketplaceUser(username=STORAGE_USER, password=passwords[STORAGE_USER], core=True),
    ]
    instances: dict[str, list[str]] = {}
    client_ids: dict[str, list[str]] = {}
    for entry in apps:
        if entry.password:
            passwords[entry.apid] = entry.password
        else:
            passwords.setdefault(entry.apid, new_password())
        instances.setdefault(entry.apid, []).append(entry.iid)
        client_ids.setdefault(entry.apid, []).append(app_client_id(entry))
    # Instances of one app share its account (username = APID, Table 4), acting for each IID.
    for apid, iids in instances.items():
        users.append(
            MarketplaceUser(
                username=apid,
                password=passwords[apid],
                iid=iids[0],
                iids=tuple(iids[1:]),
                client_ids=tuple(dict.fromkeys(client_ids[apid])),
            )
        )
    return users


def write_mosquitto_files(config: EdgeConfig, out: Path) -> list[Path]:
    """Write mosquitto.conf, acl and passwords (and the dynamic-security file) into out.

    For a Mosquitto the operator runs (external mode or a managed deployment of their own).
    Passwords are generated for the core users and for apps without a configured one; the
    password file holds only their hashes. Return the files written.
    """
    paths = MarketplacePaths(directory=out, dynsec_plugin=find_dynsec_plugin())
    render_mosquitto_files(config.marketplace, paths, marketplace_users(config.apps, {}), managed=False)
    written = [paths.conf_file, paths.acl_file, paths.password_file]
    if paths.dynsec_plugin is not None:
        written.append(paths.dynsec_file)
    return written


class EdgeRuntime:
    """One substation's LV-CAP platform: marketplace, storage, manager and apps."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self._passwords: dict[str, str] = {}
        self._users: list[MarketplaceUser] = []
        self.marketplace: Marketplace | None = None
        self.storage: StorageService | None = None
        self._db: StorageDB | None = None
        self._manager_client: MarketplaceClient | None = None
        self.manager = ContainerManager(
            config.manager,
            config.data_dir,
            broker_for=self._address_for_app,
            record_error=self._record_error,
        )
        self._stopping = threading.Event()
        self._reload_requested = threading.Event()
        self._marketplace_restarts = 0
        self._marketplace_retry_at = 0.0
        self._started = False

    # -- addresses -------------------------------------------------------------------------

    def core_address(self, username: str) -> BrokerAddress:
        """Return the marketplace address and credentials of a core service user."""
        assert self.marketplace is not None, "the marketplace is not started"
        return self.marketplace.address_for(username)

    def _address_for_app(self, entry: AppEntry) -> BrokerAddress:
        assert self.marketplace is not None, "the marketplace is not started"
        return self.marketplace.address_for(entry.apid)

    def _record_error(self, iid: str, errno: int, message: str) -> None:
        if self.storage is not None:
            self.storage.record_error(iid, errno, message)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the core services in order (5.1.1), then the apps in configured order (5.1.2)."""
        data_dir = self.config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        other = read_pid(data_dir)
        if other is not None and other != os.getpid():
            raise EdgeRuntimeError(f"an edge runtime (pid {other}) is already running with data_dir {data_dir}")
        reap_orphans(data_dir)
        pid_path(data_dir).write_text(f"{os.getpid()}\n")
        self._started = True
        # 1. The Container Manager is this process; 2. the Data Marketplace.
        self._users = marketplace_users(self.config.apps, self._passwords)
        self.marketplace = Marketplace(self.config.marketplace, data_dir, self._users)
        try:
            self.marketplace.start()
            # 3. The Data Storage Application, with a table for each app instance (section 7).
            self._db = StorageDB.from_settings(self.config.storage)
            for entry in self.config.apps:
                self._db.create_table(entry.iid)
            self.storage = StorageService(
                self.config.storage,
                self._db,
                storage_client(self.core_address(STORAGE_USER), client_id=self.core_client_id(STORAGE_USER)),
            )
            self.storage.start()
            self._manager_client = MarketplaceClient(self.core_client_id(MANAGER_USER), self.core_address(MANAGER_USER))
            self._manager_client.start()
        except Exception as exc:
            self.stop()
            raise EdgeRuntimeError(f"cannot start the edge runtime: {exc}") from exc
        self.manager.start(self._manager_client)
        # The platform is running: start the remaining apps.
        self.manager.start_apps(self.config.apps)
        log.info("edge runtime started with %d app(s); data in %s", len(self.config.apps), data_dir)

    def stop(self) -> None:
        """Shut every app down (section 6), then storage, then the marketplace."""
        if not self._started:
            return
        self._started = False
        log.info("shutting down the edge runtime")
        self.manager.shutdown_apps()
        self.manager.stop()
        if self._manager_client is not None:
            self._manager_client.stop()
            self._manager_client = None
        if self.storage is not None:
            with contextlib.suppress(Exception):
                self.storage.stop()
            self.storage = None
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
            self._db = None
        if self.marketplace is not None:
            with contextlib.suppress(Exception):
                self.marketplace.stop()
            self.marketplace = None
        with contextlib.suppress(OSError):
            if read_pid(self.config.data_dir) == os.getpid():
                pid_path(self.config.data_dir).unlink()
        log.info("edge runtime stopped")

    def reload(self) -> None:
        """Re-read the configuration file: push changed configurations, start new apps, stop removed ones.

        Only the apps are reloaded; changes to [marketplace], [manager] or [storage] are reported
        and take effect at the next start. A broken file changes nothing.
        """
        if self.config.path is None:
            log.warning("reload: the configuration was not read from a file")
            return
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            log.error("reload refused, configuration unchanged: %s", exc)
            return
        for section in ("data_dir", "marketplace", "manager", "storage"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("reload: [%s] changed; it takes effect when the runtime restarts", section)
        wanted = {entry.iid for entry in new.apps}
        removed = [entry for entry in self.config.apps if entry.iid not in wanted]
        # Removed apps keep their accounts until they are stopped, so they still get the shutdown command.
        self._users = marketplace_users([*new.apps, *removed], self._passwords)
        if self.marketplace is not None:
            self.marketplace.update_users(self._users)
        if self._db is not None:
            for entry in new.apps:
                self._db.create_table(entry.iid)
        self.manager.update_apps(new.apps)
        self.config = dataclasses.replace(self.config, apps=new.apps)
        if removed and self.marketplace is not None:
            iids = [entry.iid for entry in removed]
            threading.Thread(target=self._drop_users_when_stopped, args=(iids,), daemon=True).start()
        log.info("configuration reloaded: %d app(s)", len(new.apps))

    def _drop_users_when_stopped(self, iids: list[str]) -> None:
        """Remove the accounts of removed apps once the manager has stopped them."""
        deadline = time.monotonic() + self.config.manager.shutdown_grace + 15.0
        while time.monotonic() < deadline and self._started:
            apps = self.manager.snapshot().get("apps", {})
            if not any(iid in apps for iid in iids):
                break
            time.sleep(0.1)
        marketplace = self.marketplace
        if marketplace is None:
            return
        self._users = marketplace_users(self.config.apps, self._passwords)
        try:
            marketplace.update_users(self._users)
        except Exception:
            log.exception("cannot remove the marketplace accounts of %s", ", ".join(iids))

    def run_forever(self) -> None:
        """Run until SIGINT or SIGTERM, reloading on SIGHUP; then shut down in order."""
        if threading.current_thread() is not threading.main_thread():
            raise EdgeRuntimeError("run_forever must run on the main thread (it handles signals)")

        def on_stop(signum: int, frame: FrameType | None) -> None:
            self._stopping.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self._reload_requested.set()

        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        try:
            self.start()
            while not self._stopping.is_set():
                self._stopping.wait(0.2)
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    self.reload()
                self.supervise_marketplace()
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def core_client_id(self, username: str) -> str:
        """Return a core service's MQTT client id: its name plus a digest of the data_dir.

        Stable across restarts (the storage's persistent session is found again) and distinct
        between runtimes sharing one external broker, which would otherwise take each other's
        connections.
        """
        digest = hashlib.sha256(str(self.config.data_dir.resolve()).encode()).hexdigest()[:10]
        return f"{username}-{digest}"

    def supervise_marketplace(self) -> None:
        """Restart a managed Mosquitto that died on its own, with capped back-off.

        The marketplace is a core service (5.1.1): without it no app can be polled or store
        data. Every client reconnects by itself once the broker is back, and the storage
        service's persistent session is lost only if the broker lost it too.
        """
        marketplace = self.marketplace
        if marketplace is None or marketplace.failure is None or self._stopping.is_set():
            return
        now = time.monotonic()
        if now < self._marketplace_retry_at:
            return
        log.error("the Data Marketplace died; restarting it: %s", marketplace.failure)
        self._marketplace_restarts += 1
        try:
            marketplace.stop()
            marketplace.start(self._users)
        except Exception:
            log.exception("cannot restart the Data Marketplace")
        delay = min(60.0, 2.0 ** min(self._marketplace_restarts, 6))
        self._marketplace_retry_at = now + delay

    def request_stop(self) -> None:
        """Ask run_forever to shut down (as SIGTERM does)."""
        self._stopping.set()
