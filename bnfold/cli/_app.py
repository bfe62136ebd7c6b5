"""The typer application every command module registers on."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup


def _click_error(name: str) -> type[Exception]:
    """click's exception class ``name``, found through typer's own ``BadParameter`` (typer may
    vendor click, so ``import click`` is not the same class)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def _message(exc: Exception) -> str:
    """click's message for ``exc`` on one line."""
    return " ".join(str(getattr(exc, "format_message", exc.__str__)()).split())


def usage_line(exc: Exception) -> str:
    """The one line for a click usage error: ``bnfold: error: ... (see 'bnfold X --help')``."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "bnfold"
    return f"bnfold: error: {_message(exc)} (see '{command} --help')"


class OneLineErrors(TyperGroup):
    """A usage error (unknown option, bad value, missing argument) is one line on stderr with
    exit 2, as every other bad input is; click would draw a box of five lines."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **kwargs: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **kwargs)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **kwargs)
        except _click_error("UsageError") as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `bnfold`: the help, as click
                return super().main(
                    args, prog_name, complete_var, True, windows_expand_args, **kwargs
                )
            print(usage_line(exc), file=sys.stderr)
            sys.exit(2)
        except _click_error("ClickException") as exc:
            print(f"bnfold: error: {_message(exc)}", file=sys.stderr)
            sys.exit(getattr(exc, "exit_code", 1))
        except typer.Abort:
            print("bnfold: error: aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="bnfold",
    help="Fold BatchNormalization into neighbouring linear layers of ONNX models, and prove it.",
    cls=OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
