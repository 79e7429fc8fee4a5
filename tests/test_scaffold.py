"""`css-inference-service new-plugin NAME`: the package it writes, the names it refuses, and,
installed, that package's own tests passing."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from css_core.edge.cli import main
from css_core.testing import ProviderDouble, serve_service
from tests.conftest import command_env, run_command
from tests.test_third_party_plugin import pip


def new_plugin(*args: str) -> None:
    main(["new-plugin", *args])


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The message of a `new-plugin ARGS` that must exit with status 2."""
    with pytest.raises(SystemExit) as exited:
        new_plugin(*args)
    assert exited.value.code == 2
    return capsys.readouterr().err


def load(path: Path, name: str) -> ModuleType:
    """The generated module at `path`, imported under `name` (not installed)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writes_a_plugin_package(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    new_plugin("Acme_Labs", "--dir", str(root), "--onchain-id", "201", "--base-url", "https://llm.example/api/")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "css_acme_labs/__init__.py", "pyproject.toml", "tests/test_acme_labs.py",
    ]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["build-system"]["build-backend"] == "hatchling.build"
    assert project["project"]["name"] == "css-acme-labs"
    assert project["project"]["dependencies"][0].startswith("css-inference-service")
    assert project["project"]["entry-points"] == {"css_inference_service": {"acme_labs": "css_acme_labs"}}
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["css_acme_labs"]
    assert "uv" not in project["tool"]  # written outside this repository: no workspace source

    spec = load(root / "css_acme_labs" / "__init__.py", "scaffold_acme_labs").css_provider()
    assert (spec.name, spec.onchain_id, spec.api_key_env) == ("ACME_LABS", 201, "ACME_LABS_API_KEY")
    assert (spec.default_base_url, spec.base_url_variable) == ("https://llm.example/api", "ACME_LABS_BASE_URL")
    readme = (root / "README.md").read_text()
    assert "ACME_LABS_API_KEY" in readme and "on-chain id 201" in readme
    assert "[201, 0, MODEL" in (root / "tests" / "test_acme_labs.py").read_text()


def test_the_generated_module_serves_jobs(tmp_path: Path) -> None:
    new_plugin("ACME", "--dir", str(tmp_path / "pkg"))
    plugin = load(tmp_path / "pkg" / "css_acme" / "__init__.py", "scaffold_acme")
    with ProviderDouble("sk-test") as double, serve_service(
        {"ACME_API_KEY": "sk-test", "ACME_BASE_URL": f"{double.url}/v1"}, plugins=[plugin]
    ) as url:
        data = {"provider": "ACME", "model": "m", "params": {"messages": [{"role": "user", "content": "hi"}]}}
        job = {"source": 1, "destination": 1, "data": data, "requires_proof": False}
        response = httpx.post(f"{url}/service_output", json=job, timeout=30)
    assert response.json() == {"output": double.expected_reply("m", "hi")}
    assert double.requests[-1].headers["authorization"] == "Bearer sk-test"


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSS_REQUEST_TRIES", "many")  # the service's configuration is not read
    new_plugin("acme")
    assert "pip install -e './css-acme[test]'" in capsys.readouterr().out
    spec = load(tmp_path / "css-acme" / "css_acme" / "__init__.py", "scaffold_defaults").SPEC
    assert (spec.name, spec.onchain_id, spec.default_base_url) == ("ACME", 200, "https://api.acme.example/v1")
    assert "`new-plugin` writes 200, a high id" in (tmp_path / "css-acme" / "README.md").read_text()


def test_an_empty_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    new_plugin("ACME", "--dir", str(tmp_path / "pkg"))
    assert (tmp_path / "pkg" / "pyproject.toml").is_file()


@pytest.mark.parametrize("existing", ["file", "directory with a file"])
def test_an_existing_target_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: str) -> None:
    target = tmp_path / "pkg"
    if existing == "file":
        target.write_text("mine")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    assert "already exists and is not an empty directory" in refused(capsys, "ACME", "--dir", str(target))
    if existing == "file":
        assert target.read_text() == "mine"
    else:
        assert [path.name for path in target.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("name", ["acme_", "1acme", "ac-me", "ac me", "_acme", "acmé"])
def test_bad_names_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    assert "cannot name a provider: use letters, digits and underscores" in refused(
        capsys, name, "--dir", str(tmp_path / "pkg"))
    assert not (tmp_path / "pkg").exists()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--onchain-id", "256", "an on-chain id is a uint8, 0 to 255"),
    ("--onchain-id", "-1", "an on-chain id is a uint8, 0 to 255"),
    ("--base-url", "api.acme.example", "expected an http(s) URL"),
])
def test_bad_options_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    assert message in refused(capsys, "ACME", "--dir", str(tmp_path / "pkg"), f"{option}={value}")
    assert not (tmp_path / "pkg").exists()


def test_the_name_belongs_to_new_plugin_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert "new-plugin needs the provider's NAME" in refused(capsys)
    with pytest.raises(SystemExit) as exited:
        main(["plugins", "ACME"])
    assert exited.value.code == 2
    assert "only new-plugin takes a NAME" in capsys.readouterr().err


@pytest.mark.processes  # installs the generated package and runs its tests in another pytest
def test_the_generated_package_installs_and_its_tests_pass(tmp_path: Path) -> None:
    root = tmp_path / "css-acme-labs"
    written = run_command("new-plugin", "ACME_LABS", "--dir", str(root), env={}, cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    site = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(site), str(root))  # a wheel built by hatchling, as pip builds it
    assert (site / "css_acme_labs" / "__init__.py").is_file() and not (site / "css_acme_labs" / "tests").exists()

    elsewhere = tmp_path / "elsewhere"  # so the package is imported from where it was installed
    elsewhere.mkdir()
    env = {k: v for k, v in command_env({}).items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(root)], env=env,
                            cwd=elsewhere, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    tests = len(re.findall(r"^def test_", (root / "tests" / "test_acme_labs.py").read_text(), re.MULTILINE))
    assert re.search(rf"\b{tests} passed\b", result.stdout), result.stdout[-2000:]
