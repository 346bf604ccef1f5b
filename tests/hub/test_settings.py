"""Hub settings: defaults, the TOML file, overrides and refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridhub.hub.settings import HubConfigError, HubSettings, describe_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "hub.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_run_sqlite_under_var_hub_on_localhost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = HubSettings.load()
    assert settings.data_dir == tmp_path / "var" / "hub"
    assert settings.store == f"sqlite:///{tmp_path / 'var' / 'hub' / 'hub.sqlite'}"
    assert (settings.host, settings.port, settings.url) == ("127.0.0.1", 8080, "http://127.0.0.1:8080/api/v2")
    assert settings.nats_url == "" and settings.smtp_host == ""


def test_file_values_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
version = 1
data_dir = "state"
store = "postgresql://postgres@127.0.0.1:5432/hub"
[http]
host = "0.0.0.0"
port = 9000
[auth]
token_ttl = 600
rate_limit = 50
[resources]
buckets = ["fs", "photos"]
[smtp]
host = "mail.example.org"
port = 587
security = "starttls"
[nats]
url = "nats://127.0.0.1:4222"
domain = "dno1"
""",
    )
    settings = HubSettings.load(path)
    assert settings.data_dir == path.parent / "state"
    assert settings.store == "postgresql://postgres@127.0.0.1:5432/hub"
    assert (settings.host, settings.port, settings.token_ttl, settings.rate_limit) == ("0.0.0.0", 9000, 600.0, 50)
    assert settings.resource_buckets == ("fs", "photos")
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_security) == ("mail.example.org", 587, "starttls")
    assert (settings.nats_url, settings.nats_domain) == ("nats://127.0.0.1:4222", "dno1")
    overridden = HubSettings.load(path, port=9100, host=None, data_dir=tmp_path / "elsewhere")
    assert (overridden.port, overridden.host, overridden.data_dir) == (9100, "0.0.0.0", tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 2", "version: expected 1"),
        ("[http]\nprot = 1", "unknown setting 'http.prot'"),
        ("colour = 'red'", "unknown setting 'colour'"),
        ("[http]\nport = '8080'", "http.port: expected an integer"),
        ("[http]\nport = 70000", "http.port: expected 0-65535"),
        ("[auth]\nrate_limit = 0", "auth.rate_limit: expected an integer >= 1"),
        ("[smtp]\nsecurity = 'ssl'", "smtp.security: expected one of none, starttls, tls"),
        ("[smtp]\npassword = 'changeme'", "placeholder password is refused"),
        ("[nats]\ndomain = 'a.b'", "nats.domain"),
        ("[resources]\nbuckets = 'fs'", "resources.buckets: expected a list"),
        ("port = = 1", "not valid TOML"),
    ],
)
def test_bad_files_are_refused_with_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(HubConfigError, match=message) as refused:
        HubSettings.load(path)
    assert str(path) in str(refused.value)


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(HubConfigError, match="cannot read the hub config"):
        HubSettings.load(tmp_path / "nope.toml")


def test_every_setting_has_a_key_a_default_and_help() -> None:
    described = describe_settings()
    keys = [key for key, _, _ in described]
    assert len(keys) == len(set(keys))
    assert all(help_text for _, _, help_text in described)
    assert {"http.port", "auth.token_ttl", "auth.rate_limit", "smtp.host", "nats.url", "resources.buckets"} <= set(keys)
