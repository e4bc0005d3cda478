#!/usr/bin/env python3
"""Write (or, with --check, verify) docs/hooks.md from crishim's hook specifications.

Usage (from anywhere):

    .venv/bin/python scripts/gen_hook_docs.py          # write docs/hooks.md
    .venv/bin/python scripts/gen_hook_docs.py --check  # exit 1 if docs/hooks.md is stale

Every hook of ``crishim.hookspecs`` gets its signature, its docstring and
its example; the types hooks register and the protocols their objects
follow (``crishim.types``) get their fields and methods with the ``#:``
comments and docstrings written next to them. tests/test_docs.py runs the
check and fails when a hook has no docstring or no example.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "docs" / "hooks.md"
TYPES_SOURCE = REPO_ROOT / "crishim" / "types.py"

#: The types and protocols documented after the hooks, in this order.
TYPES = (
    "BackendType",
    "BackendContext",
    "Backend",
    "IndexedBackend",
    "Puller",
    "HandlerAware",
    "FilterType",
    "FilterContext",
    "Filter",
    "Verdict",
    "PullPolicyType",
    "PolicyContext",
    "PullPolicy",
    "ImagePolicy",
    "Decision",
    "ResolvedImage",
    "PullRequest",
    "PodContext",
)

EXAMPLE_MARK = "Example::"
_ROLE_RE = re.compile(r":(?:class|data|mod|meth|func|attr):`~?([^`]+)`")


def hookspecs() -> list[tuple[str, Callable[..., object]]]:
    """(name, function) of every hook specification, in source order."""
    sys.path.insert(0, str(REPO_ROOT))
    from crishim import hookspecs as module

    found = [
        (name, fn)
        for name, fn in vars(module).items()
        if inspect.isfunction(fn) and hasattr(fn, f"{module.PROJECT}_spec")
    ]
    return sorted(found, key=lambda item: inspect.getsourcelines(item[1])[1])


def split_docstring(doc: str) -> tuple[str, str]:
    """(description, example code) of a hook docstring."""
    text = inspect.cleandoc(doc)
    description, mark, example = text.partition(EXAMPLE_MARK)
    return description.strip(), textwrap.dedent(example).strip("\n") if mark else ""


def markdown(text: str) -> str:
    """reStructuredText roles and literals as Markdown."""
    text = _ROLE_RE.sub(lambda m: f"`{m.group(1)}`", text)
    return text.replace("``", "`")


def _comments_above(lines: list[str], lineno: int) -> str:
    """The ``#:`` comment lines right above line ``lineno`` (1-based)."""
    out: list[str] = []
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith("#:"):
        out.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return " ".join(out)


def _default(value: ast.expr | None) -> str:
    """A field's default as the reader needs it (required fields: empty)."""
    if value is None:
        return ""
    if isinstance(value, ast.Call) and ast.unparse(value.func) == "field":
        for keyword in value.keywords:
            if keyword.arg == "default":
                return f"`{ast.unparse(keyword.value)}`"
            if keyword.arg == "default_factory":
                return "a new one per instance"
        return ""
    return f"`{ast.unparse(value)}`"


def _signature(fn: Callable[..., object]) -> str:
    """``def name(args) -> returns`` as written in the source."""
    node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    assert isinstance(node, ast.FunctionDef)
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"def {node.name}({ast.unparse(node.args)}){returns}"


def _type_sections() -> Iterator[str]:
    source = TYPES_SOURCE.read_text()
    lines = source.splitlines()
    classes = {node.name: node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}
    for name in TYPES:
        node = classes[name]
        yield f"### `{name}`\n"
        doc = ast.get_docstring(node)
        if doc:
            yield markdown(doc) + "\n"
        rows: list[str] = []
        methods: list[str] = []
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                note = markdown(_comments_above(lines, item.lineno))
                annotation = ast.unparse(item.annotation).replace("|", "\\|")
                default = _default(item.value).replace("|", "\\|")
                rows.append(f"| `{item.target.id}` | `{annotation}` | {default} | {note} |")
            elif isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                returns = f" -> {ast.unparse(item.returns)}" if item.returns else ""
                method_doc = ast.get_docstring(item)
                if any(ast.unparse(d) == "property" for d in item.decorator_list):
                    line = f"- `{item.name}{returns}` (property)"
                else:
                    line = f"- `{item.name}({ast.unparse(item.args)}){returns}`"
                methods.append(f"{line}: {markdown(method_doc)}" if method_doc else line)
        if rows:
            yield "| field | type | default | meaning |\n| --- | --- | --- | --- |"
            yield "\n".join(rows) + "\n"
        if methods:
            yield "\n".join(methods) + "\n"


def render() -> str:
    """The whole of docs/hooks.md."""
    specs = hookspecs()
    parts = [
        "# Hook reference",
        "",
        "<!-- Generated by scripts/gen_hook_docs.py from crishim/hookspecs.py and",
        "     crishim/types.py; edit those and rerun the script. -->",
        "",
        "A plugin is a module registered in the entry-point group `crishim.plugins`; it",
        "implements hooks by decorating functions named after them with",
        "`crishim.hookimpl`. Hooks *register* things and are called once at start-up,",
        "never per CRI call: the per-call work happens in the objects they register.",
        "How to write, package, configure, test and debug a plugin: [plugins.md](plugins.md).",
        "",
        "| hook | what it registers |",
        "| --- | --- |",
    ]
    for name, fn in specs:
        description, _ = split_docstring(fn.__doc__ or "")
        summary = markdown(description.split("\n\n")[0].replace("\n", " "))
        parts.append(f"| [`{name}`](#{name}) | {summary} |")
    parts.append("")
    for name, fn in specs:
        description, example = split_docstring(fn.__doc__ or "")
        parts += [
            f"## `{name}`",
            "",
            "```python",
            _signature(fn),
            "```",
            "",
            markdown(description),
            "",
            "Example:",
            "",
            "```python",
            example,
            "```",
            "",
        ]
    parts += ["## Types", "", *_type_sections()]
    return "\n".join(parts).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if docs/hooks.md is not what it would write"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(
                f"{OUTPUT.relative_to(REPO_ROOT)} is stale: run scripts/gen_hook_docs.py",
                file=sys.stderr,
            )
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
