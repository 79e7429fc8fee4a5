"""The README's "Using it through an Infernet node" examples, against infernet-client 1.4.0 as published.

Nothing here needs a node: each call the section's Python makes into infernet-client or
infernet-ml is bound to the installed package's own signature, and each `infernet-client`
command line is parsed against that command's own options, so an example 1.4.0 would refuse
(`sub=`, `--rpc_url`, a required option left out, a subscription file of an older release)
fails here. Run by `nox -s compat`, which installs infernet-client 1.4.0 without its
dependencies (it requires an infernet-ml release that was never published); elsewhere this
module is skipped.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import re
import shlex
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click  # uvicorn's dependency, so present wherever the core is
import pytest

if importlib.util.find_spec("infernet_client") is None:
    pytest.skip("needs infernet-client 1.4.0 (nox -s compat installs it)", allow_module_level=True)

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Using it through an Infernet node"
CHECKED_PACKAGES = ("infernet_client", "infernet_ml")

# What the section must show: the four ways (an off-chain job and its result, a stream, an
# on-chain request made with infernet-ml, a delegated subscription), in Python and on the command line.
CALLS_SHOWN = {
    "NodeClient",
    "NodeClient.request_job",
    "NodeClient.get_job_result_sync",
    "NodeClient.request_stream",
    "NodeClient.request_delegated_subscription",
    "JobRequest",
    "RPC",
    "RPC.get_checksum_address",
    "Subscription",
    "encode_css_completion_request",
}
COMMANDS_SHOWN = {"job", "stream", "sub"}


def _stand_in_quart() -> types.ModuleType:
    """infernet-ml's `utils.spec`, which infernet-client imports, imports Quart for a server
    helper the client never calls; Quart is not among the compat session's locked packages."""
    module = types.ModuleType("quart")
    module.Quart = type("Quart", (), {})  # type: ignore[attr-defined]
    module.request = None  # type: ignore[attr-defined]
    return module


def _import(name: str) -> types.ModuleType:
    if importlib.util.find_spec("quart") is not None or "quart" in sys.modules:
        return importlib.import_module(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "quart", _stand_in_quart())
        return importlib.import_module(name)


# -- the README's code blocks ---------------------------------------------------------------------


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.find("\n" + SECTION + "\n")
    assert start >= 0, f"README.md has no section {SECTION!r}"
    end = text.find("\n## ", start + len(SECTION) + 2)
    return text[start : end if end >= 0 else len(text)]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", _section(), flags=re.MULTILINE | re.DOTALL)


# -- Python: every call into the packages binds to its signature ------------------------------------


@dataclass
class _Names:
    """What the section's Python blocks, read in order, have bound: imported objects of the
    checked packages, and variables holding an instance of one of their classes."""

    objects: dict[str, Any] = field(default_factory=dict)
    instances: dict[str, type] = field(default_factory=dict)
    called: set[str] = field(default_factory=set)


def _placeholders(call: ast.Call) -> tuple[list[None], dict[str, None]]:
    assert not any(isinstance(arg, ast.Starred) for arg in call.args), ast.unparse(call)
    assert all(keyword.arg is not None for keyword in call.keywords), ast.unparse(call)
    return [None] * len(call.args), {str(keyword.arg): None for keyword in call.keywords}


def _bind(target: Any, call: ast.Call, *, method: bool) -> None:
    args, kwargs = _placeholders(call)
    where = ast.unparse(call)
    if isinstance(target, type) and hasattr(target, "__required_keys__"):  # a TypedDict
        assert not args, f"{where}: a TypedDict takes keyword arguments only"
        allowed = target.__required_keys__ | target.__optional_keys__
        assert set(kwargs) <= allowed, f"{where}: {sorted(set(kwargs) - allowed)} not among {sorted(allowed)}"
        missing = target.__required_keys__ - set(kwargs)
        assert not missing, f"{where}: missing {sorted(missing)}"
        return
    signature = inspect.signature(target)
    try:
        signature.bind(*([None] if method else []), *args, **kwargs)
    except TypeError as e:
        pytest.fail(f"{where}: {e}; infernet-client 1.4.0's signature is {signature}")


def _imports(tree: ast.Module, names: _Names) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(CHECKED_PACKAGES):
            module = _import(str(node.module))
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                names.objects[alias.asname or alias.name] = getattr(module, alias.name)


def _instances(tree: ast.Module, names: _Names) -> None:
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)):
            made = names.objects.get(node.value.func.id)
            if isinstance(made, type) and not hasattr(made, "__required_keys__"):
                names.instances[node.targets[0].id] = made


