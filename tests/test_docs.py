"""docs/plugins.md documents every public name a plugin author imports: an outside author
should find `css_core.testing` and `css_core.openai_format` there, not only with `help()`.

An entry is a list item or a table row whose first code span opens with the name (e.g.
`` - `Fault.status(code, *, retry_after=None, body=None)`: ... ``); a name that is only
mentioned in passing has no entry. The arguments of a callable must appear in its entry,
and the attributes and methods of the kit's classes somewhere in the kit's reference.
(Each hook has its own meta-test, in test_plugins.py.)
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import css_core.testing
from css_core import openai_format
from css_core.testing import (
    Event,
    Fault,
    Framing,
    ProviderDouble,
    RecordedRequest,
    Replies,
    Route,
    ServiceServer,
    Stream,
    fixtures,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
KIT = "The testing kit, name by name"
OPENAI_FORMAT = "OpenAI-compatible providers"
_ENTRY = re.compile(r"^[ \t]*(?:[-*]|\|)[ \t]*`([A-Za-z_][\w.]*)([^`]*)`", re.MULTILINE)


def section(title: str, doc: str | None = None) -> str:
    """The text under the `## title` heading of the guide, down to the next `## ` heading."""
    text = DOC.read_text(encoding="utf-8") if doc is None else doc
    start = text.find(f"\n## {title}\n")
    assert start >= 0, f"docs/plugins.md has no section '## {title}'"
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def entries(text: str) -> dict[str, str]:
    """Each entry's name and its first code span (`name(arguments)`), by name."""
    return {match[1]: match[1] + match[2] for match in _ENTRY.finditer(text)}


def code_words(text: str) -> set[str]:
    """The identifiers that appear in the text's code spans."""
    return {word for span in re.findall(r"`([^`]+)`", text) for word in re.findall(r"\w+", span)}


def parameters(thing: Callable[..., Any]) -> list[str]:
    return [name for name in inspect.signature(thing).parameters if name != "self"]


def missing_entries(names: tuple[str, ...], module: Any, text: str) -> list[str]:
    """What the text lacks: an entry for each name, and each argument of a callable in its entry."""
    found = entries(text)
    problems = []
    for name in names:
        if name not in found:
            problems.append(f"{name}: no entry")
            continue
        thing = getattr(module, name)
        if name in fixtures.__all__ or not callable(thing) or getattr(thing, "_is_protocol", False):
            continue  # a fixture's arguments are fixtures; a constant or a protocol has none
        if not inspect.isclass(thing) or "(" in found[name]:
            absent = [p for p in parameters(thing) if not re.search(rf"\b{p}\b", found[name])]
            problems += [f"{name}: argument {p!r} not in its entry {found[name]!r}" for p in absent]
    return problems


def attributes(cls: type) -> set[str]:
    """The public attributes and methods of a class: its fields, annotations, methods and
    properties, and whatever its methods assign to `self.<name>`."""
    names = {n for n, _ in inspect.getmembers(cls) if not n.startswith("_")}
    names |= {n for n in getattr(cls, "__annotations__", {}) if not n.startswith("_")}
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(cls)))):
        if not (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)):
            continue
        if isinstance(node.value, ast.Name) and node.value.id == "self" and not node.attr.startswith("_"):
            names.add(node.attr)
    return names


def test_every_name_of_the_testing_kit_has_an_entry() -> None:
    assert missing_entries(css_core.testing.__all__, css_core.testing, section(KIT)) == []


def test_every_helper_of_openai_format_has_an_entry() -> None:
    assert missing_entries(openai_format.__all__, openai_format, section(OPENAI_FORMAT)) == []


def test_every_fault_constructor_has_an_entry() -> None:
    constructors = tuple(n for n, v in vars(Fault).items() if isinstance(v, staticmethod))
    text = section(KIT).replace("`Fault.", "`")  # the entries read `Fault.status(code, ...)`
    assert "status" in constructors
    assert missing_entries(constructors, Fault, text) == []


@pytest.mark.parametrize("cls", [ProviderDouble, RecordedRequest, Route, Event, Stream, Framing, Replies,
                                 ServiceServer], ids=lambda cls: cls.__name__)
def test_the_attributes_of_the_kits_classes_are_documented(cls: type) -> None:
    undocumented = attributes(cls) - code_words(section(KIT))
    assert undocumented == set(), f"{cls.__name__}: not in docs/plugins.md's '{KIT}'"


def test_an_entry_missing_fails() -> None:
    """The check itself: the guide without one entry, or with an argument left out, fails it."""
    doc = DOC.read_text(encoding="utf-8")

    def new_problems(names: tuple[str, ...], module: Any, title: str, edit: Callable[[str], str]) -> list[str]:
        text = section(title, doc)
        assert edit(text) != text, "the edit changed nothing: the entry it removes is gone"
        return sorted(set(missing_entries(names, module, edit(text))) - set(missing_entries(names, module, text)))

    kit = css_core.testing.__all__, css_core.testing, KIT
    drop_split_text = partial(re.sub, r"^- `split_text\(.*?(?=^- )", "", flags=re.MULTILINE | re.DOTALL)
    assert new_problems(*kit, drop_split_text) == ["split_text: no entry"]
    reject = "`Reject(status, message=None, *, body=None)`"
    assert new_problems(*kit, lambda text: text.replace(reject, "`Reject(status, message=None)`")) == [
        "Reject: argument 'body' not in its entry 'Reject(status, message=None)'"]

    def drop_usage(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if not line.startswith("| `usage("))

    assert new_problems(openai_format.__all__, openai_format, OPENAI_FORMAT, drop_usage) == ["usage: no entry"]
