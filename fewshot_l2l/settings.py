"""Settings declared once: each field of a configuration with its type, bounds and help, checked by one set of
checkers, and the command lines built from the same declarations.

A configuration is a dataclass composed of small groups of settings (the episodes, the learner, the training
schedule, the run, a method's own options, ...), each group a :class:`Settings` dataclass whose fields are made by
:func:`setting`::

    @dataclass
    class RunSettings(Settings):
        seed: int = setting(0, Int(0, SEED_MAX), "seed of every random draw of the run")

    @dataclass
    class MyConfig(RunSettings, OtherGroup):   # composed: its fields are those of every group
        ...

Constructing a :class:`Settings` checks every declared field with its checker (``__post_init__``), then calls
:meth:`Settings.resolve` for what depends on several fields (defaults computed from others, combinations a
setting refuses). Errors are ``ValueError("OWNER: NAME must be ..., got VALUE")``, ``OWNER`` the configuration's
class. :func:`add_arguments` builds ``argparse`` options from the same declarations (``--n-way`` for ``n_way``,
one argument group per settings group, the checker as the argument's type, so that a bad value is a usage error
naming the flag), and :func:`config_from_arguments` makes the configuration from the parsed namespace. A
configuration is stored (checkpoints, result files) as the flat dict :func:`dataclasses.asdict` gives; its
:meth:`Settings.from_dict` reads one back, keeping only the fields the class has.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import Field, dataclass, field, fields
from typing import Any, Callable, Sequence, TypeVar

# Seeds pass through sums such as seed * 1_000_003 + iteration into torch.Generator.manual_seed, which
# takes at most 2**64 - 1; 32 bits keep every such sum in range.
SEED_MAX = 2**32 - 1
# Counts and sizes become tensor dimensions and loop bounds: above 2**31 - 1 none is meaningful, and
# (far) larger ones would overflow torch's 64-bit sizes deep inside a run instead of failing there.
INT_MAX = 2**31 - 1


def check_int(owner: str, name: str, value: Any, minimum: int, maximum: int = INT_MAX) -> None:
    """Raise ``ValueError`` ("owner: name must be an integer in [minimum, maximum], got ...") unless ``value``
    is an ``int`` (not a ``bool``, not a float such as 1.5 or 1.0) in that range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not minimum <= value <= maximum:
        raise ValueError(f"{owner}: {name} must be an integer in [{minimum}, {maximum}], got {value!r}")


# --- checkers: a value in, the value (normalized) out, or a ValueError naming the setting


class Check:
    """How one setting's value is checked (:meth:`__call__`) and read from a command line (:meth:`parse`)."""

    def __call__(self, owner: str, name: str, value: Any) -> Any:
        """The value, normalized (e.g. a list to a tuple); ``ValueError`` naming ``owner: name`` if it is refused."""
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        """The value of the command-line text ``text`` (before :meth:`__call__` checks it)."""
        return text

    def argparse_options(self) -> dict:
        """Options of ``add_argument`` beyond ``type`` (``choices``, ``nargs``, ``action``)."""
        return {}


@dataclass(frozen=True)
class Int(Check):
    """An ``int`` (not a ``bool`` or a float) in ``[minimum, maximum]``."""

    minimum: int = 1
    maximum: int = INT_MAX

    def __call__(self, owner, name, value):
        check_int(owner, name, value, self.minimum, self.maximum)
        return int(value)

    def parse(self, text):
        try:
            return int(text)
        except ValueError:  # also Python's limit on the digits of an int read from a string
            raise ValueError(f"expected an integer, got {text!r}") from None