def _calls(tree: ast.Module, names: _Names) -> None:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id in names.objects:
            _bind(names.objects[node.func.id], node, method=False)
            names.called.add(node.func.id)
        elif (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
              and node.func.value.id in names.instances):
            cls = names.instances[node.func.value.id]
            assert hasattr(cls, node.func.attr), f"{ast.unparse(node)}: {cls.__name__} has no {node.func.attr}"
            _bind(getattr(cls, node.func.attr), node, method=True)
            names.called.add(f"{cls.__name__}.{node.func.attr}")


def _checked_python() -> _Names:
    """The blocks are read as one program, as a reader does: a later block uses the imports
    and the `client` of an earlier one."""
    trees = [ast.parse(source) for source in _blocks("python")]
    names = _Names()
    for step in (_imports, _instances, _calls):
        for tree in trees:
            step(tree, names)
    return names


def test_python_examples_bind_to_the_installed_signatures() -> None:
    names = _checked_python()
    missing = CALLS_SHOWN - names.called
    assert not missing, f"the section shows no call of {sorted(missing)}"


# -- the command line: every option exists, every required one is given ---------------------------


@dataclass
class _Command:
    line: str
    tokens: list[str]


def _shell(block: str) -> tuple[list[_Command], dict[str, str]]:
    """The `infernet-client` command lines of a sh block, and the files it writes with heredocs."""
    files = {name: body for name, tag, body in re.findall(r"^cat > (\S+) <<'(\w+)'\n(.*?)\n\2$", block,
                                                          flags=re.MULTILINE | re.DOTALL)}
    joined = block.replace("\\\n", " ")
    commands = [_Command(line, shlex.split(line, comments=True))
                for line in joined.splitlines() if line.startswith("infernet-client ")]
    return commands, files


def _cli() -> Any:
    return _import("infernet_client.cli").cli


def _options(command: Any) -> Iterator[tuple[Any, list[str]]]:
    for param in command.params:
        if param.param_type_name == "option":
            yield param, [*param.opts, *param.secondary_opts]


def _given(command: Any, cmd: _Command) -> dict[str, str | None]:
    """Each option of the line by its parameter's name, with its value (None for a flag)."""
    by_flag = {flag: param for param, flags in _options(command) for flag in flags}
    given: dict[str, str | None] = {}
    tokens = iter(cmd.tokens[2:])
    for token in tokens:
        assert token.startswith("-"), f"{cmd.line}: `{token}` is not an option (the command takes no arguments)"
        flag, has_value, inline = token.partition("=")
        param = by_flag.get(flag)
        if param is None:
            pytest.fail(f"{cmd.line}: infernet-client {cmd.tokens[1]} has no option {flag}; it has {sorted(by_flag)}")
        if param.is_flag:
            given[param.name] = None
            continue
        value = inline if has_value else next(tokens, None)
        assert value is not None, f"{cmd.line}: {flag} needs a value"
        if not isinstance(param.type, click.File) and "$" not in value:
            try:
                param.type.convert(value, param, None)
            except click.BadParameter as e:
                pytest.fail(f"{cmd.line}: {flag} {value}: {e.message}")
        given[param.name] = value
    return given


def test_command_lines_use_the_installed_commands_and_options() -> None:
    cli = _cli()
    shown: set[str] = set()
    files: dict[str, str] = {}
    for block in _blocks("sh"):
        commands, written = _shell(block)
        files |= written
        for cmd in commands:
            name = cmd.tokens[1]
            assert name in cli.commands, f"{cmd.line}: infernet-client has no command {name}"
            command = cli.commands[name]
            given = _given(command, cmd)
            required = {param.name for param, _ in _options(command) if param.required}
            assert required <= set(given), f"{cmd.line}: required {sorted(required - set(given))} not given"
            for option in ("input", "params"):
                if given.get(option) in files:
                    data = json.loads(files[str(given[option])])
                    assert isinstance(data, dict), f"{given[option]} is not a JSON object"
                    if option == "params":  # the command makes `Subscription(**params)`
                        _subscription_accepts(data)
            shown.add(name)
    missing = COMMANDS_SHOWN - shown
    assert not missing, f"the section shows no `infernet-client {' / '.join(sorted(missing))}`"


def _subscription_accepts(params: dict[str, Any]) -> None:
    subscription: Callable[..., Any] = _import("infernet_client.chain.subscription").Subscription
    try:
        inspect.signature(subscription).bind(**params)
    except TypeError as e:
        pytest.fail(f"the subscription file does not fit infernet-client 1.4.0's Subscription: {e}")
