"""Tables of result records: CSV text (the markdown tables are specific to each report)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV of dict rows: the union of their keys in first-seen order; tracebacks left out."""
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields and k != "traceback")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
