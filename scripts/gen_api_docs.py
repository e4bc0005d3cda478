#!/usr/bin/env python3
"""Write (or, with --check, verify) docs/api-reference.md from the public modules' code.

Usage (from anywhere):

    .venv/bin/python scripts/gen_api_docs.py          # write docs/api-reference.md
    .venv/bin/python scripts/gen_api_docs.py --check  # exit 1 if it is stale

Every name in the ``__all__`` of each module of :data:`MODULES` gets an
entry, in source order: what it is, its signature, its fields (type,
default and the ``#:`` comment written next to each), its methods, its
docstring and its example (the docstring's ``Example::`` block; one made of
``>>>`` lines is a doctest, which tests/test_docs.py runs). docs/api.md says
which modules are public; tests/test_docs.py fails when a public name has
no entry, no docstring or no example, or when this page is stale.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "docs" / "api-reference.md"

#: The modules documented here, in this order, with what each is for.
MODULES: tuple[tuple[str, str], ...] = (
    ("crishim", "the hook marker plugins decorate their hooks with"),
    ("crishim.types", "what plugins register and implement, and what crishim hands them"),
    ("crishim.model", "image records and filesystem usage: what backends answer with"),
    ("crishim.errors", "the errors a backend raises on purpose, and the status each becomes"),
    ("crishim.reference", "image references: parsing and normalising names, tags, digests, IDs"),
    ("crishim.index", "the in-memory index an `IndexedBackend` publishes"),
    ("crishim.testing.server", "a real crishim server on a temporary socket, for tests"),
    ("crishim.testing.pytest_plugin", "the pytest fixtures crishim installs"),
    ("crishim.testing.conformance", "the CRI contract kit"),
    ("crishim.testing.ocibuild", "deterministic OCI image layouts for tests"),
    ("crishim.testing.embedded", "iSulad embedded images for tests"),
    (
        "crishim.testing.hostile",
        "hostile layouts and content, for the faults a backend must survive",
    ),
)

#: Names that look public in those modules but are not part of the API.
INTERNAL: dict[str, frozenset[str]] = {
    "crishim.model": frozenset({"Answer", "chain_id_of"}),
}

EXAMPLE_MARK = "Example::"


def _generator() -> ModuleType:
    """scripts/gen_hook_docs.py: the docstring helpers both pages share."""
    spec = importlib.util.spec_from_file_location(
        "gen_hook_docs", Path(__file__).with_name("gen_hook_docs.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOK_DOCS = _generator()
markdown = HOOK_DOCS.markdown
split_docstring = HOOK_DOCS.split_docstring


def anchor(qualified: str) -> str:
    """The heading anchor of an entry (as GitHub makes it from ``### `a.b.C` ``)."""
    return re.sub(r"[^a-z0-9 _-]", "", qualified.lower()).replace(" ", "-")


def load(name: str) -> ModuleType:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(name)


# -- finding where a name is defined, in the source ---------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """A module's parsed source."""

    module: str
    lines: list[str]
    body: dict[str, ast.stmt]
    imported: dict[str, str]
    #: The line of the import statement of each imported name.
    imported_at: dict[str, int]
    #: String literals written right after an assignment (reference.py's style).
    after: dict[str, str]


_SOURCES: dict[str, Source] = {}


def source(module_name: str) -> Source:
    if module_name not in _SOURCES:
        module = load(module_name)
        text = inspect.getsource(module)
        tree = ast.parse(text)
        body: dict[str, ast.stmt] = {}
        imported: dict[str, str] = {}
        imported_at: dict[str, int] = {}
        after: dict[str, str] = {}
        statements = tree.body
        for i, node in enumerate(statements):
            targets: list[str] = []
            if isinstance(node, ast.ClassDef | ast.FunctionDef):
                targets = [node.name]
            elif isinstance(node, ast.Assign):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                targets = [node.target.id]
            for imports in _imports(node):
                for alias in imports.names:
                    imported[alias.asname or alias.name] = str(imports.module)
                    imported_at[alias.asname or alias.name] = imports.lineno
            for target in targets:
                body[target] = node
                following = statements[i + 1] if i + 1 < len(statements) else None
                if (
                    isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)
                ):
                    after[target] = following.value.value
        _SOURCES[module_name] = Source(
            module_name, text.splitlines(), body, imported, imported_at, after
        )
    return _SOURCES[module_name]


