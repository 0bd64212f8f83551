"""The documentation: the strict Sphinx build, its internal links, and the extensions that generate pages.

``test_the_site_builds_strictly_and_every_internal_link_resolves`` builds the whole site (autodoc imports
every public module) once, unless ``LPC_GEOM_DOCS_HTML`` names a site already built by ``make docs`` in
the same CI run, and then follows every ``href`` and ``src`` of every page. The other tests build tiny
projects or call the extensions' functions directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("myst_parser", reason="the docs extra is not installed (pip install -e '.[docs]')")

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import apipages  # noqa: E402
import docstrings  # noqa: E402
import resultspages  # noqa: E402


def sphinx_build(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "sphinx", "-W", "-E", "-q", "-b", "html", *extra, str(source),
                           str(out)], capture_output=True, text=True, env=env, timeout=900)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.last_tag = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "problematic" in (attrs.get("class") or "").split() and self.links and \
                self.last_tag == "a":
            # docutils marks the text of a warning with a link to its report: that warning fails the strict
            # build, or is a listed known warning (docs/known_warnings.txt); it is not a link of the site
            self.links.pop()
        for name, value in attrs.items():
            if name in ("href", "src") and value:
                self.links.append(value)
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
        self.last_tag = tag


def parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def broken_links(site: Path) -> list[str]:
    """Every internal href/src of the site's HTML whose file or ``#anchor`` does not exist."""
    pages = {page.resolve(): parse(page) for page in site.rglob("*.html")}
    broken = []
    for page, parsed in pages.items():
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith("//"):
                continue  # external (http, mailto, data): not the site's
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(site.resolve())}: {link}"
            if not target.exists():
                broken.append(f"{where} (no file {target})")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where} (no anchor #{parts.fragment})")
    return broken


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    built = os.environ.get("LPC_GEOM_DOCS_HTML")
    if built:
        path = Path(built)
        assert (path / "index.html").is_file(), f"LPC_GEOM_DOCS_HTML={built} holds no built site"
        return path
    out = tmp_path_factory.mktemp("docs") / "html"
    result = sphinx_build(DOCS, out)
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_the_site_builds_strictly_and_every_internal_link_resolves(site):
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    # every public module has its page, no private module has one
    for module in apipages.public_modules():
        assert f"api/{module}.html" in pages, module
    assert not any("/_" in name or name.startswith("api/_") for name in pages if name.startswith("api/")), pages
    assert "api/lpc_geom.analysis.collapse.html" in pages and "api/lpc_geom.analysis._validation.html" not in pages
    # every fragment in docs/results is a page, and the results page links every one of them
    results_page = (site / "_generated" / "results.html").read_text(encoding="utf-8")
    for fragment in DOCS.glob("results/*/index.md"):
        name = fragment.parent.name
        assert f"results/{name}/index.html" in pages, name
        assert f"results/{name}/index.html" in results_page, name
    # docstrings rendered: a formula of the collapse module and a documented function
    collapse = (site / "api" / "lpc_geom.analysis.collapse.html").read_text(encoding="utf-8")
    assert 'id="lpc_geom.analysis.collapse.separation_ratio"' in collapse
    assert broken_links(site) == []


def test_the_link_checker_reports_a_missing_page_and_a_missing_anchor(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="sub/page.html#here">ok</a> <a href="sub/page.html#gone">anchor</a> '
        '<img src="missing.png"> <a href="https://example.org/x">external</a> <a href="#top">self</a>'
        '<span id="top"></span><a href="#id9"><span class="problematic" id="id10">x_</span></a>')
    (tmp_path / "sub" / "page.html").write_text('<h1 id="here">x</h1><a href="../index.html">up</a>')
    broken = broken_links(tmp_path)
    assert len(broken) == 2, broken
    assert any("#gone" in b for b in broken) and any("missing.png" in b for b in broken)


def test_shape_stars_are_escaped_outside_literals_and_roles():
    assert docstrings.escape_shape_stars("inputs : Tensor, shape (N, *input_shape)") == \
        "inputs : Tensor, shape (N, \\*input_shape)"
    assert docstrings.escape_shape_stars("(*shape) and (B, *s, C)") == "(\\*shape) and (B, \\*s, C)"
    # emphasis, literals and math are left as written
    for line in ("a *certified* bound", "``(N, *shape)``", ":math:`(N, *x)`", "x ** 2", "f(*args)"):
        expected = line if line != "f(*args)" else "f(\\*args)"
        assert docstrings.escape_shape_stars(line) == expected


def _tiny_project(root: Path, known: str) -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(DOCS / '_ext')!r})\n"
        f"extensions = ['docstrings']\nknown_warnings_file = {str(root / 'known.txt')!r}\n")
    # an undefined substitution: a docutils error, reported as a warning
    (src / "index.rst").write_text("Title\n=====\n\nA |broken| substitution.\n")
    (root / "known.txt").write_text(known)
    return src


