"""Run configuration: one typed dataclass, loaded from TOML, YAML or JSON and overridden by flags.

Every value is checked once, here, before any data is loaded or any step is taken:

* types strictly, from the field annotations (a bool is not a number, a number is not a bool, an
  integer field takes only integers; ``None`` only where the annotation allows it);
* ranges and accepted names, from each field's metadata (``ge``/``gt``/``le``, ``finite``, and
  ``choices`` drawn from the registry that owns the names: datasets, backbones, geometries, gamma
  schedules, optimisers);
* every nested options dict against the signature of what it configures (the dataset loader, the
  backbone constructor, the geometry head class, the gamma schedule): unknown keys are listed with the
  accepted ones and each value is checked against that parameter's annotation.

A failure raises :class:`ConfigError` (a ``ValueError``) naming every invalid key, what is wrong and what
is accepted, prefixed by the file (or labelled by the command-line option) it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import json
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from lpc_geom.ablation import ROWS, get_row
from lpc_geom.configs import resolve_config

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")
#: Largest seed: numpy and torch generators both accept every seed in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1


# ------------------------------------------------------------------------------------------- registries
# Imported on first use: the registries pull in torch, and `import lpc_geom.config` (the CLI) stays light.
def _datasets() -> dict[str, Callable[..., Any]]:
    from lpc_geom.data import DATASETS

    return DATASETS


def _backbones() -> tuple[str, ...]:
    from lpc_geom.models.backbones import BACKBONES

    return tuple(BACKBONES)


def _geometries() -> tuple[str, ...]:
    from lpc_geom.models.geometry import GEOMETRIES

    return GEOMETRIES


def _gamma_schedules() -> dict[str, type]:
    from lpc_geom.train.schedules import GAMMA_SCHEDULES

    return GAMMA_SCHEDULES


def _optimizers() -> tuple[str, ...]:
    from lpc_geom.optim import optimizer_names

    return optimizer_names()


def _fisher_types() -> tuple[str, ...]:
    from lpc_geom.optim.kfac import FisherType

    return typing.get_args(FisherType)


def _rows() -> tuple[str, ...]:
    return tuple(ROWS)


def _spec(*, ge: float | None = None, gt: float | None = None, le: float | None = None, finite: bool = False,
          choices: Callable[[], Sequence[str]] | None = None,
          normalise: Callable[[str], str] | None = None,
          also: tuple[Callable[[str], bool], str] | None = None) -> dict[str, Any]:
    """A field's checks: bounds, finiteness, and the accepted names (``normalise`` maps a name onto one;
    ``also = (accepts, description)`` admits further values, e.g. import paths, checked elsewhere)."""
    return {"ge": ge, "gt": gt, "le": le, "finite": finite, "choices": choices, "normalise": normalise,
            "also": also}


def _lower(name: str) -> str:  # the dataset and backbone registries look names up case-insensitively
    return name.strip().lower()


def _backbone_name(name: str) -> str:  # import paths name Python modules, which are case-sensitive
    name = name.strip()
    return name if _is_backbone_reference(name) else name.lower()


def _is_import_path(name: str) -> bool:
    from lpc_geom.models.backbones import is_import_path

    return is_import_path(name)


def _is_backbone_reference(name: str) -> bool:
    """An import path ``package.module:factory`` or the record of a backbone passed as a Python object."""
    from lpc_geom.models.backbones import OBJECT_BACKBONE, is_import_path

    return is_import_path(name) or bool(OBJECT_BACKBONE.match(name))


_BACKBONE_HELP = ("a backbone name (`lpc-geom backbones` lists them) or an import path package.module:factory, "
                  "factory(input_shape, **backbone_options) -> nn.Module (imported: it runs that module's code); "
                  "a config file's import path is imported only when given here too or with --trust-backbone")


def _row_name(name: str) -> str:
    try:
        return get_row(name).name
    except ValueError:
        return name


def _field(default: Any, *, help: str | None = None, flag: str | None = None, metavar: str | None = None,
           cli_type: Callable[[str], Any] | None = None, cli_choices: bool = False, **spec: Any) -> Any:
    """A field with its checks (:func:`_spec`) and, where ``help`` is given, its ``lpc-geom train`` flag.

    The flag is ``--FIELD`` (or ``--FLAG``); ``cli_type`` converts its text (default: the annotation's int or
    float), ``cli_choices`` lets the parser check the names; the help is followed by the default unless it
    names one itself.
    """
    cli = None if help is None else {"help": help, "flag": flag, "metavar": metavar, "type": cli_type,
                                     "choices": cli_choices}
    return field(default=default, metadata={**_spec(**spec), "cli": cli})


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json`` in the run directory).

    Construction validates every field (see the module docstring) and raises :class:`ConfigError`.
    Integers given for float fields are stored as floats; options dicts are stored as their JSON form
    (tuples become lists), so that ``config.json`` records exactly what was trained.
    """

    # data
    dataset: str = _field("mnist1d", choices=lambda: tuple(_datasets()), normalise=_lower, help="dataset: %(choices)s",
                          metavar="NAME", cli_type=str.lower, cli_choices=True)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    # model
    # a registered name, or an import path package.module:factory (imported when the config is validated)
    backbone: str = _field("mlp", choices=_backbones, normalise=_backbone_name,
                           also=(_is_backbone_reference, "an import path package.module:factory"),
                           help=_BACKBONE_HELP, metavar="NAME|MODULE:FACTORY", cli_type=str.strip)
    backbone_options: dict[str, Any] = field(default_factory=dict)
    row: str = _field("LPC", choices=_rows, normalise=_row_name, help=f"ablation row: {', '.join(ROWS)}")
    latent_dim: int | None = _field(None, ge=1, help="penultimate width (default: the row's width)")
    classifier_bias: bool = _field(False)
    geometry: str = _field("euclidean", choices=_geometries, help="latent geometry of the head: %(choices)s",
                           metavar="NAME", cli_choices=True)
    geometry_options: dict[str, Any] = field(default_factory=dict)
    # loss
    # adaptive: grows gamma while a held-out validation accuracy holds (AdaptiveGamma); the paper's by name
    gamma_schedule: str = _field("adaptive", choices=lambda: tuple(_gamma_schedules()),
                                 help="gamma schedule: %(choices)s", metavar="NAME", cli_choices=True)
    gamma_options: dict[str, Any] = field(default_factory=dict)
    supcon_weight: float = _field(1.0, ge=0, finite=True)
    temperature: float = _field(0.05, gt=0, finite=True)
    # optimisation
    optimizer: str = _field("auto", choices=_optimizers, metavar="NAME", cli_choices=True,
                            help="optimiser: %(choices)s; auto: adamw, or riemannian-adam for manifold heads; "
                                 "kfac-* add K-FAC")
    lr: float = _field(1e-3, gt=0, finite=True, help="learning rate")
    weight_decay: float = _field(5e-4, ge=0, finite=True)
    lr_halve_from: int = _field(250, ge=0)
    lr_halve_every: int = _field(50, ge=1)
    lr_halve_classifier: bool = _field(False)  # the paper keeps the classifier's learning rate constant
    kfac_damping: float = _field(1e-3, gt=0, finite=True, help="K-FAC Tikhonov damping")
    kfac_damping_late: float | None = _field(None, gt=0, finite=True, help="K-FAC damping once the learning rate "
                                             "starts halving (lr_halve_from; default: --kfac-damping)")
    kfac_update_freq: int = _field(10, ge=1, help="K-FAC: steps between eigendecompositions")
    kfac_factor_freq: int = _field(1, ge=1, help="K-FAC: steps between curvature statistics")
    kfac_fisher: str = _field("mc", choices=_fisher_types, help="K-FAC Fisher type: %(choices)s", metavar="NAME",
                              cli_choices=True)
    kfac_start_epoch: int = _field(0, ge=0, help="K-FAC preconditions from this epoch on (before it the base "
                                                 "optimiser steps alone)")
    epochs: int = _field(200, ge=1, help="epochs")
    # Batch norm and the supervised contrastive loss need two samples per batch (per process under DDP, which
    # the trainer checks): the trainer skips smaller batches, so a batch size of 1 would train nothing.
    batch_size: int = _field(128, ge=2, help="batch size, at least 2 (2 per process under torchrun)")
    # run
    seed: int = _field(0, ge=0, le=MAX_SEED, help="seed of initialisation and data order")
    device: str = _field("auto", choices=lambda: DEVICES, cli_choices=True,
                         help="where to train (auto: CUDA when available)")
    dtype: str = _field("float32", choices=lambda: DTYPES, cli_choices=True,
                        help="floating-point type of the model and the inputs")
    out_dir: str = _field("runs/default", help="run directory (config, history, checkpoints, latents)", flag="out")
    checkpoint_every: int = _field(10, ge=1, help="epochs between checkpoints")
    final_robustness_samples: int = _field(0, ge=0, flag="final_robustness", metavar="N",
                                           help="after training, DeepFool/Lipschitz/certified radii on N test inputs "
                                                "(robustness.json)")
    progress: bool = _field(True)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check (and normalise) every field; raise :class:`ConfigError` listing every problem.

        Raises
        ------
        ConfigError
            Naming each invalid key, what is wrong with it and what is accepted.
        """
        problems: list[tuple[str, str]] = []
        hints = _field_hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem, value = _check_value(value, hints[f.name])
            if problem is None:
                problem, value = _check_range(value, f.metadata)
            if problem is None:
                setattr(self, f.name, value)
            else:
                problems.append((f.name, problem))
        bad = {key for key, _ in problems}
        if "backbone" not in bad:
            problem = _check_backbone_import(self.backbone)
            if problem is not None:
                problems.append(("backbone", problem))
                bad.add("backbone")
        for key, check in (("dataset_options", _check_dataset_options), ("backbone_options", _check_backbone_options),
                           ("geometry_options", _check_geometry_options), ("gamma_options", _check_gamma_options)):
            owner = _OPTION_OWNERS[key]
            if key in bad or owner in bad:
                continue
            problems.extend((key, text) for text in check(getattr(self, owner), getattr(self, key)))
        if problems:
            raise ConfigError(problems)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict of JSON values (what ``config.json`` holds)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied (unknown keys are an error)."""
        check_keys(changes, source="overrides")
        return dataclasses.replace(self, **changes)


