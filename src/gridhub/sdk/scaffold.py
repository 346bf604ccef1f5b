"""``gridhub app new``: scaffold a complete LV-CAP app project from the templates in sdk/templates/app.

The project has a package with an SDK ``App`` subclass, a configuration example (config.json and
an ``[[app]]`` entry for the edge runtime), tests that replay a recorded input file through the
app, a Dockerfile and Makefile for the ``<vendor>/<name>:<version>`` image tag section 4.2 of
the API requires, and a README. Its tests pass as generated.

gridhub is on no public package index, so the project gets ``wheels/`` holding a wheel of the
gridhub it was made with; its README, Makefile, Dockerfile and the printed next steps install with
``pip install --find-links wheels``, so they work in a fresh virtual environment and in a Docker
build. The wheel is built from the running gridhub: from its source tree when gridhub is imported
from one (an editable install or a checkout), else repacked from the installed files.

Templates are plain files ending in ``.tmpl`` with ``{{placeholder}}`` fields; the folder
``__package__`` becomes the Python package and ``gitignore`` becomes ``.gitignore``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import metadata, resources
from importlib.abc import Traversable
from pathlib import Path, PurePosixPath

import gridhub
from gridhub.formats.lvcap import AppId, InstanceId, LvcapError

log = logging.getLogger(__name__)

TEMPLATE_SUFFIX = ".tmpl"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_RENAMES = {"gitignore": ".gitignore", "dockerignore": ".dockerignore"}
WHEELS_DIR = "wheels"
"""The project folder holding the gridhub wheel (pip install --find-links wheels)."""
WHEEL_BUILD_TIMEOUT = 600.0
# Files of an installed distribution that belong to the installation, not to the wheel.
_INSTALL_ONLY = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})


class ScaffoldError(ValueError):
    """The project cannot be created; the message says which argument is wrong or what is in the way."""


@dataclass(frozen=True)
class ProjectNames:
    """The names a new project is generated with."""

    vendor: str
    name: str
    version: str

    @property
    def app_id(self) -> AppId:
        """Return the Application ID."""
        return AppId(self.vendor, self.name, self.version)

    @property
    def package(self) -> str:
        """Return the Python package name: <vendor>_<name> with hyphens as underscores."""
        package = f"{self.vendor}_{self.name}".replace("-", "_")
        return package if package[0].isalpha() else f"lvcap_{package}"

    @property
    def class_name(self) -> str:
        """Return the App subclass name: the Application Name in CamelCase + App."""
        words = [part for part in re.split(r"[-_]", self.name) if part]
        camel = "".join(word[:1].upper() + word[1:] for word in words)
        return f"{camel}App" if camel[:1].isalpha() else f"App{camel}"

    def fields(self) -> dict[str, str]:
        """Return the values of the template placeholders."""
        app_id = self.app_id
        return {
            "vendor": self.vendor,
            "name": self.name,
            "version": self.version,
            "apid": app_id.apid,
            "iid": InstanceId(self.vendor, self.name, "01").iid,
            "docker_tag": app_id.docker_tag,
            "package": self.package,
            "class_name": self.class_name,
            "gridhub_version": gridhub.__version__,
        }


def check_names(name: str, vendor: str, version: str) -> ProjectNames:
    """Validate NAME, VENDOR and VERSION with the API's rules (4.2); raise ScaffoldError saying which."""
    try:
        AppId(vendor, name, version)
        InstanceId(vendor, name, "01")
    except LvcapError as exc:
        raise ScaffoldError(f"{exc}") from None
    return ProjectNames(vendor=vendor, name=name, version=version)


def template_root() -> Traversable:
    """Return the folder of the app project templates (package data of gridhub.sdk)."""
    return resources.files("gridhub.sdk") / "templates" / "app"


