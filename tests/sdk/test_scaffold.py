"""gridhub app new: a complete project whose own tests pass, with the names the API requires."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gridhub.cli import app as cli
from gridhub.sdk.scaffold import ScaffoldError, scaffold, template_root


def test_the_generated_projects_own_tests_pass(tmp_path: Path) -> None:
    project = scaffold("over-temp", "acme", directory=tmp_path / "over-temp", version="1.2.0")
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_cli_creates_the_whole_project_with_the_lvcap_names(tmp_path: Path) -> None:
    folder = tmp_path / "thermal"
    result = CliRunner().invoke(cli, ["app", "new", "thermal-rating", "--vendor", "acme", "--dir", str(folder),
                                      "--version", "2.0.1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert files == {
        ".gitignore", "Dockerfile", "Makefile", "README.md", "config.json", "edge-app.toml", "pyproject.toml",
        "src/acme_thermal_rating/__init__.py", "src/acme_thermal_rating/__main__.py",
        "src/acme_thermal_rating/app.py", "tests/test_app.py", "tests/data/inputs.jsonl",
    }  # fmt: skip
    tag = "acme/thermal-rating:2.0.1"
    assert f"docker build -t {tag} ." in (folder / "README.md").read_text()
    assert f'lvcap.tag="{tag}"' in (folder / "Dockerfile").read_text()
    assert f"IMAGE := {tag}" in (folder / "Makefile").read_text()
    assert "docker build -t $(IMAGE) ." in (folder / "Makefile").read_text()
    pyproject = tomllib.loads((folder / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == "2.0.1"
    assert any(dep.startswith("gridhub") for dep in pyproject["project"]["dependencies"])
    assert pyproject["tool"]["gridhub"]["app"] == {
        "vendor": "acme", "name": "thermal-rating", "version": "2.0.1", "instance": "01",
        "entry": "acme_thermal_rating.app:ThermalRatingApp",
    }  # fmt: skip
    edge = tomllib.loads((folder / "edge-app.toml").read_text())
    entry = edge["app"][0]
    assert (entry["vendor"], entry["name"], entry["version"], entry["instance"]) == ("acme", "thermal-rating",
                                                                                     "2.0.1", "01")  # fmt: skip
    assert entry["command"] == ["python", "-m", "acme_thermal_rating"]
    assert set(entry["config"]) == {"input", "limit"}
    assert "class ThermalRatingApp(App):" in (folder / "src/acme_thermal_rating/app.py").read_text()
    assert "{{" not in "".join(p.read_text() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Thermal", "--vendor", "acme"], "Application Name 'Thermal': only lowercase letters"),
        (["thermal", "--vendor", "ac_me"], "Vendor 'ac_me'"),
        (["thermal", "--vendor", "-acme"], "may not start with a hyphen"),
        (["thermal", "--vendor", "acme", "--version", ".1"], "Application Version '.1'"),
        (["t" * 30, "--vendor", "v" * 10, "--version", "1.0.0"], "must be less than 44"),
    ],
)
def test_names_are_checked_with_the_api_rules_and_nothing_is_written(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, ["app", "new", *args, "--dir", str(tmp_path / "p")])
    assert result.exit_code == 2
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_an_existing_project_folder_is_not_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(ScaffoldError, match="already exists"):
        scaffold("thermal", "acme", directory=folder)
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no staging folder left behind


def test_the_generated_project_passes_the_conformance_check(tmp_path: Path) -> None:
    project = scaffold("over-temp", "acme", directory=tmp_path / "over-temp")
    result = CliRunner().invoke(cli, ["app", "check", str(project), "--config", str(project / "config.json"),
                                      "--input", str(project / "tests/data/inputs.jsonl")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "acme_over-temp_01" in result.output and "result: PASS" in result.output


def test_templates_are_package_data_inside_the_wheel_source_tree() -> None:
    # [tool.hatch.build.targets.wheel] packages = ["src/gridhub"] ships every file below it.
    root = Path(str(template_root()))
    package_dir = Path(__file__).resolve().parents[2] / "src" / "gridhub"
    assert root.is_relative_to(package_dir)
    assert (root / "Dockerfile.tmpl").is_file()
