"""Meta-tests: the user documentation stays true to the code.

They fail when a configuration key, an app environment variable, a ``gridhub`` command or
option, or an LV-CAP topic builder is missing from the docs, when examples/edge.toml does not
load, or when the tutorial's code in docs/apps.md stops working.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import typer

from gridhub.cli import app as cli_app
from gridhub.edge import manager as manager_module
from gridhub.edge.config import load_config, parse_config
from gridhub.formats import lvcap
from gridhub.hub.settings import HubConfigError, HubSettings
from gridhub.sdk.mqtt import BrokerAddress, TlsSettings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE = ROOT / "examples" / "edge.toml"
#: Modules whose settings classes refuse unknown keys through ``reject_unknown``.
SETTINGS_MODULES = ("gridhub.edge.config", "gridhub.edge.manager", "gridhub.edge.marketplace", "gridhub.edge.storage")


def code_words(markdown: str) -> set[str]:
    """Return every word (letters, digits, _, -, LVCAP_*) that appears inside a `code span`."""
    words: set[str] = set()
    for span in re.findall(r"`([^`\n]+)`", markdown):
        words.update(re.findall(r"[A-Za-z0-9_][A-Za-z0-9_-]*", span))
    return words


def accepted_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, set[str]]:
    """Read every section's allowed keys from the code, by recording its reject_unknown calls."""
    seen: dict[str, set[str]] = {}
    for name in SETTINGS_MODULES:
        module = importlib.import_module(name)
        original = module.reject_unknown

        def record(data: Any, allowed: Iterable[str], where: str, _original: Any = original) -> None:
            allowed = list(allowed)
            seen.setdefault(re.sub(r" #\d+$", "", where), set()).update(allowed)
            _original(data, allowed, where)

        monkeypatch.setattr(module, "reject_unknown", record)
    minimal = {
        "version": 1,
        "app": [{"vendor": "acme", "name": "thermal", "version": "1.0.0", "instance": "01", "command": ["x"]}],
    }
    parse_config(minimal, base_dir=tmp_path)
    return seen


