"""The ``gridhub hub`` commands: run the hub, and manage its users, layers, sites and applications.

Every command finds the hub's state the same way: ``--config FILE`` (TOML, see
:mod:`gridhub.hub.settings`) and/or ``--data-dir DIR``; with neither, SQLite under ./var/hub.
Secrets (passwords, site tokens, application keys) are read from stdin or shown once, never
taken from the command line and never logged.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gridhub.hub.auth import AuthService, IdentityError, Role
from gridhub.hub.auth.policy import is_reserved_layer
from gridhub.hub.model import Layer, ModelError
from gridhub.hub.settings import HubConfigError, HubSettings
from gridhub.hub.store import Store, StoreError, open_store

__all__ = ["hub"]

hub = typer.Typer(no_args_is_help=True, add_completion=False, help="The gridhub data hub.")
user = typer.Typer(no_args_is_help=True, add_completion=False, help="Hub users (people).")
layer = typer.Typer(no_args_is_help=True, add_completion=False, help="X-FLEX layers (_layers documents).")
site = typer.Typer(no_args_is_help=True, add_completion=False, help="Substation sites allowed to upload.")
app_cmd = typer.Typer(no_args_is_help=True, add_completion=False, help="Application credentials (appId/keyId).")
hub.add_typer(user, name="user")
hub.add_typer(layer, name="layer")
hub.add_typer(site, name="site")
hub.add_typer(app_cmd, name="app")
retention = typer.Typer(no_args_is_help=True, add_completion=False, help="Per-layer sample retention.")
hub.add_typer(retention, name="retention")

LOG_LEVELS = ("debug", "info", "warning", "error")
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="The hub configuration file (TOML).")]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Folder of the hub's SQLite store and files (default ./var/hub).")
]
GrantOption = Annotated[
    list[str] | None,
    typer.Option("--grant", help="LAYER/COLLECTION:read or :write (COLLECTION may be *); repeat for more."),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _settings(config: Path | None, data_dir: Path | None, **overrides: object) -> HubSettings:
    try:
        return HubSettings.load(config, data_dir=data_dir, **overrides)
    except HubConfigError as exc:
        raise _fail(str(exc)) from None


def _open(settings: HubSettings) -> tuple[Store, AuthService]:
    if settings.store.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        store = open_store(settings.store)
    except (StoreError, OSError) as exc:
        raise _fail(f"cannot open the hub store {settings.store}: {exc}") from None
    except Exception as exc:  # a database driver's error: say which store, not a traceback
        raise _fail(f"cannot open the hub store {settings.store}: {type(exc).__name__}: {exc}") from None
    try:
        return store, AuthService(
            store,
            token_ttl=settings.token_ttl,
            password_time_cost=settings.password_time_cost,
            password_memory_kib=settings.password_memory_kib,
        )
    except BaseException:
        store.close()
        raise


def first_user_hint() -> str:
    """Return how to create the first admin."""
    return (
        "No hub users yet. Create the first admin (you choose the password; there is no default):\n"
        "  gridhub hub user add admin --role admin --password-stdin"
    )


@hub.command()
def run(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option("--host", help="Listen address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Listen port (default 8080).")] = None,
    data_dir: DataDirOption = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the hub (X-FLEX API at /api/v2, edge upload at /edge/v1) until interrupted."""
    import uvicorn

    from gridhub.hub import redact
    from gridhub.hub.app import create_app
    from gridhub.hub.faces.live.protocol import MAX_FRAME_BYTES

    settings = _settings(config, data_dir, host=host, port=port)
    if log_level.lower() not in LOG_LEVELS:
        raise _fail(f"--log-level: expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact.install()  # secrets in logged URLs (keyId=..., token=...) read keyId=*** (DESIGN: never logged)
    if settings.store.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        application = create_app(settings)
    except (StoreError, OSError) as exc:
        raise _fail(f"cannot open the hub store {settings.store}: {exc}") from None
    except Exception as exc:  # a database driver's error: say which store, not a traceback
        raise _fail(f"cannot open the hub store {settings.store}: {type(exc).__name__}: {exc}") from None
    if not application.state.ctx.auth.has_users():
        typer.echo(first_user_hint())
    options: dict[str, Any] = {}
    if settings.tls_cert:
        from gridhub.hub.tls import TlsError, uvicorn_ssl_options

        client_ca = Path(settings.tls_client_ca) if settings.tls_client_ca else None
        try:
            options = uvicorn_ssl_options(Path(settings.tls_cert), Path(settings.tls_key), client_ca)
        except TlsError as exc:
            raise _fail(str(exc)) from None
    base = settings.url.removesuffix("/api/v2")
    typer.echo(f"gridhub hub: status page at {base}/, X-FLEX API at {settings.url} (OpenAPI docs at {base}/docs)")
    live = base.replace("http", "ws", 1)
    typer.echo(f"gridhub hub: live updates at {live}/live/v1, store {settings.store}")
    sys.stdout.flush()
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        log_config=redact.uvicorn_log_config(),  # the access log records query strings
        ws_max_size=MAX_FRAME_BYTES,  # not uvicorn's 16 MiB: a live message's limit, read before any auth
        **options,
    )


@user.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name (also accepted by /login).")],
    role: Annotated[Role, typer.Option("--role", help="admin, operator, owner or consumer.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin (first line).")
    ] = False,
    email: Annotated[str, typer.Option("--email", help="Email address (also accepted by /login).")] = "",
    grant: GrantOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Add a user; the password comes from stdin or an interactive prompt, never from the command line."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    store, auth = _open(_settings(config, data_dir))
    try:
        user_id = auth.add_user(name, password, role, email=email, grants=grant or [])
    except IdentityError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    typer.echo(f"user {name} added with role {role.value} (userId {user_id})")


