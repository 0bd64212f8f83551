"""The main job's evaluated passes with and without folded batch norms, as ratios measured in one process.

``compare_manifolds.py`` spends its time in four kinds of passes of its 1-D ResNet-18 (width 8, MNIST-1D,
batch norms after every convolution): training steps, the per-epoch evaluation (test set and the training
probe, no gradients), the attacks (DeepFool and FMN: a forward and an input-gradient backward of the
attacked inputs per step) and the final latents. The last three evaluate the model in evaluation mode,
where :func:`lpc_geom.models.fold.fold_batch_norms` folds each batch norm into its convolution. This script
builds the main job's model (its default config, Euclidean LPC), gives its batch norms running statistics
from training-mode passes over the training data, and times on the same inputs, alternating the variants
so that they see the same machine load (CPU time of this process, one thread; median over ``--repeats``):

* ``train step``: one training step (forward, backward, AdamW) on a batch of 128, the unit of the table;
* ``evaluation``: the trainer's per-epoch evaluation forward (test set and the 2,000-sample training probe),
  batch norms as they are vs folded (the fold itself included, as ``predict`` does it);
* ``attack step``: one forward and input-gradient backward of 1,000 inputs (FMN's batch: 500 inputs from
  two starts), parameters frozen, as they are vs folded;
* ``fmn``: :func:`lpc_geom.analysis.robustness.fmn` (``--fmn-steps`` steps from zero) on 500 test inputs.

It checks that the folded passes give the same logits and input gradients (up to float rounding) and
writes the table with the load average before and after; the exit status is 1 when they differ by more than
:data:`PARITY_TOLERANCE`.

Run ``python benchmarks/bench_mainjob.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _results sits beside this script
from _results import add_results_argument, markdown_table, write_fragment

from lpc_geom.analysis.robustness import fmn
from lpc_geom.analysis.robustness._common import evaluation_mode
from lpc_geom.experiments.compare.grid import CompareSettings, build_jobs
from lpc_geom.models import fold_batch_norms
from lpc_geom.train.trainer import TRAIN_PROBE_SAMPLES, Trainer

TITLE = "The main job's evaluation and attack passes with folded batch norms"
#: Largest relative difference of logits and input gradients (folded vs unfolded) that float32 rounding explains.
PARITY_TOLERANCE = 1e-4


def _cpu_seconds(fn, repeat: int = 1) -> float:
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat


def _input_gradient(model, x):
    x = x.clone().requires_grad_(True)
    logits = model(x).logits
    (grad,) = torch.autograd.grad(logits[:, 0].sum() - logits[:, 1].sum(), x)
    return logits.detach(), grad


def main(argv: list[str] | None = None) -> int:
    """Time the variants, print the table and write the results fragment."""
    load_before = os.getloadavg()
    parser = argparse.ArgumentParser(prog="bench_mainjob.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="alternated timings per variant (median)")
    parser.add_argument("--fmn-steps", type=int, default=10, help="FMN steps of the fmn rows")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    add_results_argument(parser, "bench_mainjob")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    settings = CompareSettings(geometries=["euclidean-LPC"], optimizers=["default"], seeds=[0],
                               out=Path("/nonexistent-bench-mainjob"))
    trainer = Trainer(build_jobs(settings)[0].config)
    model, data = trainer.model, trainer.data
    model.train()
    with torch.no_grad():  # running statistics of training-mode passes, as after an epoch
        for start in range(0, len(data.y_train), 128):
            model(data.x_train[start:start + 128].float())
    x_batch, y_batch = data.x_train[:128].float(), data.y_train[:128]
    evaluated = torch.cat([data.x_test, data.x_train[trainer.train_probe]]).float()
    attacked = data.x_test[:500].float().repeat(2, 1)

    def train_step():
        model.train()
        out = model(x_batch)
        loss, _ = trainer.objective(out, y_batch, gamma=1.0, epoch=0)
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    def evaluation(fold):
        def run():
            with torch.no_grad():
                m = fold_batch_norms(model) if fold else model.eval()
                for start in range(0, len(evaluated), 1024):
                    m(evaluated[start:start + 1024])
        return run

    model.eval()
    folded = fold_batch_norms(model)
    reference, reference_grad = _input_gradient(model, attacked)
    result, grad = _input_gradient(folded, attacked)
    parity = {"logits": float((result - reference).abs().max() / reference.abs().max()),
              "input gradient": float((grad - reference_grad).abs().max() / reference_grad.abs().max())}

    def attack_step(m):
        def run():
            with evaluation_mode(m), torch.enable_grad():
                _input_gradient(m, attacked)
        return run

    def fmn_run(m):
        return lambda: fmn(m, data.x_test[:500].float(), steps=args.fmn_steps, init="zero", refine_steps=0)

    variants = {
        "train step": train_step,
        "evaluation": evaluation(False), "evaluation, folded": evaluation(True),
        "attack step": attack_step(model), "attack step, folded": attack_step(folded),
        "fmn": fmn_run(model), "fmn, folded": fmn_run(folded),
    }
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(_cpu_seconds(fn, 3 if name == "train step" else 1))
    median = {name: statistics.median(values) for name, values in times.items()}
    rows = []
    for name in variants:
        base = name.removesuffix(", folded")
        speedup = median[base] / median[name]
        rows.append([name, f"{median[name] * 1e3:.1f}", f"{median[name] / median['train step']:.2f}",
                     f"x{speedup:.2f}" if base != name else ""])
    table = markdown_table(["pass", "CPU ms (median)", "÷ train step", "speed-up by folding"], rows)
    load_after = os.getloadavg()
    evaluated_n = len(evaluated)
    text = "\n".join([
        f"The main job's model (1-D ResNet-18 width 8, Euclidean LPC head, MNIST-1D); evaluation: {evaluated_n} "
        f"inputs (test set and the {TRAIN_PROBE_SAMPLES}-sample training probe) in batches of 1024; attack step: "
        f"forward and input gradient of {len(attacked)} inputs; fmn: {args.fmn_steps} steps on 500 inputs. "
        f"CPU time of one process, {args.threads} thread(s), median of {args.repeats} alternated repeats; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.",
        "", table, "",
        f"Folded vs unfolded: largest relative difference of the logits {parity['logits']:.1e}, of the input "
        f"gradients {parity['input gradient']:.1e}.",
    ])
    print(text)
    write_fragment(args.results_dir, TITLE, text, load_before=load_before,
                   data={"median_cpu_seconds": median, "parity": parity, "repeats": args.repeats})
    if max(parity.values()) > PARITY_TOLERANCE:
        print(f"the folded model differs from the unfolded one by more than {PARITY_TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
