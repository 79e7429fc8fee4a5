"""The test matrix: `nox` runs tests (3.11-3.13), lint, types and compat.

Every `plugins/*/` directory with a `pyproject.toml` is installed next to the core, so a
new plugin joins the matrix by existing. `scripts/test` installs nox and uv and runs this.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.11", "3.12", "3.13"]
COMPAT_PYTHON = "3.12"
TEST_DEPS = ["pytest>=8", "pytest-asyncio>=0.24", "hypothesis>=6.100", "schemathesis>=4", "eth-abi>=5.0"]
LINT_PATHS = ["css_core", "plugins", "tests", "bench", "noxfile.py"]
# Linters gain rules with each release: their versions move only when someone bumps them here.
RUFF = "ruff>=0.17,<0.18"
MYPY = "mypy>=2.4,<2.5"

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "plugin", "bare", "lint", "types", "compat"]
# A missing interpreter: nox tries to install it with uv; failing that, it is an error when
# CI is set (the matrix is the point) and a loud skip on a developer's machine.


def _pyenv_root() -> Path | None:
    if root := os.environ.get("PYENV_ROOT"):
        return Path(root)
    if pyenv := shutil.which("pyenv"):
        try:
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return Path(out.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def _expose_pyenv_pythons() -> None:
    """Put pyenv's own `bin/` of each matrix version on PATH.

    pyenv's shims only answer for the versions selected by `pyenv global/local`, so
    `python3.12` fails when 3.12 is installed but not selected. Prepending the newest
    installed patch release of each wanted minor version lets nox find them all from a
    plain shell.
    """
    root = _pyenv_root()
    if root is None or not (root / "versions").is_dir():
        return

    def release(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in path.name.split("."))

    found: list[str] = []
    for minor in PYTHONS:
        candidates = [
            path
            for path in (root / "versions").glob(f"{minor}.*")
            if path.name.replace(".", "").isdigit() and (path / "bin" / f"python{minor}").exists()
        ]
        if candidates:
            found.append(str(max(candidates, key=release) / "bin"))
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([*found, *(entry for entry in path if entry not in found)])


_expose_pyenv_pythons()


def _plugin_dirs() -> list[Path]:
    return sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))


def _project_dirs() -> list[Path]:
    return [ROOT, *_plugin_dirs()]


def _dist_name(directory: Path) -> str:
    with (directory / "pyproject.toml").open("rb") as f:
        name: str = tomllib.load(f)["project"]["name"]
    return name


def _install(session: nox.Session, directories: list[Path], *extra: str) -> None:
    """Install these project directories (not editable: the wheels are what ships).

    uv caches the wheel it builds from a local directory until the directory's
    pyproject.toml changes, so the project's own distributions are rebuilt explicitly.
    """
    args: list[str] = []
    if session.venv_backend == "uv":
        for directory in directories:
            args += ["--reinstall-package", _dist_name(directory)]
    session.install(*args, *(str(d) for d in directories), *extra)


def _install_project(session: nox.Session, *extra: str) -> None:
    """The core and every plugin."""
    _install(session, _project_dirs(), *extra)


def _entry_point_modules(directory: Path) -> list[str]:
    with (directory / "pyproject.toml").open("rb") as f:
        entry_points: dict[str, str] = tomllib.load(f)["project"]["entry-points"]["css_inference_service"]
    return [value.split(":")[0] for value in entry_points.values()]


# Each plugin's own tests, as pytest arguments, by its directory under plugins/. The rows of
# test_providers.py carry the provider's name in their ids, so -k selects one plugin's.
PLUGIN_TESTS = {
    "openai": ["tests/test_contract.py"],
    "perplexity": ["tests/test_providers.py", "-k", "PERPLEXITYAI"],
    "goose": ["tests/test_providers.py", "-k", "GOOSEAI"],
}


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole project's tests (core and plugins), without the compat suite."""
    _install_project(session, *TEST_DEPS)
    session.run("pytest", "tests", "--ignore=tests/compat", *session.posargs)


@nox.session(python=PYTHONS[0])
def lint(session: nox.Session) -> None:
    """ruff check (configured in pyproject.toml); nothing is rewritten."""
    session.install(RUFF)
    session.run("ruff", "check", *LINT_PATHS, *session.posargs)


@nox.session(python=PYTHONS[0])
def types(session: nox.Session) -> None:
    """mypy --strict on css_core, with the project installed so third-party types resolve."""
    _install_project(session, MYPY)
    session.run("mypy", "--strict", "-p", "css_core", *session.posargs)


@nox.session(python=COMPAT_PYTHON)
def compat(session: nox.Session) -> None:
    """Byte compatibility with infernet-ml from PyPI (its normal install, dependencies and all)."""
    _install_project(session, "infernet-ml", *TEST_DEPS)
    session.run("pytest", "tests/compat", *session.posargs)


@nox.session(python=PYTHONS[0])
@nox.parametrize("name", [d.name for d in _plugin_dirs()])
def plugin(session: nox.Session, name: str) -> None:
    """The core with this one plugin installed alone passes that plugin's tests."""
    if name not in PLUGIN_TESTS:
        session.error(f"plugins/{name} has no tests: add them to PLUGIN_TESTS in noxfile.py")
    directory = ROOT / "plugins" / name
    _install(session, [ROOT, directory], *TEST_DEPS)
    # the installed plugin's tests must run: they fail, rather than skip, if it is missing
    env = {"CSS_TEST_REQUIRE_PLUGINS": ",".join(_entry_point_modules(directory))}
    session.run("pytest", *PLUGIN_TESTS[name], *session.posargs, env=env)


@nox.session(python=PYTHONS[0])
def bare(session: nox.Session) -> None:
    """The core with no plugin starts, and answers every job with an error naming the provider."""
    _install(session, [ROOT], *TEST_DEPS)
    session.run("pytest", "tests/test_no_plugins.py", *session.posargs, env={"CSS_TEST_BARE": "1"})


@nox.session(python=PYTHONS[0], default=False)
def bench(session: nox.Session) -> None:
    """Issue 5's benchmark (bench/run.py, ~8-10 min on 2 cores): DIRECT vs the service, one table.

    Needs wrk and taskset on PATH (Debian: apt-get install -y wrk util-linux); arguments after
    `--` go to run.py, e.g. `nox -s bench -- --quick`. Not run by a bare `nox`.
    """
    for tool, package in (("wrk", "wrk"), ("taskset", "util-linux")):
        if shutil.which(tool) is None:
            session.error(f"bench needs {tool} on PATH (Debian: apt-get install -y {package})")
    # bytecode compiled at install, as pip does: compiling ~700 modules in each worker at
    # start-up would leave ~6 MB more in it
    compile_bytecode = ["--compile-bytecode"] if session.venv_backend == "uv" else []
    _install(session, [ROOT, ROOT / "plugins" / "openai"], *compile_bytecode)
    session.run("python", "bench/run.py", *session.posargs)
