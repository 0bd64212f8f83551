"""Sphinx extension: one API page per public module of lpc_geom, found by walking the package.

The walk reads the package's folders (it never imports a module to find the next, so
``lpc_geom/__main__.py`` is not run) and skips every name that starts with ``_``. A module or package
added, split or moved appears in the reference at the next build without an edit here.

Each object is described once, on the page of its *home*: the public module that defines it, or, for an
object defined in a private module (``_x``), the public module nearest to that one that exports it. Every
other module that exports it (a package's ``__init__`` re-exporting its submodules' functions) links to
the home. A module's exports are its ``__all__`` when it has one, else the classes and functions it
defines.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer, PycodeError

PACKAGE = "lpc_geom"
OUT = "api"  # relative to the documentation's source folder


def public_modules(package: str = PACKAGE) -> list[str]:
    """Every public module of ``package`` (itself included), depth first, sorted within a package."""
    root = importlib.util.find_spec(package)
    if root is None or root.submodule_search_locations is None:
        raise RuntimeError(f"{package} is not an importable package")
    found = [package]

    def walk(name: str, paths: list[str]) -> None:
        for info in sorted(pkgutil.iter_modules(paths), key=lambda m: m.name):
            if info.name.startswith("_"):
                continue
            full = f"{name}.{info.name}"
            found.append(full)
            if info.ispkg:
                walk(full, [str(Path(p) / info.name) for p in paths])

    walk(package, list(root.submodule_search_locations))
    return found


@dataclass
class ModulePage:
    name: str
    is_package: bool
    submodules: list[str] = field(default_factory=list)
    own: list[tuple[str, str]] = field(default_factory=list)  # (name, directive) described here
    elsewhere: list[tuple[str, str]] = field(default_factory=list)  # (name, home.name) described at home
    undocumented_data: list[str] = field(default_factory=list)


def _kind(obj) -> str | None:
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "autofunction"
    if inspect.ismodule(obj):
        return None
    return "autodata"


def _exports(module) -> list[str]:
    if "__all__" in vars(module):
        return list(module.__all__)
    return [
        name for name, value in vars(module).items()
        if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    ]


def _documented_data(module_name: str) -> set[str]:
    """Module-level names with a ``#:`` comment or a docstring after them."""
    try:
        docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
    except PycodeError:
        return set()
    return {attr for (scope, attr) in docs if not scope}


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        n += 1
    return n


def build_pages(package: str = PACKAGE) -> list[ModulePage]:
    names = public_modules(package)
    modules = {name: importlib.import_module(name) for name in names}
    public = set(names)
    exporters: dict[int, list[tuple[str, str]]] = {}  # id(obj) -> [(module, name)]
    objects: dict[int, object] = {}
    for mod_name, module in modules.items():
        for name in _exports(module):
            if not hasattr(module, name):
                raise RuntimeError(f"{mod_name}.__all__ names {name!r}, which the module does not define")
            obj = getattr(module, name)
            if _kind(obj) is None:
                continue
            objects[id(obj)] = obj
            exporters.setdefault(id(obj), []).append((mod_name, name))

    home: dict[tuple[int, str], str] = {}
    for key, places in exporters.items():
        obj = objects[key]
        defined_in = getattr(obj, "__module__", None) if _kind(obj) != "autodata" else None
        for _, name in places:
            same_name = [m for m, n in places if n == name]
            if defined_in in public and hasattr(modules[defined_in], name) and \
                    getattr(modules[defined_in], name) is obj:
                home[(key, name)] = defined_in
            else:  # defined in a private module (or data): the exporter nearest to its definition
                origin = defined_in or same_name[0]
                home[(key, name)] = max(same_name, key=lambda m, o=origin: (_shared_prefix(m, o), m.count(".")))

    pages = []
    for mod_name, module in modules.items():
        page = ModulePage(mod_name, hasattr(module, "__path__"))
        page.submodules = [n for n in names if n.rpartition(".")[0] == mod_name]
        documented_data = _documented_data(mod_name)
        described = set()
        for key, places in exporters.items():
            for exporter, name in places:
                where = home[(key, name)]
                if exporter != mod_name and where != mod_name:
                    continue
                if (where, name) in described:
                    continue
                kind = _kind(objects[key])
                if where == mod_name:
                    described.add((where, name))
                    if kind == "autodata" and name not in documented_data:
                        page.undocumented_data.append(name)
                    else:
                        page.own.append((name, kind))
                elif exporter == mod_name:
                    page.elsewhere.append((name, f"{where}.{name}"))
        order = {n: i for i, n in enumerate(_exports(module))}
        page.own.sort(key=lambda item: order.get(item[0], len(order)))
        page.elsewhere.sort()
        pages.append(page)
    return pages


def _render(page: ModulePage) -> str:
    title = f"``{page.name}``"
    lines = [title, "=" * len(title), "", f".. automodule:: {page.name}", "   :no-members:", ""]
    if page.submodules:
        lines += [".. rubric:: Submodules", "", ".. toctree::", "   :maxdepth: 1", ""]
        lines += [f"   {name}" for name in page.submodules] + [""]
    if page.own:
        lines += [".. rubric:: Contents", "", ".. autosummary::", "   :nosignatures:", ""]
        lines += [f"   {name}" for name, _ in page.own] + [""]
    if page.elsewhere:
        lines += [".. rubric:: Also exported here", ""]
        lines += [f"- :py:obj:`{name} <{target}>`" for name, target in page.elsewhere] + [""]
    if page.undocumented_data:
        lines += [".. rubric:: Constants", ""]
        lines += [f"- ``{name}``" for name in page.undocumented_data] + [""]
    for name, directive in page.own:
        lines += [f".. {directive}:: {name}"]
        if directive == "autoclass" or directive == "autoexception":
            lines += ["   :members:"]
        if directive == "autodata":
            lines += ["   :no-value:"]
        lines += [""]
    return "\n".join(lines)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def generate(app) -> None:
    out = Path(app.srcdir) / OUT
    out.mkdir(exist_ok=True)
    pages = build_pages()
    wanted = {f"{page.name}.rst" for page in pages} | {"index.rst"}
    for stale in out.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()
    for page in pages:
        _write_if_changed(out / f"{page.name}.rst", _render(page))
    index = [
        "API reference", "=============", "",
        "Every public module of lpc_geom, generated from its docstrings (numpydoc, with the math). "
        "Names starting with an underscore are private and not listed. An object is described on the page "
        "of the module that defines it; a package that re-exports it links there.", "",
        ".. toctree::", "   :maxdepth: 3", "", f"   {PACKAGE}", "",
    ]
    _write_if_changed(out / "index.rst", "\n".join(index))


def setup(app):
    app.connect("builder-inited", generate)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