@layer.command("add")
def layer_add(
    file: Annotated[Path, typer.Argument(help="A _layers document (JSON).")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create or replace a layer from its X-FLEX _layers document."""
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _fail(f"{file}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _fail(f"{file}: not valid JSON: {exc}") from None
    try:
        new = Layer.from_document(document, where=str(file))
    except ModelError as exc:
        raise _fail(str(exc)) from None
    from gridhub.hub.faces.xflex.collections import ROUTE_WORDS

    if new.id in ROUTE_WORDS or is_reserved_layer(new.id):
        raise _fail(f"{file}: layer name {new.id!r} is reserved; choose another")
    store, _ = _open(_settings(config, data_dir))
    try:
        created = store.put_layer(new)
    finally:
        store.close()
    names = ", ".join(c.name for c in new.collections) or "no collections"
    typer.echo(f"layer {new.id} {'created' if created else 'replaced'} ({names})")


def _issue_site_cert(settings: HubSettings, auth: AuthService, name: str, directory: Path) -> str:
    """Issue the site's client certificate into directory, record it, and return what was written."""
    from gridhub.hub.tls import (
        SITE_CA_DIR,
        TlsError,
        certificate_fingerprint,
        ensure_site_ca,
        issue_site_certificate,
        pem_to_der,
    )

    try:
        ca = ensure_site_ca(settings.data_dir / SITE_CA_DIR)
        pair = issue_site_certificate(name, ca, directory)
        fingerprint = certificate_fingerprint(pem_to_der(pair.cert_file.read_bytes()))
    except (TlsError, OSError) as exc:
        raise _fail(str(exc)) from None
    auth.record_site_certificate(name, fingerprint)
    return f"certificate {pair.cert_file}, key {pair.key_file}, CA {ca.cert_file} (hub setting tls.client_ca)"


@site.command("add")
def site_add(
    name: Annotated[str, typer.Argument(help="Site (substation) name.")],
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace the token of an existing site.")] = False,
    cert: Annotated[
        Path | None, typer.Option("--cert", help="Also write the site's client certificate and key to this folder.")
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Add a site and print its upload token (shown only this once); --cert also issues its client certificate."""
    settings = _settings(config, data_dir)
    store, auth = _open(settings)
    try:
        if auth.get_site(name) is not None and not rotate:
            raise _fail(f"site {name!r} already exists; pass --rotate to issue it a new token")
        token = auth.issue_site_token(name)
        written = _issue_site_cert(settings, auth, name, cert) if cert is not None else None
    except IdentityError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    typer.echo(f"site {name}: upload token (shown once; the hub keeps only its digest):")
    typer.echo(token)
    if written:
        typer.echo(f"site {name}: client {written}")


@site.command("cert")
def site_cert(
    name: Annotated[str, typer.Argument(help="Site (substation) name.")],
    directory: Annotated[Path, typer.Argument(help="Folder to write <site>.crt and <site>.key to.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Issue an existing site a new client certificate; its earlier certificate stops working at once."""
    settings = _settings(config, data_dir)
    store, auth = _open(settings)
    try:
        if auth.get_site(name) is None:
            raise _fail(f"no site named {name!r}; add it first with `gridhub hub site add {name}`")
        written = _issue_site_cert(settings, auth, name, directory)
    except IdentityError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    typer.echo(f"site {name}: client {written}")


@site.command("remove")
def site_remove(
    name: Annotated[str, typer.Argument(help="Site (substation) name.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Remove a site: its token and client certificate are refused from now on (its data stays)."""
    store, auth = _open(_settings(config, data_dir))
    try:
        removed = auth.remove_site(name)
    finally:
        store.close()
    if not removed:
        raise _fail(f"no site named {name!r}")
    typer.echo(f"site {name} removed: its token and client certificate are refused from now on")


@app_cmd.command("add")
def app_add(
    name: Annotated[str, typer.Argument(help="Application name.")],
    role: Annotated[Role, typer.Option("--role", help="admin, operator, owner or consumer.")] = Role.CONSUMER,
    grant: GrantOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Register an application and print its appId and keyId (the keyId is shown only this once)."""
    store, auth = _open(_settings(config, data_dir))
    try:
        app_id, key_id = auth.add_app(name, role, grants=grant or [])
    except IdentityError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    typer.echo(f"application {name} added with role {role.value} (keyId shown once):")
    typer.echo(f"appId={app_id}")
    typer.echo(f"keyId={key_id}")


@retention.command("run")
def retention_run(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Delete the samples older than their layer's retention now, and print how many per layer."""
    store, _ = _open(_settings(config, data_dir))
    try:
        layers = store.list_layers()
        deleted = store.apply_retention()
    except StoreError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    for found in layers:
        if found.id in deleted:
            days = found.config["retention_days"]
            typer.echo(f"layer {found.id}: deleted {deleted[found.id]} sample(s) older than {days:g} day(s)")
        elif not is_reserved_layer(found.id):  # the identities layer holds no samples
            typer.echo(f"layer {found.id}: no retention (samples are kept for ever)")
    typer.echo(f"retention: deleted {sum(deleted.values())} sample(s) in all")


if __name__ == "__main__":
    hub()
