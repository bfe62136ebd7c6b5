"""Errors bnfold raises; each maps to a CLI exit code."""

from __future__ import annotations

import os

# What an error message names: a file path, another label ("<bytes>"), or nothing
PathLabel = str | os.PathLike | None


class BnfoldError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with; ``cli_message``, when set, is the
    message for the command line (the exception's own speaks of the Python API)."""

    exit_code = 2
    cli_message: str | None = None


class BadInputError(BnfoldError):
    """The input (file, option or model content) is unusable. Exit code 2; nothing is written."""

    exit_code = 2

    def __init__(self, path: PathLabel, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class UsageError(BadInputError):
    """A bad combination of options. ``cli``: the message in command-line terms, where the
    problem's own text speaks of the Python API."""

    def __init__(self, problem: str, *, cli: str | None = None) -> None:
        super().__init__(None, problem)
        self.cli_message = cli


class VerificationError(BnfoldError):
    """Outputs differ beyond tolerance. Exit code 1. ``result`` holds what was compared."""

    exit_code = 1

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result
