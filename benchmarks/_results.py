"""Where a benchmark leaves what the documentation shows.

Every benchmark writes, next to its own outputs, one *results fragment*: a folder
``docs/results/<name>/`` (or ``--results-dir``) holding ``index.md`` (a markdown fragment the results pages
of the documentation include), its figures (PNG) and its data (``data.json``). The fragment starts with
the command that produced it, the date, the machine's core count and load average before and after, and
the lpc_geom version and git commit, so that every number in the documentation can be traced to one run
and re-made by one command. A fragment is written whole into a temporary folder and then swapped in, so
an interrupted benchmark leaves the previous fragment as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "docs" / "results"


def add_results_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """Add ``--results-dir`` (default ``docs/results/<name>``) to a benchmark's parser."""
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR / name,
        help="where the documentation's results fragment (index.md, figures, data.json) is written "
             "(default: %(default)s)",
    )


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; cells are written with ``str`` (format numbers before), ``|`` escaped."""
    def line(cells) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True)
        # the fragments are outputs: a fragment just written by another benchmark is no local change
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--",
                                ".", f":(exclude){RESULTS_DIR.relative_to(REPO).as_posix()}"],
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("+local changes" if dirty.stdout.strip() else "")


def provenance(load_before: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """The facts a fragment's header states: command, date, cores, load averages, version, commit."""
    import lpc_geom

    argv = [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]
    with contextlib.suppress(ValueError):  # a script outside the repository keeps the path it was given
        argv[0] = Path(sys.argv[0]).resolve().relative_to(REPO).as_posix()
    return {
        "command": "python " + shlex.join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        "loadavg_before": list(load_before) if load_before is not None else None,
        "loadavg_after": list(os.getloadavg()),
        "lpc_geom_version": lpc_geom.__version__,
        "git_commit": _git_commit(),
    }


def write_fragment(
    directory: Path,
    title: str,
    markdown: str,
    *,
    figures: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    load_before: tuple[float, float, float] | None = None,
) -> Path:
    """Write one results fragment and return its folder.

    Parameters
    ----------
    directory
        The fragment's folder (``--results-dir``); replaced whole.
    title
        The fragment's heading (a markdown level-2 heading is written).
    markdown
        The body: tables and prose, with figures referenced as ``![caption](NAME.png)``.
    figures
        ``{file name: matplotlib Figure or path of an existing PNG}``; each is saved or copied into the
        folder under that name.
    data
        JSON-serialisable figures of the run, written to ``data.json`` with the provenance.
    load_before
        ``os.getloadavg()`` taken when the benchmark started.
    """
    directory = Path(directory)
    facts = provenance(load_before)
    before = facts["loadavg_before"]
    load = (f"load average {before[0]:.2f} before, {facts['loadavg_after'][0]:.2f} after"
            if before is not None else f"load average {facts['loadavg_after'][0]:.2f} at the end")
    header = (
        f"## {title}\n\n"
        f"Produced by `{facts['command']}` on {facts['date']} ({facts['cpu_count']} cores, {load}; "
        f"lpc_geom {facts['lpc_geom_version']}, commit {facts['git_commit']}).\n\n"
    )
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (staging / "index.md").write_text(header + markdown.rstrip() + "\n")
        for name, figure in (figures or {}).items():
            if isinstance(figure, (str, os.PathLike)):
                shutil.copyfile(figure, staging / name)
            else:
                figure.savefig(staging / name, dpi=120, bbox_inches="tight")
        payload = {"provenance": facts, **(data or {})}
        (staging / "data.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
        os.chmod(staging, 0o755)
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
        staging.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"results fragment: {directory / 'index.md'}")
    return directory
