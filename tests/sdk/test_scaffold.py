"""gridhub app new: a complete project whose own tests pass, with the names the API requires."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest
from typer.testing import CliRunner

import gridhub
from gridhub.cli import app as cli
from gridhub.sdk.scaffold import ScaffoldError, scaffold, source_tree, template_root


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
        ".gitignore", ".dockerignore", "Dockerfile", "Makefile", "README.md", "config.json", "edge-app.toml",
        "pyproject.toml", "src/acme_thermal_rating/__init__.py", "src/acme_thermal_rating/__main__.py",
        "src/acme_thermal_rating/app.py", "tests/test_app.py", "tests/data/inputs.jsonl", "wheels/README.md",
        f"wheels/gridhub-{gridhub.__version__}-py3-none-any.whl",
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
    assert "{{" not in "".join(p.read_text() for p in folder.rglob("*") if p.is_file() and p.suffix != ".whl")
    # gridhub is on no public index: every install the project documents takes it from wheels/.
    install = "python -m pip install --find-links wheels -e '.[dev]'"
    assert install in result.output and install in (folder / "Makefile").read_text()
    assert install.replace("'", '"') in (folder / "README.md").read_text()
    assert "RUN pip install --no-cache-dir --find-links wheels ." in (folder / "Dockerfile").read_text()
    assert "wheels" not in (folder / ".gitignore").read_text()  # a clone and a docker build need it


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


def test_without_a_wheel_the_project_says_where_gridhub_must_come_from(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    result = CliRunner().invoke(cli, ["app", "new", "thermal", "--vendor", "acme", "--dir", str(folder), "--no-wheel"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (folder / "wheels").iterdir()] == ["README.md"]  # the Dockerfile's COPY still works
    assert "wheels/ has no gridhub wheel: copy one there" in result.output


def test_a_wheel_that_cannot_be_built_leaves_nothing_behind_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source_tree(Path(gridhub.__file__).resolve().parent) is None:
        pytest.skip("gridhub is not imported from its source tree here, so no wheel is built with pip")
    # Offline with no build backend at hand: pip cannot fetch hatchling to build the wheel.
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(ScaffoldError, match="cannot build a gridhub wheel from") as raised:
        scaffold("thermal", "acme", directory=tmp_path / "p")
    assert "gridhub app new --no-wheel" in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


# -- from `gridhub app new` to a tested app in a fresh virtual environment ------------------------


def _fresh_venv(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Make a venv with pip and no gridhub; gridhub's dependencies come from this venv through a .pth.

    Installing them from the package index would take minutes; linking every distribution of our
    site-packages except gridhub (and pip) keeps the test about what matters: gridhub itself must
    resolve from the project's wheels/.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=180)
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name
        if name.startswith(("gridhub", "_editable_impl_gridhub", "__editable__")) or name.endswith(".pth"):
            continue
        if name in ("pip", "__pycache__") or name.startswith("pip-"):
            continue
        (deps / name).symlink_to(entry)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    (Path(purelib) / "gridhub_test_deps.pth").write_text(f"{deps}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env = {k: v for k, v in env.items() if not k.startswith("PYTEST_")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    return venv, env


def _sh(command: str | list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = ["bash", "-c", command] if isinstance(command, str) else command
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command} in {cwd}:\n{done.stdout}\n{done.stderr}"
    return done


def _where(venv: Path, modules: list[str], cwd: Path, env: dict[str, str]) -> list[Path]:
    """Return the files the venv's Python would load the modules from (without running them)."""
    code = f"import importlib.util as u; print(*[u.find_spec(m).origin for m in {modules!r}], sep='\\n')"
    return [Path(line).resolve() for line in _sh([str(venv / "bin" / "python"), "-c", code], cwd, env).stdout.split()]