def test_a_known_warning_is_tolerated_and_an_unknown_one_fails(tmp_path):
    listed = _tiny_project(tmp_path / "a", "# comment\nindex.rst | Undefined substitution referenced\n")
    assert sphinx_build(listed, tmp_path / "a" / "out").returncode == 0
    unlisted = _tiny_project(tmp_path / "b", "")
    result = sphinx_build(unlisted, tmp_path / "b" / "out")
    assert result.returncode != 0 and "Undefined substitution" in result.stderr


def test_a_stale_known_warning_fails_the_build(tmp_path):
    src = _tiny_project(tmp_path, "index.rst | Undefined substitution referenced\n"
                                  "nowhere.py | a warning that is gone\n")
    result = sphinx_build(src, tmp_path / "out")
    assert result.returncode != 0
    assert "'nowhere.py | a warning that is gone' matches no warning any more" in result.stderr


def test_a_malformed_known_warnings_line_is_an_error(tmp_path):
    path = tmp_path / "known.txt"
    path.write_text("no separator here\n")
    with pytest.raises(ValueError, match="expected 'WHERE \\| MESSAGE'"):
        docstrings.read_known(path)


def test_the_api_walk_lists_public_modules_only_and_never_imports_main():
    modules = apipages.public_modules()
    assert modules[0] == "lpc_geom" and "lpc_geom.analysis" in modules and "lpc_geom.train.run_dir" in modules
    assert not any(part.startswith("_") for m in modules for part in m.split("."))
    # every module file of the package is either listed or private somewhere in its path
    files = {".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "lpc_geom").rglob("*.py")}
    files = {m.removesuffix(".__init__") for m in files}
    assert {m for m in files if not any(part.startswith("_") for part in m.split("."))} == set(modules)


def test_each_object_is_described_once_and_reexports_link_to_it():
    pages = apipages.build_pages()
    described = [(page.name, name) for page in pages for name, _ in page.own]
    objects = {}
    for module, name in described:
        obj = getattr(sys.modules[module], name)
        objects.setdefault((id(obj), name), []).append(module)
    assert all(len(where) == 1 for where in objects.values()), {k: v for k, v in objects.items() if len(v) > 1}
    analysis = next(page for page in pages if page.name == "lpc_geom.analysis")
    assert ("analyze", "lpc_geom.analysis.report.analyze") in analysis.elsewhere


def test_the_results_page_lists_every_benchmark_and_says_how_to_make_a_missing_fragment(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bench_a.py").write_text('add_results_argument(parser, "bench_a")\n')
    (tmp_path / "benchmarks" / "bench_b.py").write_text("add_results_argument(\n    p, 'bench_b')\n")
    (tmp_path / "benchmarks" / "_results.py").write_text('add_results_argument(parser, "private")\n')
    fragment = tmp_path / "docs" / "results" / "bench_a"
    fragment.mkdir(parents=True)
    (fragment / "index.md").write_text("## Title of A\n\nProduced by ...\n")
    (fragment / "data.json").write_text(json.dumps({"provenance": {"command": "python benchmarks/bench_a.py --x 1"}}))
    text = resultspages.render(tmp_path / "docs")
    assert "| `bench_a` | `python benchmarks/bench_a.py --x 1` | [Title of A](../results/bench_a/index.md) |" in text
    assert "| `bench_b` | `python benchmarks/bench_b.py` | not generated yet: run the command |" in text
    assert "private" not in text
    assert "../results/bench_a/index" in text.split("```{toctree}")[1]


def test_every_benchmark_writes_a_results_fragment():
    scripts = {p.name for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_")}
    writers = set(resultspages.benchmarks(REPO).values())
    missing = {s for s in scripts if f"benchmarks/{s}" not in writers}
    # compare_manifolds.py and validate_default.py are written by their own owners; every other must write one
    assert missing <= {"compare_manifolds.py", "validate_default.py"}, missing
