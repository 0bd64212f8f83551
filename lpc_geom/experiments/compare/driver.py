"""Run (or resume) the comparison and write its tables, analyses and figures."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from lpc_geom.experiments.compare.figures import draw_figures
from lpc_geom.experiments.compare.grid import (
    REFERENCE_CELL,
    CompareSettings,
    build_jobs,
    measure_robustness,
    warning_summary,
)
from lpc_geom.experiments.compare.summary import (
    _load_runs,
    cell_rows,
    correlation_lines,
    correlations_by_attack,
    gw_matrices,
    lpc_vs_nopen,
    markdown_table,
    separation_robustness,
)
from lpc_geom.experiments.executors import SweepExecutor, make_executor
from lpc_geom.experiments.sweep import default_workers, failure_lines, run_jobs
from lpc_geom.experiments.tables import csv_text
from lpc_geom.train.checkpoint import write_json, write_text


@dataclass
class CompareResult:
    """What :func:`run_compare` returns (everything is also written to ``out``)."""

    out: Path
    records: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    table: str
    gw: dict[str, Any]
    correlation: dict[str, Any]
    figures: list[Path]
    seconds: float
    correlations_by_attack: dict[str, Any] = field(default_factory=dict)
    report: str = ""  #: the text of ``table.md``: what the grid was, the table, LPC vs NoPen, correlations


def run_compare(settings: CompareSettings, *, executor: SweepExecutor | None = None,
                progress: bool = True, log=print) -> CompareResult:
    """Run (or resume) the comparison and write its tables, analyses and figures.

    Parameters
    ----------
    settings : CompareSettings
    executor : SweepExecutor, optional
        Where the runs execute; default: one local worker process per CPU core.
    progress : bool, default True
        Progress bar over the runs.
    log : callable, default print
        Receives the progress messages (where results go, failures, the table).

    Returns
    -------
    CompareResult
    """
    start = time.perf_counter()
    out = settings.out
    executor = executor if executor is not None else make_executor("local", workers=default_workers())
    jobs = build_jobs(settings)
    base = settings.base
    log(f"compare_manifolds: {len(jobs)} runs = {len(settings.geometries)} geometries x "
        f"{len(settings.optimizers)} optimisers x {len(settings.seeds)} seeds; {base.dataset} "
        f"{json.dumps(base.dataset_options)}, {base.backbone} {json.dumps(base.backbone_options)}, "
        f"{base.epochs} epochs; runs on {executor.describe()}")
    log(f"results go to {out.resolve()}")
    # K-FAC runs cost several AdamW runs: start them first, so that no long run starts last (the records
    # come back in grid order).
    order = sorted(jobs, key=lambda job: job.cell["optimizer"] != "kfac")
    by_name = {r["name"]: r for r in run_jobs(
        order, progress=progress, executor=executor,
        postprocess=partial(measure_robustness, samples=settings.robustness_samples,
                            fmn_steps=settings.fmn_steps))}
    records = [by_name[job.name] for job in jobs]
    for line in warning_summary(records):
        log(f"warning in {line}")
    cells = cell_rows(records)
    loaded = _load_runs(records, trust_backbone=settings.base.backbone)  # the runs this command trained
    gw = gw_matrices(loaded)
    for entry in gw.values():
        for error in entry["errors"]:
            log(f"GW left out: {error}")
    correlation = separation_robustness(records)
    by_attack = correlations_by_attack(records)
    table = markdown_table(cells)
    pattern = lpc_vs_nopen(cells)
    reference = " / ".join(REFERENCE_CELL)
    text = "\n".join([
        f"{base.dataset} {json.dumps(base.dataset_options)}, {base.backbone} {json.dumps(base.backbone_options)}, "
        f"{base.epochs} epochs, seeds "
        f"{list(settings.seeds)}; mean ± std over seeds; collapse figures of the training latents, each in the "
        f"geometry of its head; DeepFool and FMN on {settings.robustness_samples} test inputs; s/epoch ÷ the "
        f"{reference} cell (runs share the machine: a rough cost ratio).",
        "", table, "",
        *pattern,
        *correlation_lines(by_attack),
    ])
    write_json(records, out / "runs.json")
    write_text(csv_text(records), out / "runs.csv")
    write_json(cells, out / "cells.json")
    write_text(csv_text(cells), out / "cells.csv")
    write_text(text + "\n", out / "table.md")
    write_json({"gw": gw, "separation_vs_robustness": correlation, "separation_vs_robustness_by_attack": by_attack},
               out / "analysis.json")
    figures = draw_figures(records, loaded, gw, correlation, out / "figures") if settings.figures else []
    seconds = time.perf_counter() - start
    log("\n" + text)
    log(f"\nwritten to {out.resolve()}: table.md, runs.csv/json (one row per run), cells.csv/json (per cell), "
        f"analysis.json; figures in {(out / 'figures').resolve()}"
        + (f" ({', '.join(p.name for p in figures)})" if figures else " (none)")
        + f"; one directory per run in {(out / 'runs').resolve()}. Took {seconds:.0f} s.")
    failures = failure_lines(records)
    if failures:  # last, where they are seen; the exit status says the same (cli)
        log("\n" + "\n".join(failures) + "\nlaunch the same command again to retry them")
    return CompareResult(out, records, cells, table, gw, correlation, figures, seconds, by_attack, text)




#: The figures of the documentation's results fragment, with their captions.
FRAGMENT_FIGURES = {
    "latents_2d.png": "Training latents of each cell (first seed), in 2-D, coloured by class",
    "separation_vs_robustness.png": "Training separation ratio against DeepFool robustness, one point per run",
}


def fragment_markdown(result: CompareResult) -> tuple[str, dict[str, Path]]:
    """The body of the documentation's results fragment of a comparison, and the figures it shows.

    The body is :attr:`CompareResult.report` (the grid, the per-cell table, Euclidean LPC against NoPen,
    the separation-robustness correlations) followed by the :data:`FRAGMENT_FIGURES` the run drew and the
    wall time of the command that produced it.

    Returns
    -------
    markdown : str
    figures : dict
        ``{file name: path of the PNG}``, for ``write_fragment``'s ``figures``.
    """
    drawn = {path.name: path for path in result.figures}
    figures = {name: drawn[name] for name in FRAGMENT_FIGURES if name in drawn}
    lines = [result.report.rstrip(), ""]
    lines += [f"![{FRAGMENT_FIGURES[name]}]({name})\n" for name in figures]
    lines.append(f"The command took {result.seconds:.0f} s for {len(result.records)} runs (runs found finished "
                 "under its output directory are reused: only a fresh directory times the whole job).")
    return "\n".join(lines), figures
