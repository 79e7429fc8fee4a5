"""The test matrix: `nox` runs tests (3.11-3.13), lint, types and compat.

Every `plugins/*/` directory with a `pyproject.toml` is installed next to the core, so a
new plugin joins the matrix by existing (once `uv lock` has added it to uv.lock).
`scripts/test` installs nox and uv and runs this.

Every session but `latest` installs the exact versions of uv.lock: `uv export --locked`
writes them to a constraints file that each install uses, and fails, naming `uv lock`, when
the lock no longer matches the pyproject.toml files, so CI never resolves new versions by
itself. `latest` ignores the lock and takes the newest release of everything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path

import nox
from nox.command import CommandFailed

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.11", "3.12", "3.13"]
COMPAT_PYTHON = "3.12"
LINT_PATHS = ["css_core", "plugins", "tests", "bench", "noxfile.py"]
# The test and tool requirements are the [dependency-groups] of pyproject.toml (test, lint,
# types, compat), locked in uv.lock with everything else.

nox.options.default_venv_backend = "uv|virtualenv"
# CI's matrix, kept within its time: the whole suite on the oldest and the newest Python;
# 3.12 (the Docker image's) runs each plugin alone, the bare core and compat. `nox -s
# tests-3.12` runs the whole suite there too.
nox.options.sessions = ["tests-3.11", "tests-3.13", "plugin", "bare", "scaffold", "lint", "types", "compat"]
IMAGE_PYTHON = "3.12"
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


def _group(name: str) -> list[str]:
    """The requirements of one [dependency-groups] entry of pyproject.toml (PEP 735)."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        groups: dict[str, list[str | dict[str, str]]] = tomllib.load(f)["dependency-groups"]
    requirements: list[str] = []
    for item in groups[name]:
        requirements += _group(item["include-group"]) if isinstance(item, dict) else [item]
    return requirements


def _uv(session: nox.Session) -> str:
    """The uv that nox uses (scripts/test installs the pinned one next to nox), else uv on PATH."""
    try:
        import uv  # next to nox when scripts/test installed them

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    if found := shutil.which("uv"):
        return found
    session.error("uv is needed to read uv.lock: run scripts/test, or install uv (pip install uv)")


def _locked_constraints(session: nox.Session, groups: Sequence[str]) -> Path:
    """A constraints file with the exact version in uv.lock of every package the core, any
    plugin and these dependency groups may need; `uv export --locked` fails if uv.lock is stale."""
    path = Path(session.create_tmp()) / "uv-lock-constraints.txt"
    args = ["--locked", "--no-hashes", "--all-packages", "--no-emit-workspace", "--no-default-groups"]
    for group in groups:
        args += ["--group", group]
    try:
        session.run_install(_uv(session), "export", "--quiet", *args, "--output-file", str(path), external=True)
    except CommandFailed:
        session.error(
            "uv.lock does not match the pyproject.toml files (a dependency or a plugins/*/ directory "
            "was added, removed or changed): run `uv lock`, then commit uv.lock"
        )
    return path


def _install(
    session: nox.Session, directories: Sequence[Path], groups: Sequence[str] = (), *extra: str, locked: bool = True
) -> None:
    """Install these project directories (not editable: the wheels are what ships) and the
    requirements of these dependency groups, at uv.lock's versions unless `locked` is false.

    uv caches the wheel it builds from a local directory until the directory's
    pyproject.toml changes, so the project's own distributions are rebuilt explicitly.
    """
    args: list[str] = []
    if locked:
        args += ["--constraint", str(_locked_constraints(session, groups))]
    if session.venv_backend == "uv":
        for directory in directories:
            args += ["--reinstall-package", _dist_name(directory)]
    requirements = [requirement for group in groups for requirement in _group(group)]
    session.install(*args, *(str(d) for d in directories), *requirements, *extra)


def _install_project(session: nox.Session, groups: Sequence[str] = (), *extra: str, locked: bool = True) -> None:
    """The core and every plugin."""
    _install(session, _project_dirs(), groups, *extra, locked=locked)


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
    "anthropic": ["tests/test_anthropic.py"],
    "gemini": ["tests/test_gemini.py"],
    "azure": ["tests/test_azure.py"],
}


