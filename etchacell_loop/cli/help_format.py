"""How commands read in ``--help``: flags without a type, arguments in the usage line as plain names.

Why: the Typer this project runs on prints ``<bool>`` beside every flag (``--overwrite <bool>``
reads as if the flag took a value) and writes a required argument as ``{export}`` in the usage
line, which reads as a template placeholder. Every group and command of ``etchacell`` is declared
with these classes (``typer.Typer(cls=Group)``, ``app.command(cls=Command)``), so its flags show
no type and its usage line reads ``etchacell aggregate [OPTIONS] EXPORT``.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def plain_params(params: list[Any]) -> list[Any]:
    """The same parameters, each flag given an empty metavar (no ``<bool>``) and each argument an
    upper-case one (``EXPORT``), unless it was declared with its own."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
        elif isinstance(param, TyperArgument) and param.metavar is None and param.name:
            param.metavar = param.name.upper()
    return params


def usage_piece(argument: TyperArgument) -> str:
    """An argument as the usage line shows it: ``NAME``, ``[NAME]`` when optional, ``...`` when repeated."""
    name = argument.metavar or (argument.name or "").upper()
    shown = name if argument.required else f"[{name}]"
    return shown + ("..." if argument.nargs != 1 else "")


class Command(TyperCommand):
    """A command whose help shows flags without a type and arguments by plain name."""

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_params(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                pieces.append(usage_piece(param))
        return pieces


class Group(TyperGroup):
    """A command group whose own options (``--verbose``, ``--help``) show without a type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_params(super().get_params(ctx))
