"""A provider plugin made the way a third party makes it: its own distribution, installed.

The plugin is the one docs/plugins.md builds (`css-acme`, provider ACMEAI, on-chain id
42), read from the guide's code blocks: it is installed (not editable) into this
interpreter's environment once for the module and uninstalled at teardown, whatever
happens. The service is started by its command line, as the node starts it. Plugins that
clash with it or break are installed as distributions into a directory of their own that
only the service under test sees (`PYTHONPATH`), so a concurrent test run in the same
environment never meets them.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from css_core.testing import ProviderDouble
from tests.conftest import (
    KEY,
    OFFCHAIN,
    ONCHAIN,
    STREAM,
    Launched,
    assert_error,
    chat,
    free_port,
    job,
    onchain_hex,
    post_job,
    run_command,
)
from tests.test_contract import completion_of, supported

pytestmark = pytest.mark.processes  # installs a plugin package into the environment

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
DIST, VERSION = "css-acme", "1.0.0"
_FILE_BLOCK = re.compile(r"^```\w*\n# file: (?P<path>\S+)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)

# a plugin distribution built with setuptools (the guide's uses hatchling)
_SETUPTOOLS_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
dependencies = ["css-inference-service"]

[project.entry-points.css_inference_service]
{entry} = "{module}"

[tool.setuptools]
py-modules = ["{module}"]
"""
_PROVIDER_MODULE = """\
from css_core import ProviderSpec, hookimpl


@hookimpl
def css_provider():
    return ProviderSpec(name={name!r}, onchain_id={onchain_id}, api_key_env="X_API_KEY",
                        default_base_url="https://x.example")
"""
_RAISING_MODULE = """\
from css_core import hookimpl


@hookimpl
def css_provider():
    raise RuntimeError("the licence file is missing")
"""
_UNIMPORTABLE_MODULE = 'raise ImportError("needs acme-sdk, which is not installed")\n'


def pip(*args: str, reinstall: str | None = None) -> None:
    """`pip install|uninstall ARGS` for this interpreter: with uv if there is one, else pip."""
    uv = Path(sys.executable).with_name("uv")
    uv_path = str(uv) if uv.exists() else shutil.which("uv")
    if uv_path:
        command = [uv_path, "pip", *args, "--python", sys.executable]
        command += ["--reinstall-package", reinstall] if reinstall else []
    elif importlib.util.find_spec("pip"):
        command = [sys.executable, "-m", "pip", *args]
        command += ["-y"] if args[0] == "uninstall" else ["--force-reinstall", "--no-deps"] if reinstall else []
    else:
        pytest.fail("neither uv (on PATH or next to python) nor pip can install a plugin into this environment")
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"


def write_guide_plugin(root: Path) -> Path:
    """The files of docs/plugins.md's code blocks marked `# file: PATH`, under `root`."""
    files = {m["path"]: m["body"] for m in _FILE_BLOCK.finditer(GUIDE.read_text(encoding="utf-8"))}
    assert {"css-acme/pyproject.toml", "css-acme/css_acme/__init__.py"} <= set(files), sorted(files)
    for path, body in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(body, encoding="utf-8")
    return root / "css-acme"


def write_plugin(root: Path, dist: str, module_source: str) -> Path:
    """A one-module setuptools distribution `dist` whose entry point is its module."""
    module = dist.replace("-", "_")
    directory = root / dist
    directory.mkdir()
    (directory / "pyproject.toml").write_text(_SETUPTOOLS_PYPROJECT.format(dist=dist, entry=module, module=module))
    (directory / f"{module}.py").write_text(module_source)
    return directory


