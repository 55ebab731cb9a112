"""App (cli_errors): consumes the exceptions, warnings and output paths of a CLI command, produces one-line
``error:``/``warning:`` reports with exit code 2 and refusals of outputs that would clobber an input.

Every subcommand is registered through :func:`command`: user errors (``ValueError``, ``OSError``, ``KeyError``) and
click's usage errors become one ``error: ...`` line on stderr and exit code 2 (``--debug`` re-raises them); warnings
raised by this package become ``warning: ...`` lines.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import typer
from typer.core import TyperCommand

from commandv_interp.validation import MAX_ALPHA, check_alpha

__all__ = ["USER_ERRORS", "MAX_ALPHA", "command", "one_line", "out_file", "out_folder", "alpha_option"]

USER_ERRORS = (ValueError, OSError, KeyError)  # OSError: missing files, permissions, a full disk


def one_line(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror + (f": {error.filename!r}" if error.filename else "")
    return " ".join(str(text).split()) or type(error).__name__


_UsageError = typer.BadParameter.__mro__[1]  # click's UsageError, as this typer vendors it (typer._click)


class _OneLineUsageError(_UsageError):
    """A bad option or argument, shown as one ``error:`` line (exit code 2) instead of usage and a box."""

    def show(self, file=None) -> None:
        typer.echo(f"error: {' '.join(self.format_message().split())}; see --help", err=True)


class _OneLineCommand(TyperCommand):
    def parse_args(self, ctx, args):  # args: any sequence of str (click passes lists or tuples)
        try:
            return super().parse_args(ctx, args)
        except _UsageError as error:
            if "--debug" in args:
                raise
            raise _OneLineUsageError(error.format_message(), ctx) from None


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Ours as ``warning: <one line>``; other libraries' as they would have shown."""
    for w in caught:
        if "commandv_interp" in str(w.filename) or w.category.__name__ == "DegenerateDataWarning":
            typer.echo(f"warning: {' '.join(str(w.message).split())}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def command(group: typer.Typer, name: str):
    """Register ``fn`` as subcommand ``name``; user errors become ``error: <one line>`` and exit code 2; our warnings
    become ``warning: <one line>`` lines before it."""
    def register(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with warnings.catch_warnings(record=True) as caught:
                try:
                    result = fn(*args, **kwargs)
                except USER_ERRORS as error:
                    if kwargs.get("debug"):
                        raise
                    failed = error
                else:
                    failed = None
            _show_warnings(caught)
            if failed is not None:
                typer.echo(f"error: {one_line(failed)}", err=True)
                raise typer.Exit(2) from None
            if isinstance(kwargs.get("out"), Path) and kwargs["out"].is_dir():
                from commandv_interp.app.out_paths import mark_out

                mark_out(kwargs["out"], name)  # a re-run may write there again
            return result
        return group.command(name, cls=_OneLineCommand)(run)
    return register


def out_file(path: Path, *inputs: object, option: str = "--out", zoo_root: Path | None = None) -> Path:
    """``--out`` file: refused when empty, a folder, under a file, or equal to or inside one of the command's inputs
    (zoo specs stand for their zoo folders; :func:`~commandv_interp.app.out_paths.check_out`)."""
    from commandv_interp.app.out_paths import check_out

    return check_out(path, inputs, folder=False, command="", zoo_root=zoo_root, option=option)


def out_folder(path: Path, *inputs: object, command: str, option: str = "--out",
               zoo_root: Path | None = None) -> Path:
    """``--out`` folder: refused when empty, a file, under a file, equal to, inside or containing an input, or a
    non-empty folder that is not ``command``'s own earlier output
    (:func:`~commandv_interp.app.out_paths.check_out`)."""
    from commandv_interp.app.out_paths import check_out

    return check_out(path, inputs, folder=True, command=command, zoo_root=zoo_root, option=option)


def alpha_option(value: float, option: str = "--alpha") -> float:
    return check_alpha(value, option)