def render(text: str, fields: dict[str, str], where: str) -> str:
    """Replace every {{field}} in text; an unknown field is a bug in the template."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in fields:
            raise ScaffoldError(f"template {where}: unknown placeholder {{{{{key}}}}}")
        return fields[key]

    return _PLACEHOLDER.sub(value, text)


def _walk(folder: Traversable, relative: Path) -> list[tuple[Path, Traversable]]:
    found: list[tuple[Path, Traversable]] = []
    for item in sorted(folder.iterdir(), key=lambda t: t.name):
        if item.name == "__pycache__":
            continue
        if item.is_dir():
            found.extend(_walk(item, relative / item.name))
        elif item.name.endswith(TEMPLATE_SUFFIX):
            found.append((relative / item.name, item))
    return found


def _output_path(relative: Path, names: ProjectNames) -> Path:
    parts = []
    for part in relative.parts:
        if part.endswith(TEMPLATE_SUFFIX):
            part = part[: -len(TEMPLATE_SUFFIX)]
        part = names.package if part == "__package__" else _RENAMES.get(part, part)
        parts.append(part)
    return Path(*parts)


def gridhub_wheel(dest: Path) -> Path:
    """Put a wheel of the running gridhub into dest and return its path; raise ScaffoldError saying why not.

    From a source tree (an editable install or a checkout on sys.path) the wheel is built with
    ``pip wheel --no-deps`` (pip fetches the build backend from its configured index); from a
    normal installation it is repacked from the installed files listed in the distribution's RECORD.
    """
    package_dir = Path(gridhub.__file__).resolve().parent
    try:
        dist: metadata.Distribution | None = metadata.distribution("gridhub")
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None and Path(str(dist.locate_file("gridhub/__init__.py"))).resolve() == package_dir / "__init__.py":
        return _repack_wheel(dist, dest)
    source = source_tree(package_dir)
    if source is not None:
        return _build_wheel(source, dest)
    where = "no installed distribution" if dist is None else "the installed distribution is not the one imported"
    raise ScaffoldError(
        f"cannot make a gridhub wheel: gridhub is imported from {package_dir}, {where}, and no gridhub "
        "pyproject.toml is above it"
    )


def source_tree(package_dir: Path) -> Path | None:
    """Return the project folder (src layout) gridhub's package_dir belongs to, or None when it is not in one."""
    root = package_dir.parent.parent
    pyproject = root / "pyproject.toml"
    if package_dir.parent.name != "src" or not pyproject.is_file():
        return None
    try:
        name = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if name == "gridhub" else None


def _build_wheel(source: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gridhub-wheel-") as tmp:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", tmp, str(source)]
        log.info("building a gridhub wheel from %s", source)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=WHEEL_BUILD_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ScaffoldError(f"cannot build a gridhub wheel from {source}: {exc}") from None
        built = sorted(Path(tmp).glob("gridhub-*.whl"))
        if done.returncode != 0 or len(built) != 1:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            raise ScaffoldError(
                f"cannot build a gridhub wheel from {source} ({' '.join(command[:6])} ... exited with "
                f"{done.returncode}):\n{tail}"
            )
        return Path(shutil.move(str(built[0]), dest / built[0].name))


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return f"sha256={digest}"


def _repack_wheel(dist: metadata.Distribution, dest: Path) -> Path:
    """Zip the installed package and its metadata back into a wheel (PEP 427), with a fresh RECORD."""
    version = dist.version
    dist_info = f"gridhub-{version}.dist-info"
    wheel_text = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")]
    if not tags or not all(tag.endswith("-any") for tag in tags):
        raise ScaffoldError(f"cannot repack gridhub {version}: its WHEEL file names no pure-Python tag ({tags})")
    members: list[tuple[str, bytes]] = []
    for file in dist.files or []:
        parts = PurePosixPath(str(file)).parts
        if not parts or parts[0] not in ("gridhub", dist_info) or "__pycache__" in parts:
            continue
        if parts[0] == dist_info and parts[-1] in _INSTALL_ONLY:
            continue
        members.append((PurePosixPath(*parts).as_posix(), Path(str(dist.locate_file(file))).read_bytes()))
    if not any(name == "gridhub/__init__.py" for name, _ in members):
        raise ScaffoldError(f"cannot repack gridhub {version}: its RECORD lists no gridhub/__init__.py")
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"gridhub-{version}-{tags[0]}.whl"
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in members]
    record.append(f"{dist_info}/RECORD,,")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
        archive.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    log.info("repacked the installed gridhub %s into %s", version, path)
    return path


def scaffold(
    name: str, vendor: str, *, directory: Path | None = None, version: str = "0.1.0", wheel: bool = True
) -> Path:
    """Create the app project in directory (default ./<name>) and return its path.

    With wheel (the default) wheels/ gets a wheel of the running gridhub (see gridhub_wheel); without,
    wheels/ is left for the developer to fill. Refuses (ScaffoldError, nothing written) bad names, a
    directory that exists and is not empty, and a gridhub wheel that cannot be made.
    """
    names = check_names(name, vendor, version)
    target = Path(directory) if directory is not None else Path.cwd() / name
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target}: already exists and is not an empty folder; choose another --dir")
    fields = names.fields()
    files = _walk(template_root(), Path())
    if not files:
        raise ScaffoldError(f"no templates found in {template_root()} (is gridhub installed completely?)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for relative, template in files:
            out = staging / _output_path(relative, names)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render(template.read_text(encoding="utf-8"), fields, str(relative)), encoding="utf-8")
        if wheel:
            try:
                gridhub_wheel(staging / WHEELS_DIR)
            except (ScaffoldError, OSError) as exc:
                raise ScaffoldError(
                    f"{exc}\nThe project needs a gridhub wheel in {WHEELS_DIR}/ (gridhub is on no public package "
                    "index). Create it without one (gridhub app new --no-wheel) and copy a gridhub wheel there."
                ) from None
        # mkdtemp made the staging folder 0700; the project folder gets the mode mkdir would give it.
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("created app project %s in %s", names.app_id.apid, target)
    return target