@dataclass(frozen=True)
class Float(Check):
    """A finite number ``> minimum`` (``>= minimum`` with ``inclusive``); NaN and infinities are refused."""

    minimum: float = 0.0
    inclusive: bool = False

    def describe(self) -> str:
        if self.minimum == 0.0 and not self.inclusive:
            return "a positive finite number"
        return f"a finite number {'>=' if self.inclusive else '>'} {self.minimum:g}"

    def __call__(self, owner, name, value):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        # "not x > m" rather than "x <= m": NaN compares False with everything.
        if not ok or not (value >= self.minimum if self.inclusive else value > self.minimum):
            raise ValueError(f"{owner}: {name} must be {self.describe()}, got {value!r}")
        return float(value)

    def parse(self, text):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None


@dataclass(frozen=True)
class Choice(Check):
    """One of ``choices`` (strings)."""

    choices: tuple[str, ...]

    def __call__(self, owner, name, value):
        if value not in self.choices:
            raise ValueError(f"{owner}: {name} must be one of {self.choices}, got {value!r}")
        return value

    def argparse_options(self):
        return {"choices": self.choices}


@dataclass(frozen=True)
class Flag(Check):
    """``True`` or ``False`` (nothing else: not ``1``, not ``"yes"``); on the command line a switch."""

    def __call__(self, owner, name, value):
        if not isinstance(value, bool):
            raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
        return value


@dataclass(frozen=True)
class Text(Check):
    """A string (a path, a device name, ...)."""

    def __call__(self, owner, name, value):
        if not isinstance(value, str):
            raise ValueError(f"{owner}: {name} must be a string, got {value!r}")
        return value


@dataclass(frozen=True)
class FloatRange(Check):
    """A range ``(low, high)`` of finite numbers with ``low < high``, stored as a tuple of floats."""

    def __call__(self, owner, name, value):
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{owner}: {name} must be a range (low, high), got {value!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"{owner}: {name} must be a finite range (low < high), got {(low, high)}")
        return (low, high)

    parse = Float.parse

    def argparse_options(self):
        return {"nargs": 2, "metavar": ("LOW", "HIGH")}


@dataclass(frozen=True)
class Floats(Check):
    """A sequence of finite numbers ``>= minimum``, stored as a tuple."""

    minimum: float = 0.0

    def __call__(self, owner, name, value):
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v >= self.minimum
            for v in value)
        if not ok:
            raise ValueError(f"{owner}: {name} must be finite numbers >= {self.minimum:g}, got {value!r}")
        return tuple(float(v) if isinstance(v, float) else v for v in value)

    parse = Float.parse

    def argparse_options(self):
        return {"nargs": "+", "metavar": "W"}


@dataclass(frozen=True)
class Mapping(Check):
    """A dict of keyword arguments (e.g. a problem's options); not a command-line option of its own."""

    def __call__(self, owner, name, value):
        if not isinstance(value, dict):
            raise ValueError(f"{owner}: {name} must be a dict, got {value!r}")
        return value


@dataclass(frozen=True)
class Declaration:
    """What :func:`setting` attaches to a dataclass field."""

    check: Check
    help: str
    optional: bool  # None is a value: "off", "all", or "the method's / computed default" (said in help)
    resumable: bool  # may change when a run is resumed (budgets, intervals, where and how fast it runs)
    flag: str | None  # the command-line option; None: not on the command line
    cli_type: Callable[[str], Any] | None  # an argparse type of its own (e.g. a device check), else the checker's


