"""Sphinx extension: the numpydoc shape idiom, and the known docstring warnings of the strict build.

*Shapes.* lpc_geom's docstrings write array shapes as numpy does, ``Tensor, shape (N, *input_shape)``;
reStructuredText reads that ``*`` as the start of an emphasis that never ends. A star that starts a name
inside a shape, right after ``(`` or ``, ``, is escaped (never inside literals or roles).

*Known warnings.* The build is strict (``-W``): every warning fails it. ``docs/known_warnings.txt``
lists docstring warnings that are known and waiting for a fix in the module that owns the docstring, one
a line as ``WHERE | MESSAGE`` (two substrings of the warning's location and text). A listed warning is
reported as tolerated instead of failing the build, and an entry that no longer matches any warning
fails the build, so the list only shrinks.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from sphinx.util import logging as sphinx_logging

_LITERAL = re.compile(r"(``.*?``|`[^`]*`)")
_SHAPE_STAR = re.compile(r"(?:(?<=\()|(?<=, ))\*(?=\w+[),])")
KNOWN = Path(__file__).resolve().parent.parent / "known_warnings.txt"
logger = sphinx_logging.getLogger(__name__)


def escape_shape_stars(line: str) -> str:
    """``(N, *shape)`` -> ``(N, \\*shape)`` outside literals and roles."""
    parts = _LITERAL.split(line)
    return "".join(part if i % 2 else _SHAPE_STAR.sub(r"\\*", part) for i, part in enumerate(parts))


def _process_docstring(app, what, name, obj, options, lines) -> None:
    lines[:] = [escape_shape_stars(line) for line in lines]


def read_known(path: Path = KNOWN) -> list[tuple[str, str]]:
    entries = []
    if not path.exists():
        return entries
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where, sep, message = (part.strip() for part in line.partition("|"))
        if not sep or not where or not message:
            raise ValueError(f"{path}:{number}: expected 'WHERE | MESSAGE', got {raw!r}")
        entries.append((where, message))
    return entries


class KnownWarnings(logging.Filter):
    """Drops a warning that an entry of ``known_warnings.txt`` matches, and counts the match."""

    def __init__(self, entries: list[tuple[str, str]]):
        super().__init__()
        self.entries = entries
        self.hits = dict.fromkeys(entries, 0)
        self.active = True

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.active:
            return True
        try:
            text = str(record.msg) % record.args if record.args else str(record.msg)
        except (TypeError, ValueError):
            text = str(record.msg)
        location = getattr(record, "location", None)
        if isinstance(location, tuple):
            location = ":".join(str(x) for x in location if x is not None)
        full = f"{location or ''}:{text}"
        for entry in self.entries:
            if entry[0] in full and entry[1] in full:
                self.hits[entry] += 1
                return False
        return True


def _install(app) -> None:
    entries = read_known(Path(app.config.known_warnings_file))
    if not entries:
        return
    known = KnownWarnings(entries)
    app._lpc_known_warnings = known
    for handler in logging.getLogger(sphinx_logging.NAMESPACE).handlers:
        if isinstance(handler, sphinx_logging.WarningStreamHandler):
            handler.filters.insert(0, known)


def _note_reads(app, env, docnames) -> None:
    # a build that re-reads only changed pages does not re-emit the others' warnings
    app._lpc_read_everything = set(docnames) >= set(env.found_docs)


def _check_known(app, exception) -> None:
    known = getattr(app, "_lpc_known_warnings", None)
    if known is None or exception is not None or not getattr(app, "_lpc_read_everything", False):
        return
    tolerated = sum(known.hits.values())
    stale = [entry for entry, hits in known.hits.items() if hits == 0]
    name = Path(app.config.known_warnings_file).name
    known.active = False  # the report below names the entries, which would match them
    logger.info(f"known docstring warnings tolerated: {tolerated} ({len(known.entries)} entries in {name})")
    for where, message in stale:
        logger.warning(f"{name}: entry '{where} | {message}' matches no warning any more: remove it")


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")
    app.add_config_value("known_warnings_file", str(KNOWN), "env")
    app.connect("builder-inited", _install)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("env-before-read-docs", _note_reads)
    app.connect("build-finished", _check_known)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
