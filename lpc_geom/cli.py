"""Command line: ``lpc-geom {train,demo,analyze,robustness,compare,rows,configs,backbones}`` (also
``python -m lpc_geom``)."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import shlex
import shutil
import sys
import traceback
import typing
from collections.abc import Sequence
from pathlib import Path

from lpc_geom.ablation import ROWS
from lpc_geom.config import (
    ConfigError,
    TrainConfig,
    check_keys,
    config_keys,
    data_root_option,
    load_config,
    parse_override,
)
from lpc_geom.paths import check_writable_directory


def _train_flags() -> dict[str, str]:
    """Flag dest -> TrainConfig key, for every field whose metadata declares a flag (see ``config._field``)."""
    return {(f.metadata["cli"]["flag"] or f.name): f.name for f in dataclasses.fields(TrainConfig)
            if f.metadata.get("cli") is not None}


#: Flags of ``lpc-geom train`` that map onto TrainConfig keys (flag dest -> config key), from the fields' metadata.
TRAIN_FLAGS = _train_flags()


class _Registry(Sequence):
    """The names of a registry, read on first use (argparse ``choices``), so that building the parser stays
    light: the registries live in modules that import torch."""

    def __init__(self, key: str):
        self.key = key

    def _names(self) -> tuple[str, ...]:
        spec = next(f for f in dataclasses.fields(TrainConfig) if f.name == self.key).metadata["choices"]
        return tuple(spec())

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())


def _default(key: str) -> str:
    """`` (default: X)`` with X the TrainConfig default of ``key``."""
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == key)
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return f" (default: {value})"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already names it or there is none to show (None, a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error of the command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


def _flag_type(hint) -> type | None:
    """The parser's conversion of a field's annotation: int or float (``int | None`` too); None: the text."""
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return kinds[0] if kinds[0] in (int, float) else None


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="TOML/YAML/JSON config file (keys: TrainConfig fields), or the "
                                                  "name of a packaged config (see `lpc-geom configs`)")
    group = parser.add_argument_group("overrides (take precedence over the config file; defaults: TrainConfig's)")
    hints = typing.get_type_hints(TrainConfig)
    for dest, key in TRAIN_FLAGS.items():
        cli = next(f for f in dataclasses.fields(TrainConfig) if f.name == key).metadata["cli"]
        group.add_argument(_flag(dest), type=cli["type"] or _flag_type(hints[key]), metavar=cli["metavar"],
                           choices=_Registry(key) if cli["choices"] else None,
                           help=cli["help"] + ("" if "default" in cli["help"] else _default(key)))
        for flag, options in _FLAGS_AFTER.get(key, ()):
            group.add_argument(flag, **options)
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any TrainConfig key, value parsed as JSON (e.g. --set gamma_options='{\"every\": 2}')")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint (same config; --epochs may grow)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run that --out holds (all its files) and train anew; without --resume "
                             "or --overwrite a directory holding a run is refused")
    parser.add_argument("--from-last-good", action="store_true",
                        help="with --resume: continue from checkpoint_last_good.pt, left by a divergence "
                             "(--lr may be smaller)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


#: The train flags that set no TrainConfig field of their own, each after the flag of the field it belongs to.
_FLAGS_AFTER = {
    "dataset": [("--data-root", {"help": "CIFAR directory (cifar10/cifar100) or .npz file (npz)"})],
    "backbone": [("--trust-backbone", {"action": "store_true", "help": "import the backbone import path the config "
                                       "file names (this runs its code)"})],
    "gamma_schedule": [
        ("--gamma-start", {"type": float, "help": "initial gamma (default: the schedule's; paper: 1e-2)"}),
        ("--gamma-factor", {"type": float, "help": "growth factor per step (default: the schedule's; paper: "
                                                   "1.05/epoch)"}),
        ("--gamma-max", {"type": float, "help": "largest gamma (default: the schedule's; paper: 1e6)"}),
    ],
}


def _add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backbone`` / ``--trust-backbone`` of the commands that rebuild a run's model."""
    parser.add_argument("--backbone", type=str.strip, metavar="MODULE:FACTORY",
                        help="rebuild a run trained with its own backbone from this import path (the run's "
                             "config.json must record the same path, or record a backbone passed as a Python "
                             "object); importing it runs that module's code")
    parser.add_argument("--trust-backbone", action="store_true",
                        help="import the backbone import path the run's config.json records (this runs its "
                             "code: only for runs you trust)")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Config file (or defaults), then explicit flags, then ``--set`` overrides.

    A :class:`~lpc_geom.config.ConfigError` labels each invalid key with the option that set it
    (``--lr``, ``--set lr``) or the config file it came from.
    """
    trust = True if args.trust_backbone else (args.backbone or False)
    config = load_config(args.config, trust_backbone=trust) if args.config else TrainConfig()
    changes = {key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    labels = {key: _flag(flag) for flag, key in TRAIN_FLAGS.items() if key in changes}
    gamma_options = dict(config.gamma_options)
    gamma_flags = []
    for flag, key in (("gamma_start", "start"), ("gamma_factor", "factor"), ("gamma_max", "gamma_max")):
        if getattr(args, flag) is not None:
            gamma_options[key] = getattr(args, flag)
            gamma_flags.append(_flag(flag))
    if gamma_options != config.gamma_options:
        changes["gamma_options"] = gamma_options
        labels["gamma_options"] = f"gamma_options ({', '.join(gamma_flags)})"
    if args.data_root is not None:
        dataset = changes.get("dataset", config.dataset)
        key = data_root_option(dataset)
        changes["dataset_options"] = {**config.dataset_options, key: args.data_root}
        labels["dataset_options"] = "--data-root"
    for item in args.set:
        key, value = parse_override(item)
        changes[key] = value
        labels[key] = f"--set {key}"
    if args.no_progress:
        changes["progress"] = False
    check_keys(changes, source="--set")
    if args.config:
        labels = {**{key: f"{args.config}: {key}" for key in config_keys() if key not in labels}, **labels}
    try:
        return config.replace(**changes)
    except ConfigError as exc:
        raise exc.located(labels=labels) from None


def _command_line() -> list[str] | None:
    """The command line of this process when it runs ``lpc-geom train`` (None when called from Python)."""
    if sys.argv[1:2] != ["train"]:
        return None
    if Path(sys.argv[0]).name == "__main__.py":  # python -m lpc_geom: the interpreter's own arguments
        return list(sys.orig_argv)
    program = Path(sys.argv[0])
    return [program.name if shutil.which(program.name) == str(program) else str(program), *sys.argv[1:]]


def _cmd_train(args: argparse.Namespace) -> int:
    from lpc_geom.train import NonFiniteLossError, TrainingStopped, train

    config = config_from_args(args)
    args.output_dir = config.out_dir  # names the directory in an error that does not (a full disk)
    check_writable_directory(config.out_dir, label="--out" if args.out is not None else "out_dir")
    command = _command_line()
    try:
        result = train(config, resume=args.resume, overwrite=args.overwrite, from_last_good=args.from_last_good,
                       command=command)
    except TrainingStopped as stop:
        again = [a for a in command or [] if a not in ("--resume", "--overwrite", "--from-last-good")]
        how = shlex.join(again) if command else "the same lpc-geom train command with"
        print(f"stopped at epoch {stop.epoch}; resume with: {how} --resume", file=sys.stderr)
        return 128 + stop.signum
    except NonFiniteLossError as exc:
        print(f"lpc-geom train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the training's own handlers were installed: nothing to resume yet
        print("lpc-geom train: interrupted before training started", file=sys.stderr)
        return 130
    final = result.final
    print(f"run directory: {result.out_dir}")
    print(json.dumps({k: final[k] for k in ("epoch", "train_acc", "test_acc", "gamma") if k in final}))
    return 0


def _cmd_sweep_gamma(args: argparse.Namespace) -> int:
    from lpc_geom.experiments.frontier import DEFAULT_GAMMA_MAX, run_frontier
    from lpc_geom.experiments.sweep import exit_status

    for flag in ("resume", "overwrite", "from_last_good"):
        if getattr(args, flag):
            raise ValueError(f"{_flag(flag)}: sweep-gamma reuses finished runs and resumes half-trained ones by "
                             f"itself; the flag belongs to `lpc-geom train`")
    ceilings, args.gamma_max = args.gamma_max, None  # the per-run gamma_max is each job's ceiling
    out = Path(args.out if args.out is not None else "runs/sweep-gamma")
    args.out = None
    args.output_dir = out
    check_writable_directory(out, label="--out")
    config = config_from_args(args)
    result = run_frontier(config, out, gamma_max=ceilings or DEFAULT_GAMMA_MAX, seeds=args.seeds or [config.seed],
                          workers=args.workers, progress=not args.no_progress)
    return exit_status(result.records)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from lpc_geom.experiments.runs import analyze_run

    report = analyze_run(Path(args.run_dir), split=args.split, backbone=args.backbone,
                         trust_backbone=args.trust_backbone)
    print(report.to_markdown())
    return 0


def _cmd_robustness(args: argparse.Namespace) -> int:
    from lpc_geom.experiments.runs import analyze_run, robustness_run, run_table
    from lpc_geom.train.run_dir import REPORT_FILES, is_fresh

    robustness_run(Path(args.run_dir), samples=args.samples, seed=args.seed, split=args.split,
                   candidates=args.candidates, max_iter=args.max_iter, refine_steps=args.refine_steps,
                   fmn_steps=args.fmn_steps, lipschitz=not args.no_lipschitz, backbone=args.backbone,
                   trust_backbone=args.trust_backbone)
    if not is_fresh(Path(args.run_dir) / REPORT_FILES[args.split]):  # missing, or of other latents
        analyze_run(Path(args.run_dir), split=args.split, backbone=args.backbone,
                    trust_backbone=args.trust_backbone)
    print(run_table(Path(args.run_dir)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lpc_geom.experiments.demo import run_demo

    check_writable_directory(args.out, label="--out")
    run_demo(Path(args.out), epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    from lpc_geom.configs import list_configs

    configs = list_configs()
    width = max(len(name) for name in configs)
    for name, path in configs.items():
        first = path.read_text().splitlines()[:1]
        print(f"{name:<{width}}  {first[0].lstrip('# ') if first and first[0].startswith('#') else ''}")
    print(f"(files in {next(iter(configs.values())).parent}; `lpc-geom train NAME` trains with one)")
    return 0


def _cmd_backbones(args: argparse.Namespace) -> int:
    from lpc_geom.models.backbones import BACKBONES, backbone_options

    width = max(len(name) for name in BACKBONES)
    for name, (_, factory, _) in BACKBONES.items():
        where = f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}"
        print(f"{name:<{width}}  {where}  options: {', '.join(backbone_options(name)) or '(none)'}")
    print("(or --backbone package.module:factory, factory(input_shape, **backbone_options) -> nn.Module)")
    return 0


def _version() -> str:
    """The installed distribution's version (the package's own when it runs uninstalled, from a checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lpc_geom")
    except PackageNotFoundError:
        import lpc_geom

        return lpc_geom.__version__