def _imports(node: ast.stmt) -> list[ast.ImportFrom]:
    """``from m import n`` statements: ``node`` itself, or those of an ``if TYPE_CHECKING:``
    block (a lazily loaded name, such as the root's ``hookimpl``, is declared there)."""
    if isinstance(node, ast.ImportFrom) and node.module:
        return [node]
    if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
        return [n for n in node.body if isinstance(n, ast.ImportFrom) and n.module]
    return []


def definition(module_name: str, name: str) -> tuple[Source, ast.stmt]:
    """The statement defining ``name`` as seen from ``module_name`` (imports followed)."""
    src = source(module_name)
    if name in src.body:
        return src, src.body[name]
    if name in src.imported:
        return definition(src.imported[name], name)
    raise LookupError(f"{module_name}.{name}: no definition found in the source")


def comments_above(lines: list[str], lineno: int) -> str:
    """The ``#:`` comment lines right above line ``lineno`` (1-based)."""
    out: list[str] = []
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith("#:"):
        out.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return " ".join(out)


def defined_names(module_name: str) -> list[str]:
    """Module-level names defined (not imported) in the module that look public."""
    return [n for n in source(module_name).body if not n.startswith("_")]


def public_names(module_name: str) -> list[str]:
    """The module's ``__all__``, in source order.

    A module's own names come where they are defined, names it re-exports
    after them. A package that only re-exports its modules' names (as
    ``crishim.types`` does) lists them module by module, as they are imported,
    each module's names in the order it defines them.
    """
    module = load(module_name)
    names = list(getattr(module, "__all__", ()))
    src = source(module_name)
    if any(name in src.body for name in names):
        order = {name: i for i, name in enumerate(src.body)}
        return sorted(names, key=lambda n: (order.get(n, len(order)), names.index(n)))

    def position(name: str) -> tuple[int, int]:
        return (src.imported_at.get(name, 0), definition(module_name, name)[1].lineno)

    return sorted(names, key=position)


# -- rendering -----------------------------------------------------------------------------


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def _rst(text: str) -> str:
    """A docstring as Markdown: roles and literals converted, ``::`` blocks kept as code."""
    out = []
    for line in markdown(text).splitlines():
        out.append(line[:-2] + ":" if line.endswith("::") and not line.endswith(":::") else line)
    return "\n".join(out)


def _default(value: ast.expr | None) -> str:
    if value is None:
        return ""
    if isinstance(value, ast.Call) and ast.unparse(value.func) in ("field", "Field"):
        for keyword in value.keywords:
            if keyword.arg == "default":
                return _code(ast.unparse(keyword.value))
            if keyword.arg == "default_factory":
                return "a new one per instance"
        if value.args and ast.unparse(value.func) == "Field":
            return _code(ast.unparse(value.args[0]))
        return ""
    return _code(ast.unparse(value))


def _init_flag(value: ast.expr | None) -> bool:
    """False for ``field(init=False)``: not a constructor argument."""
    if isinstance(value, ast.Call) and ast.unparse(value.func) == "field":
        for keyword in value.keywords:
            if keyword.arg == "init" and ast.unparse(keyword.value) == "False":
                return False
    return True