#: Which field names the thing each options dict configures.
_OPTION_OWNERS = {"dataset_options": "dataset", "backbone_options": "backbone", "geometry_options": "geometry",
                  "gamma_options": "gamma_schedule"}


class ConfigError(ValueError):
    """Invalid configuration values: ``problems`` is a list of ``(key, what is wrong)``.

    ``str()`` reads ``[source: ]label: problem; label: problem``, where ``label`` is ``labels[key]`` (a
    command-line option, say) or the key itself, and ``source`` names the file the values came from.
    """

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None,
                 labels: Mapping[str, str] | None = None):
        self.problems = [tuple(p) for p in problems]
        self.source = source
        self.labels = dict(labels or {})
        super().__init__(self.problems, source, self.labels)  # the args rebuild it when unpickled

    def located(self, *, source: str | None = None, labels: Mapping[str, str] | None = None) -> ConfigError:
        """The same problems attributed to ``source`` and/or labelled with ``labels``."""
        return ConfigError(self.problems, source=source or self.source, labels={**self.labels, **(labels or {})})

    def __str__(self) -> str:
        text = "; ".join(f"{self.labels.get(key, key)}: {problem}" for key, problem in self.problems)
        return f"{self.source}: {text}" if self.source else text


# ------------------------------------------------------------------------------------------- type checks
@functools.cache
def _field_hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _show(value: Any) -> str:
    """A value as the user wrote it: JSON spelling (true, null, "no") where there is one."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return f"{value!r} ({type(value).__module__}.{type(value).__qualname__})"


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(hint: Any) -> str:
    """An annotation in words: ``int | None`` -> "an integer or null"."""
    if hint is Any:
        return "any value"
    if hint is type(None):
        return "null"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(_show(a) for a in args)
    simple = {bool: "a bool (true or false)", int: "an integer", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    if origin in (dict, Mapping) or hint is dict:
        return "a table/mapping" + (f" of {_describe(args[1])}" if args and args[1] is not Any else "")
    if origin in (list, tuple, Sequence):
        return "a list" + (f" whose items are each {_describe(args[0])}" if args and args[0] is not Any else "")
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of type ``hint``, strictly: a bool is no number and a number no bool, a real is no
    integer (an integer is a real).

    Annotations this checker does not model (a protocol, a torch class) are left to the callee, which
    receives the value as it is.
    """
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _is_integer(value)
    if hint is float:
        return _is_real(value)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin in (dict, Mapping):
        key_hint, value_hint = args if args else (Any, Any)
        return isinstance(value, Mapping) and all(
            _matches(k, key_hint) and _matches(v, value_hint) for k, v in value.items())
    if origin in (list, tuple, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return all(_matches(v, args[0] if args else Any) for v in value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _json_form(value: Any) -> Any:
    """``value`` as ``config.json`` will store it (tuples become lists); a TypeError if it has no JSON form."""
    return json.loads(json.dumps(value))


def _check_value(value: Any, hint: Any) -> tuple[str | None, Any]:
    """``(problem or None, normalised value)`` of a top-level field."""
    if isinstance(value, Mapping) and not all(isinstance(k, str) for k in value):
        return f"keys must be strings, got {', '.join(repr(k) for k in value if not isinstance(k, str))}", value
    if not _matches(value, hint):
        return f"expected {_describe(hint)}, got {_show(value)}", value
    if _is_integer(value) and float in (*typing.get_args(hint), hint):
        try:
            value = float(value)
        except OverflowError:
            return f"{value} is too large for a float", value
    elif _is_integer(value):
        value = int(value)
    if isinstance(value, Mapping):
        try:
            value = _json_form(dict(value))
        except (TypeError, ValueError) as exc:
            return f"values must be representable in config.json (JSON): {exc}", value
    return None, value


def _check_range(value: Any, spec: Mapping[str, Any]) -> tuple[str | None, Any]:
    """``(problem or None, normalised value)`` against a field's ``ge``/``gt``/``le``/``finite``/``choices``."""
    if value is None:
        return None, value
    choices = spec.get("choices")
    if choices is not None:
        accepted = tuple(choices())
        if spec.get("normalise") is not None:
            value = spec["normalise"](value)
        also = spec.get("also")
        if value not in accepted and not (also is not None and also[0](value)):
            hint = _close(value, accepted)
            extra = f", or {also[1]}" if also is not None else ""
            return f"unknown value {_show(value)}{hint} (accepted: {', '.join(accepted)}{extra})", value
        return None, value
    if isinstance(value, str):
        return ("must not be empty" if not value.strip() else None), value
    if not _is_real(value):
        return None, value
    bounds = []
    if spec.get("finite") and not math.isfinite(value):
        return f"must be a finite number, got {_show(value)}", value
    if math.isnan(value):
        return "must be a number, got NaN", value
    if spec.get("gt") is not None and not value > spec["gt"]:
        bounds.append(f"> {spec['gt']}")
    if spec.get("ge") is not None and not value >= spec["ge"]:
        bounds.append(f">= {spec['ge']}")
    if spec.get("le") is not None and not value <= spec["le"]:
        bounds.append(f"<= {spec['le']}")
    if bounds:
        return f"{_show(value)} is out of range (must be {' and '.join(bounds)})", value
    return None, value


def _close(value: str, accepted: Sequence[str]) -> str:
    match = difflib.get_close_matches(str(value), list(accepted), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ------------------------------------------------------------------------------------------- options
def _parameter_hints(target: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations of ``target``'s parameters (of ``__init__`` for a class)."""
    function = target.__init__ if isinstance(target, type) else target
    try:
        return typing.get_type_hints(function)
    except (NameError, TypeError):  # an annotation that does not resolve: the callee checks that value
        return {}


def _check_options(options: Mapping[str, Any], *, what: str, accepted: Sequence[str], hints: Mapping[str, Any],
                   required: Sequence[str] = ()) -> list[str]:
    """Problems of an options dict: unknown or missing keys, and values that do not match their annotations."""
    problems = []
    unknown = [k for k in options if k not in accepted]
    if unknown:
        suggestions = "".join(_close(k, accepted) for k in unknown[:1])
        problems.append(f"unknown key(s) {', '.join(map(repr, unknown))} for {what}{suggestions}; "
                        f"accepted: {', '.join(accepted) or '(none)'}")
    missing = [k for k in required if k not in options]
    if missing:
        problems.append(f"{what} requires {', '.join(map(repr, missing))}; accepted: {', '.join(accepted)}")
    for key, value in options.items():
        if key in accepted and key in hints and not _matches(value, hints[key]):
            problems.append(f"{key}: expected {_describe(hints[key])}, got {_show(value)}")
    return problems


def _check_dataset_options(name: str, options: Mapping[str, Any]) -> list[str]:
    loader = _datasets()[name]
    params = inspect.signature(loader).parameters
    required = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty]
    return _check_options(options, what=f"dataset {name!r} ({loader.__name__})", accepted=list(params),
                          hints=_parameter_hints(loader), required=required)


def _check_backbone_import(name: str) -> str | None:
    """The problem of an import path that does not import or names no factory (None: fine or a name)."""
    from lpc_geom.models.backbones import BackboneImportError, factory_options, import_backbone, is_import_path

    if not is_import_path(name):
        return None
    try:
        factory_options(import_backbone(name))
    except (BackboneImportError, TypeError, ValueError) as exc:  # ValueError: a signature inspect cannot read
        return str(exc)
    return None


def _check_backbone_options(name: str, options: Mapping[str, Any]) -> list[str]:
    from lpc_geom.models.backbones import (
        BACKBONES,
        OBJECT_BACKBONE,
        backbone_options,
        factory_options,
        import_backbone,
        is_import_path,
    )

    if OBJECT_BACKBONE.match(name):  # only the object it records can check them (see make_backbone)
        return []
    if is_import_path(name):
        factory = import_backbone(name)
        accepted, any_keyword = factory_options(factory)
    else:
        _, factory, _ = BACKBONES[name]
        accepted, any_keyword = backbone_options(name), any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    if any_keyword:
        accepted = (*accepted, *(k for k in options if k not in accepted))
    return _check_options(options, what=f"backbone {name!r} ({getattr(factory, '__name__', factory)})",
                          accepted=accepted, hints=_parameter_hints(factory))


def _check_geometry_options(name: str, options: Mapping[str, Any]) -> list[str]:
    from lpc_geom.models.geometry import GEOMETRY_HEADS

    if name == "euclidean":
        return [f"geometry 'euclidean' (the reference LPC head) takes no options; got {', '.join(map(repr, options))}"
                ] if options else []
    head = GEOMETRY_HEADS[name]
    # The keyword-only parameters; the sizes come from the model and the manifold from the geometry name.
    params = inspect.signature(head).parameters
    accepted = [p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY]
    return _check_options(options, what=f"geometry {name!r} ({head.__name__})", accepted=accepted,
                          hints=_parameter_hints(head))


#: Ranges of the gamma schedules' options (the schedules themselves check start <= gamma_max, every >= 1).
_GAMMA_RANGES = {"start": _spec(gt=0, finite=True), "factor": _spec(gt=0, finite=True), "gamma_max": _spec(gt=0),
                 "every": _spec(ge=1), "switch": _spec(gt=0, finite=True), "late_factor": _spec(gt=0, finite=True),
                 "threshold": _spec(ge=0, le=1), "tolerance": _spec(ge=0, le=1), "patience": _spec(ge=1),
                 "validation_fraction": _spec(gt=0, le=1)}


def _check_gamma_options(name: str, options: Mapping[str, Any]) -> list[str]:
    from lpc_geom.train.schedules import build_gamma_schedule, gamma_option_names

    schedule = _gamma_schedules()[name]
    accepted = gamma_option_names(schedule)  # less the fields that hold the schedule's state
    problems = _check_options(options, what=f"gamma schedule {name!r} ({schedule.__name__})", accepted=accepted,
                              hints=typing.get_type_hints(schedule))
    if problems:
        return problems
    for key, value in options.items():
        problem, _ = _check_range(value, _GAMMA_RANGES.get(key, {}))
        if problem is not None:
            problems.append(f"{key}: {problem}")
    if not problems:
        try:
            build_gamma_schedule(name, **options)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


# ------------------------------------------------------------------------------------------- keys and files
def config_keys() -> list[str]:
    """The names of the :class:`TrainConfig` fields."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def check_keys(mapping: Mapping[Any, Any], *, source: str) -> None:
    """Raise a ValueError naming ``source`` if ``mapping`` has a key that is not a TrainConfig field."""
    keys = config_keys()
    not_strings = [k for k in mapping if not isinstance(k, str)]
    if not_strings:
        raise ValueError(f"{source}: keys must be strings, got {', '.join(map(_show, not_strings))}")
    unknown = sorted(set(mapping) - set(keys))
    if unknown:
        hints = "".join(_close(k, keys) for k in unknown[:1])
        raise ValueError(f"{source}: unknown key(s) {unknown}{hints}; accepted keys: {', '.join(keys)}")


def _yaml_loader() -> type:
    """A safe YAML loader that also reads exponent floats without a dot (``1e-3``, ``5E+4``) as numbers.

    YAML 1.1 (PyYAML's schema) requires a dot in a float, so it reads ``lr: 1e-3`` as the string
    ``"1e-3"``; YAML 1.2 and every other config format read it as a number.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))
    return Loader


def _parse(path: Path, raw: bytes) -> Any:
    """Parse ``raw`` by ``path``'s suffix; a ValueError names the file, line and column of a syntax error."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"{path}: a config file must end in .toml, .yaml, .yml or .json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = len(raw[raw.rfind(b"\n", 0, exc.start) + 1: exc.start].decode("utf-8", errors="replace")) + 1
        raise ValueError(f"{path}: line {line}, column {column}: not UTF-8 text (byte "
                         f"0x{raw[exc.start]:02x} at offset {exc.start})") from None
    text = text.removeprefix("\ufeff")
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:  # its message ends in "(at line L, column C)"
            raise ValueError(f"{path}: invalid TOML: {exc}") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}") from None
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass: builds plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ValueError(f"{path}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None


def load_config(path: str | Path, *, trust_backbone: bool | str = False) -> TrainConfig:
    """Read a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON (``.json``) file into a TrainConfig.

    A file whose ``backbone`` is an import path ``package.module:factory`` is refused unless
    ``trust_backbone`` allows it: validating it imports that module, which runs its code, and a config
    file (a run's ``config.json``) may come from anyone.

    Parameters
    ----------
    path : str or Path
        The file (its suffix selects the parser), or the name of a packaged config (``mnist1d_lpc``).
    trust_backbone : bool or str, default False
        True: import any backbone path the file names; a string: only that import path (the one the
        user typed, ``--backbone PATH``); False: none.

    Returns
    -------
    TrainConfig

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    ValueError
        Naming the file: a syntax error (with its line and column), text that is not UTF-8, content that
        is not a mapping, an unknown key, an import path not trusted, or (:class:`ConfigError`) an invalid
        value.
    """
    path = resolve_config(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file does not exist" if not path.exists()
                                else f"{path}: is not a file")
    data = _parse(path, path.read_bytes())
    if data is None:  # an empty YAML file
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a mapping of keys to values, got {type(data).__name__}")
    check_keys(data, source=str(path))
    backbone = data.get("backbone")
    if isinstance(backbone, str) and _is_import_path(backbone.strip()) and trust_backbone is not True \
            and trust_backbone != backbone.strip():
        given = f" (not the {trust_backbone!r} given)" if isinstance(trust_backbone, str) else ""
        raise ValueError(f"{path}: backbone {backbone.strip()!r} is an import path{given}; importing it runs that "
                         f"module's code, so a config file does not import it by itself: give the same path "
                         f"on the command line (--backbone {backbone.strip()}) or pass --trust-backbone "
                         f"(Python: trust_backbone=True)")
    try:
        return TrainConfig(**data)
    except ConfigError as exc:
        raise exc.located(source=str(path)) from None


def data_root_option(dataset: str) -> str:
    """The dataset option ``--data-root`` sets: ``path`` for ``npz`` (a file), ``root`` otherwise (a directory)."""
    return "path" if dataset == "npz" else "root"


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (value as JSON when it parses, else a string), e.g. ``gamma_options={"factor":1.1}``."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value
