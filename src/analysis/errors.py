"""Exceptions for bad input: each names the file, the row and the column, and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike


@dataclass(frozen=True)
class Problem:
    """One problem found in an input file.

    Parameters
    ----------
    file : str
        The file the problem is in.
    message : str
        What is wrong and how to fix it.
    row : int, optional
        Line number in the file as a spreadsheet or editor shows it (the header is line 1).
    column : str, optional
        Column name.
    """

    file: str
    message: str
    row: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"line {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        return f"{', '.join(where)}: {self.message}"


class InputError(ValueError):
    """Bad input that the user must fix; the message says where and how.

    The command line prints the message (no traceback) and exits with status 2.
    """

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, (str, Problem)):
            problems = [problems] if isinstance(problems, Problem) else [Problem("<input>", problems)]
        self.problems: list[Problem] = list(problems)
        n = len(self.problems)
        head = "1 problem in the input" if n == 1 else f"{n} problems in the input"
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}:\n{body}")


class SampleSheetError(InputError):
    """The sample sheet breaks the contract in DESIGN.md."""


class ImageReadError(InputError):
    """An image file cannot be read, or lacks what the analysis needs."""

    @classmethod
    def for_file(cls, path: str | PathLike[str], message: str) -> "ImageReadError":
        """Build the error for one file."""
        return cls([Problem(str(path), message)])