def _args(node: ast.FunctionDef, drop_self: bool) -> str:
    args = node.args
    if drop_self and args.args and args.args[0].arg in ("self", "cls"):
        args = ast.arguments(
            posonlyargs=args.posonlyargs,
            args=args.args[1:],
            vararg=args.vararg,
            kwonlyargs=args.kwonlyargs,
            kw_defaults=args.kw_defaults,
            kwarg=args.kwarg,
            defaults=args.defaults[-len(args.args) + 1 :] if len(args.args) > 1 else [],
        )
        if len(node.args.defaults) == len(node.args.args):
            args.defaults = node.args.defaults[1:]
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"({ast.unparse(args)}){returns}"


def _decorators(node: ast.FunctionDef) -> set[str]:
    return {ast.unparse(d).split("(")[0] for d in node.decorator_list}


def _fields(src: Source, node: ast.ClassDef) -> tuple[list[str], list[str]]:
    """(table rows, constructor arguments) of a dataclass-like class body."""
    rows: list[str] = []
    ctor: list[str] = []
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        name = item.target.id
        annotation = ast.unparse(item.annotation)
        if name.startswith("_") or annotation.startswith("ClassVar"):
            continue
        note = markdown(comments_above(src.lines, item.lineno))
        default = _default(item.value)
        if not _init_flag(item.value):
            note = (note + " " if note else "") + "(Not a constructor argument.)"
        else:
            ctor.append(name if item.value is None else f"{name}=...")
        rows.append(f"| `{name}` | {_code(annotation)} | {default} | {note} |")
    return rows, ctor


def _methods(node: ast.ClassDef) -> Iterator[str]:
    for item in node.body:
        if not isinstance(item, ast.FunctionDef) or item.name.startswith("_"):
            continue
        decorators = _decorators(item)
        doc = ast.get_docstring(item)
        summary = f": {_rst(doc.split(chr(10) + chr(10))[0]).replace(chr(10), ' ')}" if doc else ""
        if "property" in decorators:
            returns = f" -> {ast.unparse(item.returns)}" if item.returns else ""
            yield f"- `{item.name}{returns}` (property){summary}"
        elif "pytest.fixture" in decorators:
            yield f"- `{item.name}` (pytest fixture){summary}"
        else:
            yield f"- `{item.name}{_args(item, drop_self=True)}`{summary}"


def _kind(obj: object) -> str:
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "exception"
        if getattr(obj, "_is_protocol", False):
            return "protocol"
        if issubclass(obj, enum.Enum):
            return "enum"
        if dataclasses.is_dataclass(obj):
            params = getattr(obj, "__dataclass_params__", None)
            return "frozen dataclass" if params is not None and params.frozen else "dataclass"
        if any(base.__name__ == "BaseModel" for base in obj.__mro__[1:]):
            return "options model (pydantic)"
        return "class"
    if hasattr(obj, "_fixture_function") or type(obj).__name__ == "FixtureFunctionDefinition":
        return "pytest fixture"
    if inspect.isfunction(obj):
        return "function"
    return "constant"


def docstring_of(module_name: str, name: str) -> str:
    """The docstring an entry shows: the object's own, or the comment/literal at its definition."""
    src, node = definition(module_name, name)
    if isinstance(node, ast.ClassDef | ast.FunctionDef):
        return ast.get_docstring(node) or ""
    if name in src.after:
        return inspect.cleandoc(src.after[name])
    comment = comments_above(src.lines, node.lineno)
    if not comment and src.module != module_name:
        return f"The same object as ``{src.module}.{name}`` (re-exported here)."
    return comment


def example_of(module_name: str, name: str) -> str:
    return split_docstring(docstring_of(module_name, name))[1]


def kind_of(module_name: str, name: str) -> str:
    return _kind(getattr(load(module_name), name))


def _example_block(example: str) -> list[str]:
    language = "pycon" if example.lstrip().startswith(">>>") else "python"
    return ["Example:", "", f"```{language}", example, "```", ""]