def _cmd_rows(args: argparse.Namespace) -> int:
    width = max(len(name) for name in ROWS)
    for name, row in ROWS.items():
        print(f"{name:<{width}}  {row.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lpc-geom",
        description="Latent point collapse (LPC) and the geometry of classifier latents.",
        epilog="Run 'lpc-geom COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, show the Python traceback")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **options) -> argparse.ArgumentParser:
        return commands.add_parser(name, formatter_class=_HelpFormatter, parents=[common], **options)

    train_parser = command(
        "train", help="train one classifier (any ablation row, geometry, optimiser)",
        description="Train one classifier. The run directory receives config.json, history.json/.csv, "
                    "checkpoint.pt (written atomically) and latents.npz (train/test latents, labels, "
                    "predictions). Unknown config keys or values are errors that list the accepted ones.",
    )
    _add_train_arguments(train_parser)
    train_parser.set_defaults(func=_cmd_train)

    sweep_gamma = command(
        "sweep-gamma", help="the accuracy-vs-collapse frontier: LPC at several gamma ceilings, LinPen, NoPen",
        description="Train the LPC row at each gamma ceiling (--gamma-max; the paper's exponential schedule "
                    "unless another is named), LPC with the adaptive gamma controller, LinPen and NoPen on the "
                    "same data and backbone, and write OUT/frontier.png (test accuracy against the separation "
                    "ratio of the training and of the test latents), OUT/frontier.csv/json and OUT/runs.json. "
                    "A re-launched sweep reuses finished runs and resumes half-trained ones.")
    _add_train_arguments(sweep_gamma)
    flags = {a.dest: a for a in sweep_gamma._actions}  # the train flags that mean something else here
    flags["gamma_max"].nargs, flags["gamma_max"].metavar = "+", "G"
    flags["gamma_max"].help = "gamma ceilings of the LPC runs (default: 0.01 0.1 1 10)"
    flags["out"].help = "output directory; one run directory per job in OUT/runs (default: runs/sweep-gamma)"
    sweep_gamma.add_argument("--seeds", type=int, nargs="+", metavar="S",
                             help="seeds of every variant (default: --seed)")
    sweep_gamma.add_argument("--workers", type=int, default=1, help="local worker processes (one thread each)")
    sweep_gamma.set_defaults(func=_cmd_sweep_gamma)

    demo = command(
        "demo", help="train LPC and the NoPen baseline on MNIST-1D and compare their latents",
        description="Train LPC and NoPen on MNIST-1D (generated offline), print the collapse table and "
                    "write a figure of both latent spaces.",
    )
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the demo config's)")
    demo.add_argument("--seed", type=int, default=0, help="seed of both runs")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_cmd_demo)

    analyze = command("analyze", help="collapse report of a finished run's latents",
                                  description="Print lpc_geom.analyze's report for RUN_DIR/latents.npz "
                                              "and write it to RUN_DIR/report_<split>.json.")
    analyze.add_argument("run_dir")
    analyze.add_argument("--split", choices=("train", "test"), default="test")
    _add_backbone_arguments(analyze)
    analyze.set_defaults(func=_cmd_analyze)

    robustness = command(
        "robustness", help="DeepFool, Lipschitz bounds and certified radii of a finished run",
        description="Measure a run's robustness on test inputs, or with --split train on training inputs "
                    "(DeepFool as in the LPC paper: the model's own prediction as label, top-10 candidates, "
                    "overshoot 0.02, no clipping), write RUN_DIR/robustness.json (robustness_train.json) and "
                    "print it joined with the analyzer's report.")
    robustness.add_argument("run_dir")
    robustness.add_argument("--samples", type=int, default=1000, help="inputs attacked (seeded subsample)")
    robustness.add_argument("--split", choices=("test", "train"), default="test",
                            help="attack test inputs (the paper's figure; robustness.json) or training inputs, "
                                 "whose latents the training collapsed (robustness_train.json)")
    robustness.add_argument("--seed", type=int, default=0, help="seed of the subsample")
    robustness.add_argument("--candidates", type=int, default=10, help="DeepFool candidate classes")
    robustness.add_argument("--max-iter", type=int, default=50, help="DeepFool iterations")
    robustness.add_argument("--refine-steps", type=int, default=20,
                            help="bisection halvings that shrink each DeepFool perturbation to the nearest "
                                 "misclassified point on its segment (deepfool_refined_*; 0: none)")
    robustness.add_argument("--fmn-steps", type=int, default=100,
                            help="steps of the Fast Minimum-Norm L2 attack, the shortest adversarial perturbations "
                                 "(fmn_*; from 0 and from DeepFool's point; 0: none)")
    robustness.add_argument("--no-lipschitz", action="store_true", help="skip the Lipschitz bounds")
    _add_backbone_arguments(robustness)
    robustness.set_defaults(func=_cmd_robustness)

    rows = command("rows", help="list the ablation rows", description="List the ablation rows.")
    rows.set_defaults(func=_cmd_rows)

    configs = commands.add_parser("configs", help="list the packaged training configs",
                                  description="List the configs shipped with lpc_geom; `lpc-geom train NAME` "
                                              "reads one from any directory.")
    configs.set_defaults(func=_cmd_configs)

    # Listed here for --help; main() hands `lpc-geom compare ...` to the main job's own parser, whole.
    commands.add_parser("compare", add_help=False,
                        help="the main job: LPC across geometries and optimisers over seeds (see "
                             "'lpc-geom compare --help')")

    backbones = commands.add_parser("backbones", help="list the backbones (built-in and registered)",
                                    description="List the backbone names `lpc-geom train --backbone` takes, "
                                                "with their options; an import path takes your own.")
    backbones.set_defaults(func=_cmd_backbones)
    return parser


