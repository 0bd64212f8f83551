"""Sphinx extension: tables of the documentation drawn from lpc_geom's own data, not typed.

Writes ``_generated/ablation_rows.md``, the table of the paper's ablation rows, from
:data:`lpc_geom.ablation.ROWS` (one column per field of its row class), and the latent widths from the
module's width tables, for the user guide to include.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

OUT = "_generated/ablation_rows.md"


def _cell(value) -> str:
    if value is None:
        return "--"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value).replace("|", "\\|").replace("*", "\\*")


def ablation_table() -> str:
    from lpc_geom import ablation

    rows = list(ablation.ROWS.values())
    fields = [f.name for f in dataclasses.fields(rows[0])]
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(_cell(getattr(row, name)) for name in fields) + " |" for row in rows]
    widths = {name: value for name, value in vars(ablation).items()
              if name.startswith("WIDTHS_") and isinstance(value, dict)}
    if widths:
        lines += ["", "Latent widths by table (`lpc_geom.ablation`):", ""]
        keys = list(next(iter(widths.values())))
        lines += ["| table | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
        lines += [f"| `{name}` | " + " | ".join(str(table[k]) for k in keys) + " |" for name, table in widths.items()]
    return "\n".join(lines) + "\n"


def generate(app) -> None:
    out = Path(app.srcdir) / OUT
    out.parent.mkdir(exist_ok=True)
    text = ablation_table()
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        out.write_text(text, encoding="utf-8")


def setup(app):
    app.connect("builder-inited", generate)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