def _record_is_true(wheel: Path) -> bool:
    with zipfile.ZipFile(wheel) as archive:
        record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        for line in archive.read(record).decode().splitlines():
            name, digest, size = line.rsplit(",", 2)
            if name == record:
                continue
            data = archive.read(name)
            expected = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            if digest != expected or int(size) != len(data):
                return False
        return set(archive.namelist()) == {line.rsplit(",", 2)[0] for line in archive.read(record).decode().split()}


def _build_as_the_dockerfile_says(project: Path, image: Path, venv: Path, env: dict[str, str]) -> list[str]:
    """Follow the Dockerfile's WORKDIR/COPY/RUN with the fresh venv standing in for the base image."""
    ignored = [
        line.strip().rstrip("/") for line in (project / ".dockerignore").read_text().splitlines() if line.strip()
    ]
    workdir, cmd = image, []
    for line in (project / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        op, _, arg = line.strip().partition(" ")
        if op == "WORKDIR":
            workdir = image / arg.strip().lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            *sources, dest = arg.split()
            for source in sources:
                assert (project / source).exists(), f"COPY {source}: not in the project"
                assert not any(fnmatch(source, pattern) for pattern in ignored), f"COPY {source}: in .dockerignore"
                if (project / source).is_dir():
                    shutil.copytree(project / source, workdir / dest)
                else:
                    shutil.copy(project / source, workdir / dest if not dest.endswith("/") else workdir)
        elif op == "RUN":
            _sh(arg, workdir, env)
        elif op == "CMD":
            cmd = json.loads(arg)
    return cmd


@pytest.mark.timeout(600)
def test_a_fresh_venv_follows_the_printed_next_steps_and_the_dockerfile(tmp_path: Path) -> None:
    project = tmp_path / "over-temp"
    result = CliRunner().invoke(cli, ["app", "new", "over-temp", "--vendor", "acme", "--dir", str(project)])
    assert result.exit_code == 0, result.output
    next_steps = next(line.strip() for line in result.output.splitlines() if line.strip().startswith("cd "))
    venv, env = _fresh_venv(tmp_path)

    # What the CLI printed, word for word: install (gridhub from wheels/), the project's tests, the check.
    done = _sh(next_steps, tmp_path, env)
    assert "3 passed" in done.stdout and "result: PASS" in done.stdout, done.stdout
    gridhub_file, app_file = _where(venv, ["gridhub", "acme_over_temp"], tmp_path, env)
    assert gridhub_file.is_relative_to(venv.resolve())  # installed from the wheel, not this checkout
    assert app_file.is_relative_to(project.resolve())  # the editable project

    # The gridhub now installed in the venv is a plain install: its `app new` repacks it into wheels/.
    second = tmp_path / "second"
    _sh(
        [str(venv / "bin" / "gridhub"), "app", "new", "second", "--vendor", "acme", "--dir", str(second)], tmp_path, env
    )
    (built,) = (project / "wheels").glob("gridhub-*.whl")
    (repacked,) = (second / "wheels").glob("gridhub-*.whl")
    assert repacked.name == built.name and _record_is_true(repacked)
    with zipfile.ZipFile(built) as a, zipfile.ZipFile(repacked) as b:
        assert set(a.namelist()) == set(b.namelist())

    # The Dockerfile of that project, step by step, in the venv with gridhub and the app uninstalled.
    _sh([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-y", "gridhub", "acme-over-temp"], tmp_path, env)
    cmd = _build_as_the_dockerfile_says(second, tmp_path / "image", venv, env)
    assert cmd == ["python", "-m", "acme_second"]
    for module in _where(venv, ["gridhub", "acme_second", "acme_second.__main__"], tmp_path, env):
        assert module.is_relative_to(venv.resolve())  # both installed by the image's RUN, not from the sources


def test_the_project_folder_gets_the_usual_permissions(tmp_path: Path) -> None:
    """Not the 0700 of the staging folder: a team shares the project, a Docker build reads it."""
    umask = os.umask(0o022)
    try:
        target = scaffold("thermal", "acme", directory=tmp_path / "shared", wheel=False)
    finally:
        os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o755