#: Errors in what the user gave (a value, an option, a file's content or path): exit code 2. Anything else
#: (a full disk, a read-only directory, a diverging run) is a runtime error: exit code 1.
USAGE_ERRORS = (ValueError, TypeError, LookupError, FileNotFoundError, FileExistsError, NotADirectoryError,
                IsADirectoryError)
#: Operating-system errors that describe the machine rather than the program (a full disk, a read-only file
#: system, no permission): the cause worth reporting when a library re-raises them as its own error.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                                errno.EFBIG, errno.EMFILE, errno.ENFILE})


def _chain(exc: BaseException):
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


#: Errors only a write raises: without a file name in the error, they concern the command's output directory.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def describe_error(exc: BaseException, *, output_dir: str | Path | None = None) -> tuple[str, int]:
    """``(one-line message, exit code)`` for an exception that ends a command.

    lpc_geom's own messages already start with the file or option at fault. An operating-system error
    hidden in a chained library error (torch reports a full disk as a RuntimeError raised while handling
    the ``OSError``) is reported as that ``OSError``; a write error without a file name is attributed to
    ``output_dir``, the directory the command writes to.
    """
    if not isinstance(exc, (OSError, *USAGE_ERRORS)):
        hidden = next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS), None)
        if hidden is not None:
            exc = hidden
    if isinstance(exc, OSError) and exc.errno is not None:
        name = exc.filename if exc.filename is not None else ""
        if not name and exc.errno in WRITE_ERRNOS and output_dir is not None:
            name = str(output_dir)
        problem = f"{exc.strerror or errno.errorcode.get(exc.errno, exc)} [{errno.errorcode.get(exc.errno, '?')}]"
        message = f"{name}: {problem}" if name else problem
    elif isinstance(exc, KeyError) and not type(exc).__module__.startswith("lpc_geom"):
        message = f"missing key {exc}"  # a bare KeyError's message is only the key
    elif type(exc).__module__.startswith("lpc_geom") or isinstance(exc, (*USAGE_ERRORS, OSError)):
        message = str(exc) or type(exc).__name__
    else:  # another library's error (torch's RuntimeError): its type says where it came from
        message = f"{type(exc).__name__}: {exc}"
    return _one_line(message), (2 if isinstance(exc, USAGE_ERRORS) else 1)


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error ends it with one line ``lpc-geom COMMAND: error: WHERE: PROBLEM`` on stderr.

    Exit codes: 0 success, 2 a usage error (bad value, option or input file), 1 a runtime error (see
    :data:`USAGE_ERRORS`). ``--debug`` prints the traceback before that line.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["--debug"] and arguments[1:2] == ["compare"]:
        arguments = arguments[1:]  # the main job's errors are its own one-line messages already
    if arguments[:1] == ["compare"]:  # its own parser takes every flag that follows
        from lpc_geom.experiments.compare import cli as compare

        return compare(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # every error a command raises ends in one line
        if getattr(args, "debug", False):
            traceback.print_exc()
        output_dir = next((getattr(args, key) for key in ("output_dir", "run_dir", "out")
                           if getattr(args, key, None) is not None), None)
        message, code = describe_error(exc, output_dir=output_dir)
        print(f"lpc-geom {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