class Installed:
    """The guide's plugin in this interpreter's environment, as `pip install` puts it."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.installed = False

    def install(self) -> None:
        if not self.installed:
            pip("install", str(self.source), reinstall=DIST)
            self.installed = True

    def uninstall(self) -> None:
        if self.installed:
            self.installed = False
            pip("uninstall", DIST)


@contextmanager
def environment_lock() -> Iterator[None]:
    """Hold this environment for one test run: two runs in one environment at once (two
    developers, say) would otherwise install and uninstall the plugin under each other."""
    name = hashlib.sha256(sys.prefix.encode()).hexdigest()[:16]
    with (Path(tempfile.gettempdir()) / f"css-inference-service-plugin-tests-{name}.lock").open("w") as lock:
        deadline = time.monotonic() + 300
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test run has held {lock.name} for 5 minutes")
                time.sleep(0.2)
        yield


@pytest.fixture(scope="module")
def acme_distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    installed = Installed(write_guide_plugin(tmp_path_factory.mktemp("guide")))
    with environment_lock():
        try:
            yield installed
        finally:
            installed.installed = True  # uninstall even after a failed install
            installed.uninstall()


@pytest.fixture
def acme(acme_distribution: Installed) -> Installed:
    """The guide's plugin, installed (again, if a test uninstalled it)."""
    acme_distribution.install()
    return acme_distribution