def setting(default: Any, check: Check, help: str, *, optional: bool = False, resumable: bool = False,
            flag: str | None = "", cli_type: Callable[[str], Any] | None = None,
            default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field declared with its checker and help: the one place a setting is stated.

    ``optional``: ``None`` is allowed (and means what ``help`` says). ``resumable``: the setting may differ when a
    run is resumed. ``flag``: the command-line option (default ``--name-with-dashes``; ``None``: none).
    """
    declaration = Declaration(check, help, optional, resumable, flag, cli_type)
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"setting": declaration})
    return field(default=default, metadata={"setting": declaration})


def default_of(group: type, name: str, default: Any) -> Any:
    """A configuration's own default for the setting ``name`` that ``group`` declares: the same declaration (checker,
    help, bounds), another default, e.g. ``meta_batch: int = default_of(TrainingSettings, "meta_batch", 32)``."""
    declared = {f.name: f for f in fields(group)}
    if name not in declared:
        raise TypeError(f"default_of: {group.__name__} declares no setting {name!r}")
    return field(default=default, metadata=declared[name].metadata)


def declaration(f: Field) -> Declaration | None:
    """The :class:`Declaration` of a dataclass field, ``None`` for an undeclared one."""
    return f.metadata.get("setting")


S = TypeVar("S", bound="Settings")


class Settings:
    """Base of every group of settings and of the configurations composed of them (see the module docstring)."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for f in fields(self):
            spec = declaration(f)
            value = getattr(self, f.name)
            if spec is None or (value is None and spec.optional):
                continue
            try:
                object.__setattr__(self, f.name, spec.check(owner, f.name, value))
            except ValueError as error:
                if not spec.optional:
                    raise
                raise ValueError(str(error).replace(", got ", " (or None), got ", 1)) from None
        self.resolve()

    def resolve(self) -> None:
        """Defaults that depend on other fields, and checks across fields (subclasses extend it, calling ``super()``)."""

    def refuse(self, message: str) -> None:
        """Raise the ``ValueError`` of a refused combination, prefixed with the configuration's name."""
        raise ValueError(f"{type(self).__name__}: {message}")

    @classmethod
    def from_dict(cls: type[S], values: dict) -> S:
        """The configuration stored as ``values`` (a flat dict); keys the class does not have are ignored, and a field
        missing from ``values`` (older code) takes its default."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    @classmethod
    def resumable_fields(cls) -> set[str]:
        """The settings that may change when a run is resumed (declared ``resumable``)."""
        return {f.name for f in fields(cls) if declaration(f) is not None and declaration(f).resumable}

    def section(self, group: type[S]) -> S:
        """This configuration's settings of ``group`` (one of the groups it is composed of) as a ``group`` object."""
        return group(**{f.name: getattr(self, f.name) for f in fields(group)})


# --- reading a setting from text


def flag_of(f: Field) -> str | None:
    spec = declaration(f)
    if spec is None or spec.flag is None:
        return None
    return spec.flag or "--" + f.name.replace("_", "-")


def parse_assignment(assignment: str, config_class: type, what: str, refused: Sequence[str] = ()) -> tuple[str, Any]:
    """``"NAME=VALUE"`` as ``(name, value)`` for a setting of ``config_class``: ``VALUE`` read as the command line
    reads that setting's option (``4``, ``3e-3``, ``cosine``; ``True``/``False`` for switches; ``4,5`` for ranges
    and lists). ``what`` names the option in errors (e.g. ``--set maml``); ``refused``: names it may not set."""
    name, equals, text = assignment.partition("=")
    name = name.strip().replace("-", "_")
    if not equals or not name or not text:
        raise ValueError(f"{what}: {assignment!r} is not NAME=VALUE (e.g. meta_batch=1)")
    declared = {f.name: f for f in fields(config_class) if declaration(f) is not None and flag_of(f) is not None}
    own = sorted(set(declared) - set(refused))
    if name not in own:
        raise ValueError(f"{what}: {name!r} is not a setting of its own; choose from {', '.join(own)}")
    spec = declaration(declared[name])
    text = text.strip()
    if spec.optional and text == "None":
        return name, None
    try:
        if isinstance(spec.check, Flag):
            if text not in ("True", "False", "true", "false"):
                raise ValueError(f"expected True or False, got {text!r}")
            return name, text in ("True", "true")
        if isinstance(spec.check, (FloatRange, Floats)):
            return name, tuple(spec.check.parse(part) for part in text.strip("()[]").split(",") if part.strip())
        return name, spec.check.parse(text)
    except ValueError as error:
        raise ValueError(f"{what}: {assignment!r}: {error}") from None
