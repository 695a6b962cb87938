"""Command-line options made from config fields, so each option is written once, in its config.

`option(ClusterConfig, "heads")` is the `Annotated[type, typer.Option]` of that field: its type,
its description as the help, its default as the option's. Used as a parameter's annotation,
with no `= default` (the default travels in the annotation; `with_defaults` puts it in the
signature typer reads):

    @command_of(app)
    def cluster(heads: option(ClusterConfig, "heads"), ...):
        config = settings(ClusterConfig, locals())
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel

from fusc_lib.config import default_of
from fusc_lib.reporting import warn

_FIELD = object()  # "the field's default"


class _Default:
    """The default an option's annotation carries (in `Annotated`, typer would read a default
    given there as a flag name); `with_defaults` makes it the parameter's default."""

    def __init__(self, value: Any):
        self.value = value


def with_defaults(command: Callable) -> Callable:
    """`command`, its parameters given the defaults their annotations carry, as typer reads a
    signature (keyword-only: typer passes every value by name)."""
    signature = inspect.signature(command)
    parameters = [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY, default=next(
        (item.value for item in getattr(parameter.annotation, "__metadata__", ())
         if isinstance(item, _Default)), parameter.default))
        for parameter in signature.parameters.values()]
    command.__signature__ = signature.replace(parameters=parameters)
    return command


def command_of(app: typer.Typer, name: str | None = None) -> Callable[[Callable], Callable]:
    """A decorator that makes a function `app`'s command `name` (default: the function's name,
    as typer derives it): its parameters take the defaults their annotations carry
    (`with_defaults`), and its docstring is the `--help` text with each paragraph's line breaks
    removed, so the terminal wraps it (typer's rich help keeps the source's line breaks)."""
    return lambda function: app.command(name, help=_reflowed(function.__doc__))(
        with_defaults(function))


def _reflowed(docstring: str | None) -> str | None:
    """`docstring` dedented, each paragraph on one line."""
    if not docstring:
        return docstring
    return "\n\n".join(" ".join(paragraph.split("\n"))
                        for paragraph in inspect.cleandoc(docstring).split("\n\n"))


def option(config: type[BaseModel], field: str, *flags: str, default: Any = _FIELD,
           shown: str | None = None, as_type: Any = None, argument: bool = False,
           required: bool = False, **typer_options: Any) -> Any:
    """`Annotated[type, typer.Option]` of `config`'s `field`; a dotted field ("cluster.epochs")
    is a field of a stage of `config`, with the default `config` gives that stage.

    `default`: the value when the option is not given, where not the field's (None: not
    given, the config decides); `--help` then shows the field's default, or `shown`.
    `as_type`: the command-line type, where not the field's. `argument`: positional.
    `required`: no default. Further keywords go to typer (`help` where the option means more
    than the field; flags are named after the parameter unless `flags` are given).
    """
    info, value = _field(config, field)
    if not info.description:
        raise ValueError(f"{config.__name__}.{field} has no description to serve as its help")
    if default is not _FIELD:
        shown = str(value) if shown is None and value is not None else shown
        typer_options.setdefault("show_default", shown or False)
        value = default
    parameter = typer.Argument if argument else typer.Option
    return Annotated[as_type or _command_line_type(info.annotation),
                     parameter(*flags, **{"help": info.description, **typer_options}),
                     *([] if required else [_Default(value)])]


def deprecated(flag: str, instead: str) -> Any:
    """A hidden option kept for one release: it warns when used; the command takes its value
    where `instead` is not given."""
    def warn_when_used(value: str | None) -> str | None:
        if value is not None:
            warn(f"{flag} is deprecated: use {instead}")
        return value

    return Annotated[str | None, typer.Option(flag, hidden=True, help=f"Deprecated: use "
                                              f"{instead}.", callback=warn_when_used),
                     _Default(None)]


def command_option(annotation: Any, default: Any, help: str, *flags: str,
                   **typer_options: Any) -> Any:
    """An option of the command line alone (no stage config has it), made like `option`'s."""
    return Annotated[annotation, typer.Option(*flags, help=help, **typer_options),
                     _Default(default)]


def given(config: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """The values among `values` (a command's `locals()`) that name a field of `config`, less
    those not given (None)."""
    return {name: value for name, value in values.items()
            if name in config.model_fields and value is not None}


def settings(config: type[BaseModel], values: dict[str, Any], **fixed: Any) -> Any:
    """`config` from the command's options of the same names, and `fixed`."""
    return config(**{**given(config, values), **fixed})


def _field(config: type[BaseModel], field: str) -> tuple[Any, Any]:
    """(FieldInfo, default) of a field, or of a stage's field ("stage.field")."""
    stage, _, name = field.rpartition(".")
    if not stage:
        return config.model_fields[field], default_of(config, field)
    defaults = default_of(config, stage)
    return type(defaults).model_fields[name], getattr(defaults, name)


def _command_line_type(annotation: Any) -> Any:
    """The field's type as typer reads it: a Literal becomes str (pydantic checks the value and
    names the field when it is wrong)."""
    if get_origin(annotation) is Literal:
        return str
    arguments = get_args(annotation)
    if type(None) in arguments and any(get_origin(a) is Literal for a in arguments):
        return str | None
    return annotation