@pytest.fixture(scope="module")
def side_plugins(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, str]]:
    """`side_plugins(name=module_source, ...)`: install them into a directory of their own;
    returns the `PYTHONPATH` that shows them to the service."""

    def install(**sources: str) -> dict[str, str]:
        root = tmp_path_factory.mktemp("side-plugins")
        target = root / "site"
        directories = [str(write_plugin(root, dist.replace("_", "-"), source)) for dist, source in sources.items()]
        pip("install", "--no-deps", "--target", str(target), *directories)
        return {"PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}

    return install


@pytest.fixture(scope="module")
def acme_api() -> Iterator[ProviderDouble]:
    """ACME's API as the guide describes it: OpenAI's chat completions, its own key header."""
    with ProviderDouble(KEY, auth_header="x-acme-key", auth_scheme=None,
                        required_headers={"acme-version": "2025-01-01"}) as provider:
        yield provider


@pytest.fixture
def double(acme_api: ProviderDouble) -> Iterator[ProviderDouble]:
    acme_api.reset()
    yield acme_api
    acme_api.reset()


def acme_env(double: ProviderDouble) -> dict[str, str]:
    return {"ACMEAI_API_KEY": KEY, "ACMEAI_BASE_URL": f"{double.url}/v1"}


def acme_chat(content: str = "hi", model: str = "acme-large") -> dict[str, object]:
    return chat(content, model=model, provider="ACMEAI")


def plugin_rows(stdout: str) -> dict[str, list[str]]:
    """The table of `css-inference-service plugins`, by distribution."""
    return {line.split()[0]: line.split() for line in stdout.splitlines()[1:] if not line.startswith("error:")}


# -- installed: listed, served, discovered ---------------------------------------------------------


def test_plugins_command_lists_it(acme: Installed, tmp_path: Path) -> None:
    result = run_command("plugins", env={"ACMEAI_API_KEY": KEY}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert plugin_rows(result.stdout)[DIST] == [DIST, VERSION, "ACMEAI", "42", "completions", "ACMEAI_API_KEY", "set"]
    keyless = run_command("plugins", env={}, cwd=tmp_path)
    assert plugin_rows(keyless.stdout)[DIST][-3:] == ["ACMEAI_API_KEY", "NOT", "SET"]


@pytest.mark.parametrize(
    ("source", "destination"),
    [(OFFCHAIN, OFFCHAIN), (ONCHAIN, ONCHAIN), (OFFCHAIN, STREAM)],
    ids=["offchain", "onchain", "stream"],
)
def test_it_serves_jobs(
    acme: Installed, double: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client,
    source: int, destination: int,
) -> None:
    service = launch(acme_env(double), workers=1)
    raw_input = onchain_hex("Héllo", model="acme-small", provider_id=42) if source == ONCHAIN else ""
    data = raw_input or acme_chat("Héllo", model="acme-small")
    response = post_job(http, service.url, job(data, source=source, destination=destination))
    assert completion_of(response, destination, raw_input) == double.expected_reply("acme-small", "Héllo")
    (request,) = double.requests
    assert (request.path, request.headers["x-acme-key"]) == ("/v1/chat/completions", KEY)
    assert request.headers["acme-version"] == "2025-01-01" and "authorization" not in request.headers
    assert request.json["messages"] == [{"role": "user", "content": "Héllo"}]


def test_service_resources_list_its_models(
    acme: Installed, double: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client
) -> None:
    service = launch(acme_env(double), workers=1)
    models = http.get(service.url + "/service-resources").json()["compute_capability"][0]["models"]
    assert [m["name"] for m in models if m["owner"] == "ACMEAI"] == ["acme-large", "acme-small"]
    assert supported(http, service.url, "ACMEAI/acme-large") is True
    assert supported(http, service.url, "ACMEAI/acme-xl") is False


def test_the_guides_own_tests_pass(acme: Installed) -> None:
    tests = acme.source / "tests"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        cwd=acme.source, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


# -- uninstalled: gone -------------------------------------------------------------------------------


def test_uninstalling_removes_the_provider(
    acme: Installed, double: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client, tmp_path: Path
) -> None:
    acme.uninstall()
    service = launch(acme_env(double), workers=1)
    assert_error(post_job(http, service.url, job(acme_chat())), 400, "'ACMEAI'", "not installed")
    onchain = job(onchain_hex(provider_id=42), source=ONCHAIN, destination=ONCHAIN)
    assert_error(post_job(http, service.url, onchain), 400, "on-chain id 42")
    assert supported(http, service.url, "ACMEAI/acme-large") is False
    assert DIST not in plugin_rows(run_command("plugins", env={}, cwd=tmp_path).stdout)
    assert double.requests == []


# -- clashing and broken plugins ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rival", "name", "onchain_id"),
    [("css-acme-fork", "acmeai", 43), ("css-other", "OTHERAI", 42)],
    ids=["same-name-in-another-case", "same-onchain-id"],
)
def test_a_clash_stops_start_up_naming_both_distributions(
    acme: Installed, side_plugins: Callable[..., dict[str, str]], tmp_path: Path,
    rival: str, name: str, onchain_id: int,
) -> None:
    env = side_plugins(**{rival: _PROVIDER_MODULE.format(name=name, onchain_id=onchain_id)})
    result = run_command(f"--bind=127.0.0.1:{free_port()}", env=env | {"ACMEAI_API_KEY": KEY}, cwd=tmp_path, timeout=15)
    assert result.returncode != 0
    assert f"{DIST} {VERSION}" in result.stderr and f"{rival} 0.1.0" in result.stderr, result.stderr
    assert "both claim provider" in result.stderr


def test_broken_plugins_are_reported_by_name_and_the_others_serve(
    acme: Installed, side_plugins: Callable[..., dict[str, str]], double: ProviderDouble,
    launch: Callable[..., Launched], http: httpx.Client, tmp_path: Path,
) -> None:
    env = side_plugins(css_raising=_RAISING_MODULE, css_unimportable=_UNIMPORTABLE_MODULE) | acme_env(double)
    reports = [
        ("'css_raising' from css-raising 0.1.0 failed to describe its provider", "the licence file is missing"),
        ("'css_unimportable' from css-unimportable 0.1.0 failed to load", "needs acme-sdk"),
    ]
    listing = run_command("plugins", env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    errors = [line for line in listing.stdout.splitlines() if line.startswith("error: plugin ")]
    assert len(errors) == 2 and all(any(a in e and b in e for e in errors) for a, b in reports), listing.stdout
    assert set(plugin_rows(listing.stdout)) >= {DIST}

    service = launch(env, workers=1)
    response = post_job(http, service.url, job(acme_chat()))
    assert completion_of(response, OFFCHAIN) == double.expected_reply("acme-large", "hi")
    log = service.stop()
    assert all(a in log and b in log for a, b in reports), log