CONTRACTS = ROOT / "contracts"


def _install_evm_tools(session: nox.Session) -> None:
    """anvil and solcjs for tests/test_evm.py, at contracts/package-lock.json's versions (`npm ci`).

    Kept between runs, and installed again only when the lock is newer than what npm last installed.
    Without npm the EVM tests skip, naming the command, or fail when CI is set.
    """
    installed = CONTRACTS / "node_modules" / ".package-lock.json"  # npm's record of what it installed
    if installed.is_file() and installed.stat().st_mtime >= (CONTRACTS / "package-lock.json").stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        session.warn("npm is not on PATH: tests/test_evm.py cannot get anvil and solc (skipped, or failed under CI)")
        return
    session.run(npm, "ci", "--prefix", str(CONTRACTS), "--no-audit", "--no-fund", external=True)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole project's tests (core and plugins), without the compat suite."""
    _install_project(session, ["test"])
    # Only the oldest Python runs the tests marked `processes` (the command line's processes,
    # a plugin package installed, anvil): they take half the suite's time and do the same on
    # every Python, where the in-process tests run the same code.
    processes = [] if session.python == PYTHONS[0] else ["-m", "not processes"]
    if not processes:
        _install_evm_tools(session)
    # two pytest workers (pytest-xdist): most tests wait on sockets and subprocesses
    session.run("pytest", "tests", "--ignore=tests/compat", "-n", "2", *processes, *session.posargs)


@nox.session(python=PYTHONS[0])
def lint(session: nox.Session) -> None:
    """ruff check (configured in pyproject.toml); nothing is rewritten."""
    _install(session, [], ["lint"])
    session.run("ruff", "check", *LINT_PATHS, *session.posargs)


@nox.session(python=PYTHONS[0])
def types(session: nox.Session) -> None:
    """mypy --strict on css_core, with the project installed so third-party types resolve."""
    _install_project(session, ["types"])
    session.run("mypy", "--strict", "-p", "css_core", *session.posargs)


@nox.session(python=COMPAT_PYTHON)
def compat(session: nox.Session) -> None:
    """Byte compatibility with infernet-ml from PyPI (its dependencies and all, at uv.lock's versions).

    The `compat` group is installed alone: uv.lock resolves it apart from `test` (pyproject.toml).
    """
    _install_project(session, ["compat"])
    # the README's examples through a node are checked against infernet-client 1.4.0, which requires an
    # infernet-ml release that was never published: it goes in without its dependencies (the group's cover it)
    session.install("--no-deps", "infernet-client==1.4.0")
    session.run("pytest", "tests/compat", *session.posargs)


@nox.session(python=IMAGE_PYTHON)
@nox.parametrize("name", [d.name for d in _plugin_dirs()], ids=[d.name for d in _plugin_dirs()])  # plugin(goose)
def plugin(session: nox.Session, name: str) -> None:
    """The core with this one plugin installed alone passes that plugin's tests."""
    if name not in PLUGIN_TESTS:
        session.error(f"plugins/{name} has no tests: add them to PLUGIN_TESTS in noxfile.py")
    directory = ROOT / "plugins" / name
    _install(session, [ROOT, directory], ["test"])
    # the installed plugin's tests must run: they fail, rather than skip, if it is missing
    env = {"CSS_TEST_REQUIRE_PLUGINS": ",".join(_entry_point_modules(directory))}
    session.run("pytest", *PLUGIN_TESTS[name], *session.posargs, env=env)


@nox.session(python=IMAGE_PYTHON)
def bare(session: nox.Session) -> None:
    """The core with no plugin starts, and answers every job with an error naming the provider."""
    _install(session, [ROOT], ["test"])
    session.run("pytest", "tests/test_no_plugins.py", *session.posargs, env={"CSS_TEST_BARE": "1"})


