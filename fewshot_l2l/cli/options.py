"""Command-line options built from the declarations of a configuration's settings (:mod:`fewshot_l2l.settings`):
``--n-way`` for ``n_way``, its checker as the option's type (a bad value is a usage error naming the flag), its
help, one argument group per settings group; and the configuration made back from the parsed options."""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Callable, Iterable

from ..settings import Declaration, Flag, FloatRange, Floats, declaration, flag_of

def _argument_type(spec: Declaration, owner: str, name: str) -> Callable[[str], Any]:
    """The argparse ``type`` of a setting: its text parsed and checked, a refusal being a usage error."""
    if spec.cli_type is not None:
        return spec.cli_type

    def parse(text: str) -> Any:
        try:
            value = spec.check.parse(text)
            if isinstance(spec.check, (FloatRange, Floats)):  # one text per item; the whole is checked later
                if isinstance(spec.check, Floats) and not value >= spec.check.minimum:
                    raise ValueError(f"must be a finite number >= {spec.check.minimum:g}, got {text!r}")
                if not math.isfinite(value):
                    raise ValueError(f"must be a finite number, got {text!r}")
                return value
            spec.check(owner, name, value)
        except ValueError as error:
            # "OWNER: name must be ..." -> "must be ..." (argparse puts "argument --flag:" in front)
            message = str(error)
            prefix = f"{owner}: {name} "
            raise argparse.ArgumentTypeError(message[len(prefix):] if message.startswith(prefix) else message) from None
        return value

    parse.__name__ = name
    return parse


def add_arguments(parser: argparse.ArgumentParser, config_class: type, *, exclude: Iterable[str] = (),
                  groups: dict[type, str] | None = None) -> None:
    """Add an option for every declared setting of ``config_class`` (except ``exclude``) to ``parser``.

    Every option defaults to ``None`` ("not given"), so that :func:`config_from_arguments` leaves the configuration's
    own default, which may depend on other settings or on the method, to the configuration. Switches
    (:class:`Flag`) are ``store_true`` when their default is ``False``, ``store_false``-style ``--no-NAME`` when it
    is ``True``. ``groups`` titles the argument groups (by the class declaring the fields; default: the class's
    ``TITLE``), shown in the order of the classes' ``HELP_ORDER`` (default 50).
    """
    excluded = set(exclude)
    owner = config_class.__name__
    options = [f for f in fields(config_class) if flag_of(f) is not None and f.name not in excluded]
    declaring = {f.name: _declaring_class(config_class, f.name) for f in options}
    title = {klass: (groups or {}).get(klass, getattr(klass, "TITLE", klass.__name__)) for klass in declaring.values()}
    titled: dict[str, argparse._ArgumentGroup] = {}
    # One argument group per title of settings groups, in the groups' HELP_ORDER (then the order of their fields).
    for klass in sorted(dict.fromkeys(declaring.values()), key=lambda klass: getattr(klass, "HELP_ORDER", 50)):
        if title[klass] not in titled:
            titled[title[klass]] = parser.add_argument_group(title[klass])
    for f in options:
        flag, spec, group = flag_of(f), declaration(f), titled[title[declaring[f.name]]]
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        # "%(default).0s" formats the option's None default as nothing: it keeps ArgumentDefaultsHelpFormatter (the
        # commands' own options show their defaults) from adding "(default: None)"; the setting's default is said here.
        help_text = spec.help.replace("%", "%%") + "%(default).0s"
        if isinstance(spec.check, Flag):
            if default:
                group.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", default=None, help=help_text)
            else:
                group.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
            continue
        if default is not None and "default" not in spec.help:
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            help_text = f"{help_text} (default: {shown})"
        group.add_argument(flag, dest=f.name, type=_argument_type(spec, owner, f.name), default=None, help=help_text,
                           **spec.check.argparse_options())


def _declaring_class(config_class: type, name: str) -> type:
    """The class of ``config_class``'s MRO that declares field ``name`` (its settings group)."""
    for klass in reversed(config_class.__mro__):
        if name in vars(klass).get("__annotations__", {}) and is_dataclass(klass):
            return klass
    return config_class


def given_settings(namespace: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The settings of ``config_class`` given on the command line (those whose option was not left at ``None``)."""
    names = {f.name for f in fields(config_class) if flag_of(f) is not None}
    return {name: value for name, value in vars(namespace).items()
            if name in names and value is not None}


def config_from_arguments(parser: argparse.ArgumentParser, namespace: argparse.Namespace, config_class: type,
                          **extra: Any) -> Any:
    """``config_class`` of the settings given in ``namespace`` (and ``extra``); a combination it refuses is a usage
    error of ``parser`` (exit status 2, the message naming the setting)."""
    values = given_settings(namespace, config_class)
    values.update(extra)
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    try:
        return config_class(**values)
    except ValueError as error:
        parser.error(str(error))
    raise AssertionError("unreachable")  # parser.error exits