def test_every_configuration_key_is_documented(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sections = accepted_keys(monkeypatch, tmp_path)
    # Every settings class was seen, so a new section cannot slip past this test.
    assert set(sections) >= {"top level", "[marketplace]", "[manager]", "[storage]", "[[app]]"}, sections
    documented = code_words((DOCS / "configuration.md").read_text(encoding="utf-8"))
    missing = sorted(f"{where} {key}" for where, keys in sections.items() for key in keys if key not in documented)
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"


def hub_setting_keys() -> set[str]:
    """Return every dotted key HubSettings accepts in its TOML file, proven against its own loader."""
    keys = {f.metadata["key"] for f in dataclasses.fields(HubSettings)}
    # A document setting every key (at its default) loads, so each key is really accepted...
    document: dict[str, Any] = {}
    for field in dataclasses.fields(HubSettings):
        table, _, name = field.metadata["key"].rpartition(".")
        default = field.default
        value = str(default) if isinstance(default, Path) else list(default) if isinstance(default, tuple) else default
        (document.setdefault(table, {}) if table else document)[name] = value
    assert set(HubSettings.from_mapping(document, where="test")) == {f.name for f in dataclasses.fields(HubSettings)}
    # ...and the loader refuses any other key, so the set is complete.
    with pytest.raises(HubConfigError, match="unknown setting"):
        HubSettings.from_mapping({"no_such_key": 1}, where="test")
    return keys


def test_every_hub_setting_is_documented() -> None:
    keys = hub_setting_keys()
    assert len(keys) >= 20 and {"version", "http.port", "smtp.host", "nats.url"} <= keys
    text = (DOCS / "hub.md").read_text(encoding="utf-8")
    # Each table has a section headed with it ("### `[smtp]`") that documents its keys;
    # top-level keys are documented before the first table's section.
    sections = {"": text.split("\n### `[", 1)[0]}
    for match in re.finditer(r"^#+ `\[(\w+)\]`$(.*?)(?=^#+ |\Z)", text, re.MULTILINE | re.DOTALL):
        sections[match[1]] = match[2]
    missing = []
    for key in sorted(keys):
        table, _, name = key.rpartition(".")
        if table not in sections:
            missing.append(f"{key} (no section headed `[{table}]`)")
        elif name not in code_words(sections[table]):
            missing.append(key)
    assert not missing, f"docs/hub.md does not document the hub settings {', '.join(missing)}"


def test_every_app_environment_variable_is_documented(tmp_path: Path) -> None:
    config = parse_config(
        {"version": 1, "app": [{"vendor": "a", "name": "b", "version": "1", "instance": "01", "command": ["x"]}]},
        base_dir=tmp_path,
    )
    tls = TlsSettings(ca_file=tmp_path / "ca.crt", cert_file=tmp_path / "c.crt", key_file=tmp_path / "c.key")
    env = manager_module.app_environment(config.apps[0], BrokerAddress(tls=tls), tmp_path)
    documented = code_words((DOCS / "configuration.md").read_text(encoding="utf-8"))
    missing = sorted(name for name in env if name not in documented)
    assert not missing, f"docs/configuration.md does not document the app variables {', '.join(missing)}"


def cli_commands(command: Any, path: str) -> Iterable[tuple[str, Any]]:
    """Yield ("gridhub edge run", command) for every leaf command of the CLI (typer's click objects)."""
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from cli_commands(sub, f"{path} {name}")
    else:
        yield path, command


def test_every_cli_command_and_option_is_documented() -> None:
    pages = {page.name: page.read_text(encoding="utf-8") for page in DOCS.glob("*.md")}
    commands = list(cli_commands(typer.main.get_command(cli_app), "gridhub"))
    assert len(commands) >= 6
    missing: list[str] = []
    for path, command in commands:
        # Each command has a section of its own ("## `gridhub app new`" or deeper) on some page,
        # and that page documents its options.
        homes = [text for text in pages.values() if re.search(rf"^#+ `{re.escape(path)}`$", text, re.MULTILINE)]
        if not homes:
            missing.append(f"{path} (no section headed `{path}` in docs/)")
            continue
        reference = homes[0]
        for param in command.params:
            for option in getattr(param, "opts", []):
                if option.startswith("--") and option != "--help" and option not in reference:
                    missing.append(f"{path} {option}")
    assert not missing, f"not documented: {'; '.join(missing)}"


def test_example_configuration_loads_and_names_its_interpreter() -> None:
    config = load_config(EXAMPLE)
    assert config.apps, "examples/edge.toml should show at least one app"
    for entry in config.apps:
        if not entry.attached:
            assert entry.command, f"{entry.iid}: no command"


def topic_builders() -> list[tuple[str, str]]:
    """Return (builder name, topic with <IID>) for every topic builder of formats.lvcap."""
    builders = []
    for name in lvcap.__all__:
        if not name.endswith("_topic") or name.startswith(("validate_", "split_")):
            continue
        function = getattr(lvcap, name)
        params = inspect.signature(function).parameters
        topic = function("vendor_name_01") if "iid" in params else function()
        builders.append((name, topic.replace("vendor_name_01", "<IID>")))
    return builders


def test_every_topic_builder_is_documented() -> None:
    text = (DOCS / "lvcap.md").read_text(encoding="utf-8")
    builders = topic_builders()
    assert len(builders) >= 14
    missing = [f"{name} ({topic})" for name, topic in builders if f"{name}(" not in text or f"`{topic}" not in text]
    assert not missing, f"docs/lvcap.md does not document the topics of {', '.join(missing)}"


def tutorial_files() -> dict[str, str]:
    """Return the files of the apps.md tutorial: each code block preceded by <!-- file: NAME -->."""
    text = (DOCS / "apps.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- file: (\S+) -->\n```[a-z]*\n(.*?)\n```\n", text, flags=re.DOTALL)
    return {name: body + "\n" for name, body in blocks}


def test_tutorial_code_runs(tmp_path: Path) -> None:
    files = tutorial_files()
    assert {"acme_thermal.py", "tests/test_acme_thermal.py", "plain_counter.py", "edge.toml"} <= set(files)
    for name, body in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    load_config(tmp_path / "edge.toml")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, f"the tutorial's tests failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"


def test_hub_md_complete_file_sets_every_setting_at_its_default() -> None:
    text = (DOCS / "hub.md").read_text(encoding="utf-8")
    block = re.search(r"A complete file with every key at its default:\n\n```toml\n(.*?)\n```", text, re.DOTALL)
    assert block, "docs/hub.md lost its complete settings file"
    values = HubSettings.from_mapping(tomllib.loads(block[1]), where="docs/hub.md")  # refuses unknown keys
    fields = dataclasses.fields(HubSettings)
    missing = sorted(f.metadata["key"] for f in fields if f.name not in values)
    assert not missing, f"docs/hub.md's complete file lacks {', '.join(missing)}"

    def plain(value: Any) -> Any:
        return str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple | list) else value

    wrong = [f.metadata["key"] for f in fields if plain(values[f.name]) != plain(f.default)]
    assert not wrong, f"docs/hub.md's complete file has other values than the defaults for {', '.join(wrong)}"