@nox.session(python=IMAGE_PYTHON)
def scaffold(session: nox.Session) -> None:
    """`css-inference-service new-plugin` writes a plugin that installs next to the core and passes its own tests."""
    _install(session, [ROOT])
    with tempfile.TemporaryDirectory(prefix="css-scaffold-") as tmp:
        # outside the repository, as a plugin author's would be: no conftest or config of ours applies
        plugin = Path(tmp) / "css-acme"
        session.run("css-inference-service", "new-plugin", "ACME", "--dir", str(plugin))
        # as its README says, with its own `test` extra and none of our test tools, so that what it
        # declares is shown to be enough; pytest at uv.lock's version, the core the one just installed
        reinstall = ["--reinstall-package", "css-acme"] if session.venv_backend == "uv" else []
        constraints = _locked_constraints(session, ["test"])
        session.install("--constraint", str(constraints), *reinstall, f"{plugin}[test]")
        session.run("pytest", "-p", "no:cacheprovider", str(plugin), *session.posargs)


@nox.session(python=PYTHONS[0], default=False)
def bench(session: nox.Session) -> None:
    """The benchmark (bench/run.py; bench/README.md says how long it runs): the service, the floor and DIRECT.

    Needs wrk and taskset on PATH (Debian: apt-get install -y wrk util-linux); arguments after
    `--` go to run.py, e.g. `nox -s bench -- --quick`, or to another of bench/'s scripts when
    they start with its name (`nox -s bench -- micro.py --conc 16`). Not run by a bare `nox`.
    """
    for tool, package in (("wrk", "wrk"), ("taskset", "util-linux")):
        if shutil.which(tool) is None:
            session.error(f"bench needs {tool} on PATH (Debian: apt-get install -y {package})")
    # bytecode compiled at install, as pip does: each worker compiling its modules at start-up
    # would keep more memory (bench/RESULTS.md)
    compile_bytecode = ["--compile-bytecode"] if session.venv_backend == "uv" else []
    _install(session, [ROOT, ROOT / "plugins" / "openai"], [], *compile_bytecode)
    # measured against httpx-aiohttp (the service-pyreqwest column, micro.py's transport cases) and
    # the profiler of profile.py: the bench's own tools, never the service's dependencies
    session.install("pyreqwest==0.15.1", "py-spy==0.4.3")
    args = list(session.posargs)
    script = args.pop(0) if args and args[0] in ("run.py", "micro.py", "profile.py", "fake_provider.py") else "run.py"
    session.run("python", f"bench/{script}", *args)


_INSTALLED = "import json, importlib.metadata as m; print(json.dumps({d.name: d.version for d in m.distributions()}))"


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _log_versions_not_locked(session: nox.Session) -> None:
    """Log each installed distribution whose version is not uv.lock's (what `latest` moved)."""
    lock = Path(session.create_tmp()) / "uv-lock.txt"
    export = ["--frozen", "--no-hashes", "--all-packages", "--no-emit-workspace", "--no-default-groups"]
    session.run_install(
        _uv(session), "export", "--quiet", *export, "--group", "test", "--output-file", str(lock), external=True
    )
    if not lock.is_file():  # nothing was installed (--no-install)
        return
    locked = {
        _canonical(name): version.split(";")[0].strip()
        for name, _, version in (line.partition("==") for line in lock.read_text().splitlines())
        if version and not name.startswith((" ", "#"))
    }
    installed: dict[str, str] = json.loads(session.run("python", "-c", _INSTALLED, silent=True) or "{}")
    moved = [
        f"{name} {locked[_canonical(name)]} -> {version}"
        for name, version in sorted(installed.items(), key=lambda item: _canonical(item[0]))
        if locked.get(_canonical(name), version) != version
    ]
    session.log("not at uv.lock's version: " + (", ".join(moved) if moved else "none"))


@nox.session(python=PYTHONS[-1], default=False)
def latest(session: nox.Session) -> None:
    """The tests against the newest release of every dependency, ignoring uv.lock.

    Not part of CI (a new release must not turn a build red by itself): run it to learn
    whether `uv lock --upgrade` is safe, or which release broke us. The versions that differ
    from uv.lock are listed before the tests run.
    """
    upgrade = ["--upgrade"]
    if session.venv_backend == "uv":
        upgrade += ["--resolution", "highest", "--refresh"]
    _install_project(session, ["test"], *upgrade, locked=False)
    _log_versions_not_locked(session)
    session.run("pytest", "tests", "--ignore=tests/compat", *session.posargs)