def entry(module_name: str, name: str) -> list[str]:
    """The Markdown of one public name."""
    obj = getattr(load(module_name), name)
    src, node = definition(module_name, name)
    kind = _kind(obj)
    description, example = split_docstring(docstring_of(module_name, name))
    out = [f"### `{module_name}.{name}`", ""]
    if isinstance(node, ast.ClassDef):
        bases = ", ".join(ast.unparse(b) for b in node.bases if ast.unparse(b) != "Protocol")
        rows, ctor = _fields(src, node)
        init = next(
            (i for i in node.body if isinstance(i, ast.FunctionDef) and i.name == "__init__"),
            None,
        )
        if init is not None:
            signature = f"{name}{_args(init, drop_self=True).split(' -> ')[0]}"
        elif kind in ("frozen dataclass", "dataclass") and rows:
            signature = f"{name}({', '.join(ctor)})"
        elif kind == "exception":
            signature = f"{name}(message: str)"
        else:
            signature = name + (f"({bases})" if bases and kind in ("exception", "class") else "")
        out += [
            f"*{kind}*{' (subclass of ' + _code(bases) + ')' if bases else ''}: {_code(signature)}",
            "",
        ]
        if description:
            out += [_rst(description), ""]
        if kind == "enum":
            for item in node.body:
                if isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name):
                    member = item.targets[0].id
                    note = markdown(source_after(node, item))
                    out.append(
                        f"- `{member}` = `{ast.unparse(item.value)}`"
                        + (f": {note}" if note else "")
                    )
            out.append("")
        if rows:
            out += ["| field | type | default | meaning |", "| --- | --- | --- | --- |", *rows, ""]
        methods = list(_methods(node))
        if methods:
            out += [*methods, ""]
    elif isinstance(node, ast.FunctionDef):
        label = "pytest fixture" if kind == "pytest fixture" else "function"
        out += [f"*{label}*: {_code(name + _args(node, drop_self=False))}", ""]
        if description:
            out += [_rst(description), ""]
    else:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        shown = ast.unparse(value) if value is not None else repr(obj)
        if len(shown) > 90:
            shown = shown[:87] + "..."
        out += [f"*{kind}*: {_code(f'{name} = {shown}')}", ""]
        if description:
            out += [_rst(description), ""]
    if example:
        out += _example_block(example)
    return out


def source_after(cls: ast.ClassDef, item: ast.stmt) -> str:
    """The string literal right after ``item`` in a class body (an enum member's doc)."""
    body = cls.body
    i = body.index(item)
    if i + 1 < len(body):
        following = body[i + 1]
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            return inspect.cleandoc(following.value.value)
    return ""


def render() -> str:
    parts = [
        "# API reference",
        "",
        "<!-- Generated by scripts/gen_api_docs.py from the modules' code and docstrings;",
        "     edit those and rerun the script. -->",
        "",
        "Every public name of the modules plugins build on, with its fields, defaults,",
        "methods and an example. Which modules are public, and what may change:",
        "[api.md](api.md). The hooks: [hooks.md](hooks.md). How to write, test and debug",
        "a plugin: [plugins.md](plugins.md).",
        "",
        "| module | for |",
        "| --- | --- |",
    ]
    for module_name, summary in MODULES:
        parts.append(f"| [`{module_name}`](#{anchor(module_name)}) | {summary} |")
    parts.append("")
    for module_name, _ in MODULES:
        module = load(module_name)
        parts += [f"## `{module_name}`", ""]
        description, example = split_docstring(inspect.getdoc(module) or "")
        if description:
            parts += [_rst(description), ""]
        if example:
            parts += _example_block(example)
        names = public_names(module_name)
        parts += [
            "Names: " + ", ".join(f"[`{n}`](#{anchor(module_name + '.' + n)})" for n in names),
            "",
        ]
        for name in names:
            parts += entry(module_name, name)
    return "\n".join(parts).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    return int(HOOK_DOCS.write_or_check(OUTPUT, render(), "scripts/gen_api_docs.py", argv))


if __name__ == "__main__":
    sys.exit(main())
