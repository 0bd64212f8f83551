"""Sphinx extension: the results section, gathered from the fragments the benchmarks wrote.

Every benchmark in ``benchmarks/`` that calls ``add_results_argument(parser, "NAME")`` writes its
fragment to ``docs/results/NAME/index.md`` (see ``benchmarks/_results.py``). This extension writes
``_generated/results.md``: a table of every benchmark with the command that re-makes its fragment, and a
table of contents of every fragment present, so that a re-run of a benchmark updates the documentation
and a benchmark whose fragment was never generated is listed with the command that makes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

OUT = "_generated/results.md"
_NAME = re.compile(r"add_results_argument\(\s*\w+\s*,\s*[\"']([\w-]+)[\"']")


def benchmarks(repo: Path) -> dict[str, str]:
    """``{fragment name: script path}`` of every benchmark that writes a fragment."""
    found = {}
    for script in sorted((repo / "benchmarks").glob("*.py")):
        if script.name.startswith("_"):
            continue
        for name in _NAME.findall(script.read_text(encoding="utf-8")):
            found[name] = script.relative_to(repo).as_posix()
    return found


def _command(fragment: Path) -> str | None:
    """The command recorded in the fragment's ``data.json`` (what made it), if readable."""
    try:
        return json.loads((fragment.parent / "data.json").read_text(encoding="utf-8"))["provenance"]["command"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _title(fragment: Path) -> str:
    for line in fragment.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return fragment.parent.name


def render(srcdir: Path) -> str:
    repo = srcdir.parent
    scripts = benchmarks(repo)
    fragments = {p.parent.name: p for p in sorted((srcdir / "results").glob("*/index.md"))}
    lines = [
        "# Results",
        "",
        "Every number on these pages was written by a benchmark script, not typed: each fragment below "
        "starts with the command that produced it, the date, the machine's core count and load, and the "
        "commit. Re-running a command replaces its fragment (figures and `data.json` beside it); "
        "`make results` re-runs every benchmark with its defaults. Timings are ratios measured within one "
        "run wherever the machine is shared; absolute seconds depend on the machine and its load.",
        "",
        "| results | made by | state |",
        "|---|---|---|",
    ]
    for name in sorted(set(scripts) | set(fragments)):
        recorded = _command(fragments[name]) if name in fragments else None
        if recorded is not None:
            command = f"`{recorded}`"
        elif name in scripts:
            command = f"`python {scripts[name]}`"
        else:
            command = "(no benchmark writes it any more)"
        if name in fragments:
            state = f"[{_title(fragments[name])}](../results/{name}/index.md)"
        else:
            state = "not generated yet: run the command"
        lines.append(f"| `{name}` | {command} | {state} |")
    lines += ["", "```{toctree}", ":maxdepth: 1", ":hidden:", ""]
    lines += [f"../results/{name}/index" for name in fragments]
    lines += ["```", ""]
    return "\n".join(lines)


def generate(app) -> None:
    srcdir = Path(app.srcdir)
    out = srcdir / OUT
    out.parent.mkdir(exist_ok=True)
    text = render(srcdir)
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        out.write_text(text, encoding="utf-8")


def setup(app):
    app.connect("builder-inited", generate)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
