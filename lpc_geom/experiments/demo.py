"""``lpc-geom demo``: LPC against the NoPen baseline on MNIST-1D, with a table and a figure.

The embedded config ``lpc_geom/configs/mnist1d_lpc.toml`` is the one the README's figures come from.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import matplotlib.pyplot as plt

from lpc_geom.config import TrainConfig, load_config
from lpc_geom.experiments.plots import plot_history, plot_latents_2d, plot_unit_histograms, save_figure
from lpc_geom.experiments.runs import analyze_run, load_run
from lpc_geom.experiments.tables import csv_text
from lpc_geom.train import train
from lpc_geom.train.checkpoint import write_json, write_text

DEMO_ROWS = ("NoPen", "LPC")
#: (column title, report key) of the demo table; train-set figures, as in the paper's collapse table.
TABLE_COLUMNS = (
    ("separation ratio", "separation_ratio"),
    ("sigma_W / sigma_T", "sigma_w_rel"),
    ("norm CV", "norm_cv"),
    ("entropy / dim (scale-free)", "entropy_scale_free"),
    ("NC1", "nc1"),
    ("ETF distance", "etf_distance"),
    ("vertex residual", "hypercube_vertex_residual"),
)


def demo_config() -> TrainConfig:
    """The embedded MNIST-1D LPC config (``lpc_geom/configs/mnist1d_lpc.toml``)."""
    with resources.as_file(resources.files("lpc_geom") / "configs" / "mnist1d_lpc.toml") as path:
        return load_config(path)


def run_demo(out: Path, *, epochs: int | None = None, seed: int = 0, progress: bool = True) -> list[dict]:
    """Train NoPen and LPC, analyse their training latents, print and write the comparison.

    Writes ``demo.md``, ``demo.csv``, ``demo.json`` and ``demo.png`` to ``out`` (each run in its own
    sub-directory) and returns the table rows.
    """
    base = demo_config().replace(seed=seed, progress=progress)
    if epochs is not None:
        base = base.replace(epochs=epochs)
    rows, histories, latents = [], {}, {}
    for name in DEMO_ROWS:
        run_dir = out / name
        result = train(base.replace(row=name, out_dir=str(run_dir)), overwrite=True)  # a rerun replaces the demo's runs
        report = analyze_run(run_dir, split="train").to_dict()
        row = {"row": name, "test_acc": result.final["test_acc"], "train_acc": result.final["train_acc_eval"]}
        row.update({key: report.get(key) for _, key in TABLE_COLUMNS})
        rows.append(row)
        histories[name] = result.history
        arrays = load_run(run_dir).arrays
        latents[name] = (arrays["train_latents"], arrays["train_labels"])
    table = markdown_table(rows)
    print(table)
    write_text(table + "\n", out / "demo.md")
    write_json(rows, out / "demo.json")
    write_text(csv_text(rows), out / "demo.csv")
    figure = demo_figure(histories, latents)
    save_figure(figure, out / "demo.png")
    print(f"\nresults written to {out.resolve()} (demo.md, demo.csv, demo.json, demo.png, one directory per run)")
    return rows


def markdown_table(rows: list[dict]) -> str:
    header = ["row", "test acc", *(title for title, _ in TABLE_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["row"], f"{100 * row['test_acc']:.2f} %"]
        cells += ["n/a" if row[key] is None else f"{row[key]:.3g}" for _, key in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def demo_figure(histories: dict, latents: dict):
    """The demo's figure: per row (NoPen, LPC) its training latents in 2-D and its per-unit values; on the
    right, the separation ratio and the within-class spread of both rows over training."""
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), layout="constrained")
    for i, (name, (z, y)) in enumerate(latents.items()):
        plot_latents_2d(axes[i, 0], z, y, title=f"{name}: training latents (PCA)")
        plot_unit_histograms(axes[i, 1], z, title=f"{name}: per-unit values")
    plot_history(axes[0, 2], histories, "train_separation_ratio", title="separation ratio over training")
    plot_history(axes[1, 2], histories, "train_sigma_w_rel", title="within-class / total spread over training")
    return fig
