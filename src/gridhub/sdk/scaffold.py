"""``gridhub app new``: scaffold a complete LV-CAP app project from the templates in sdk/templates/app.

The project has a package with an SDK ``App`` subclass, a configuration example (config.json and
an ``[[app]]`` entry for the edge runtime), tests that replay a recorded input file through the
app, a Dockerfile and Makefile for the ``<vendor>/<name>:<version>`` image tag section 4.2 of
the API requires, and a README. Its tests pass as generated.

Templates are plain files ending in ``.tmpl`` with ``{{placeholder}}`` fields; the folder
``__package__`` becomes the Python package and ``gitignore`` becomes ``.gitignore``.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

import gridhub
from gridhub.formats.lvcap import AppId, InstanceId, LvcapError

log = logging.getLogger(__name__)

TEMPLATE_SUFFIX = ".tmpl"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_RENAMES = {"gitignore": ".gitignore"}


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


def scaffold(name: str, vendor: str, *, directory: Path | None = None, version: str = "0.1.0") -> Path:
    """Create the app project in directory (default ./<name>) and return its path.

    Refuses (ScaffoldError, nothing written) bad names and a directory that exists and is not empty.
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
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("created app project %s in %s", names.app_id.apid, target)
    return target
