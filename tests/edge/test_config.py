"""Reading the edge configuration file: every bad value is refused with its section and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridhub.edge.config import load_config
from gridhub.edge.settings import ConfigError

GOOD = """
version = 1
data_dir = "var/edge"

[marketplace]
mode = "embedded"
port = 18831

[manager]
status_interval = 2.5
shutdown_grace = 10
restart_backoff = 0.5
restart_backoff_max = 30
crash_loop_restarts = 4

[storage]
max_length = 200

[[app]]
vendor = "acme"
name = "thermal"
version = "1.0.0"
instance = "01"
command = ["python", "-m", "acme_thermal"]

[app.config]
input = "sensor/data/gridhub_simulator_01/transformer/temperature/top-oil"
limits = { high = 90, low = -5 }

[[app]]
vendor = "acme"
name = "logger"
version = "2.1"
instance = "00"
attached = true
password = "s3cret-logger"
"""

APP = '\n[[app]]\nvendor = "acme"\nname = "x"\nversion = "1"\ninstance = "01"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_good_configuration_is_read_in_order_with_sections(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.version == 1
    assert config.data_dir == tmp_path / "var" / "edge"
    assert config.manager.status_interval == 2.5 and config.manager.crash_loop_restarts == 4
    assert config.marketplace.mode == "embedded" and config.marketplace.port == 18831
    assert config.storage.max_length == 200
    assert [a.iid for a in config.apps] == ["acme_thermal_01", "acme_logger_00"]
    thermal, logger = config.apps
    assert thermal.apid == "acme_thermal_1.0.0"
    assert thermal.command == ("python", "-m", "acme_thermal")
    assert thermal.workdir == tmp_path
    assert thermal.configuration()["ContainerConfig"]["limits"] == {"high": 90, "low": -5}
    assert logger.attached and logger.password == "s3cret-logger" and logger.command == ()
    assert config.app("acme_logger_00") is logger
    assert config.path == tmp_path / "edge.toml"


def test_minimal_configuration_takes_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "version = 1\n"))
    assert config.apps == ()
    assert config.manager.status_interval == 120.0 and config.manager.shutdown_grace == 60.0
    assert config.data_dir == tmp_path / "var" / "edge"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("", "version: required"),
        ("version = 2", "version: this runtime reads configuration version 1, got 2"),
        ('version = "1"', "version"),
        ("version = 1\ncolour = 3", "colour"),
        ("version = 1\ndata_dir = 5", "data_dir"),
        ("version = 1\nmanager = 5", "manager"),
        ("version = 1\n[manager]\nstatus_interval = 'soon'", "[manager] status_interval"),
        ("version = 1\n[manager]\nstatus_interval = 0", "[manager] status_interval"),
        ("version = 1\n[manager]\nshutdown_grace = -1", "[manager] shutdown_grace"),
        ("version = 1\n[manager]\nrestart_backoff = 5\nrestart_backoff_max = 1", "[manager] restart_backoff_max"),
        ("version = 1\n[manager]\ncrash_loop_restarts = 1.5", "[manager] crash_loop_restarts"),
        ("version = 1\n[manager]\nstatus_intervall = 3", "[manager]: unknown key(s) status_intervall"),
        ("version = 1\n[marketplace]\nmode = 'cloud'", "[marketplace] mode"),
        ("version = 1\n[storage]\nmax_length = 0", "[storage] max_length"),
        ("version = 1\napp = 3", "app: expected an array"),
        ("version = 1" + APP.replace('vendor = "acme"\n', ""), "[[app]] #1 vendor: required"),
        ("version = 1" + APP.replace('name = "x"', 'name = "X_Y"'), "[[app]] #1 vendor/name/version"),
        ("version = 1" + APP.replace('version = "1"', 'version = "1 0"'), "[[app]] #1 vendor/name/version"),
        ("version = 1" + APP.replace('instance = "01"', 'instance = "1"'), "[[app]] #1 instance"),
        ("version = 1" + APP.replace('instance = "01"', "instance = 1"), "[[app]] #1 instance"),
        ("version = 1" + APP, "[[app]] #1 command: required unless attached"),
        ("version = 1" + APP + "command = 'run-me'", "[[app]] #1 command: expected a list"),
        ("version = 1" + APP + "command = ['']", "[[app]] #1 command"),
        ("version = 1" + APP + "attached = true", "[[app]] #1 password: required when attached"),
        ("version = 1" + APP + "attached = 'yes'\npassword = 'p'", "[[app]] #1 attached"),
        ("version = 1" + APP + "command = ['x']\nimage = 'acme/x:1'", "[[app]] #1: unknown key(s) image"),
        ("version = 1" + APP + "command = ['x']\nconfig = 5", "[[app]] #1 config"),
        ("version = 1" + APP + "command = ['x']\n[app.config]\nstart = 2024-01-01T00:00:00", "[[app]] #1 config"),
        (
            "version = 1" + APP + "command = ['x']" + APP.replace('version = "1"', 'version = "2"') + "command = ['y']",
            "[[app]] #2 instance: IID acme_x_01 is already used by [[app]] #1",
        ),
        (
            "version = 1"
            + APP
            + "attached = true\npassword = 'a'"
            + APP.replace('"01"', '"02"')
            + "attached = true\npassword = 'b'",
            "[[app]] #2 password: APID acme_x_1 is also [[app]] #1 with another password",
        ),
    ],
)
def test_bad_configuration_names_the_key(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert where in message, message


def test_missing_file_and_bad_toml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "version = = 1"))


def test_error_changes_nothing_on_disk(tmp_path: Path) -> None:
    path = write(tmp_path, "version = 1\ndata_dir = 'edge'\n[manager]\nstatus_interval = 'x'\n")
    with pytest.raises(ConfigError):
        load_config(path)
    assert not (tmp_path / "edge").exists()


def test_several_instances_of_one_app_get_their_own_client_ids(tmp_path: Path) -> None:
    """4.2 allows several instances of one app; MQTT allows one connection per client id."""
    text = "version = 1" + APP + "command = ['x']" + APP.replace('"01"', '"02"') + "command = ['y']"
    config = load_config(write(tmp_path, text))
    assert [entry.iid for entry in config.apps] == ["acme_x_01", "acme_x_02"]
    assert [entry.client_id for entry in config.apps] == ["acme_x_1-01", "acme_x_1-02"]
    single = load_config(write(tmp_path, "version = 1" + APP + "command = ['x']"))
    assert single.apps[0].client_id == ""  # the APID itself (Table 4)
