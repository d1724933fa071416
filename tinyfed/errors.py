"""One exception root for everything a user can get wrong.

Every error carries *what* is wrong and *what to do*, so the CLI's single error boundary can
print one actionable line (and the traceback only with ``-v``).
"""

from __future__ import annotations

from dataclasses import dataclass


class TinyfedError(Exception):
    """Root of all tinyfed errors.

    ``problem`` says what is wrong, ``fix`` what the user should do, ``source`` names the
    file, board or model concerned.
    """

    exit_code: int = 2

    def __init__(self, problem: str, *, fix: str | None = None, source: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        self.source = source
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = f"{self.source}: " if self.source else ""
        stop = "" if self.problem.endswith(".") else "."
        tail = f" Fix: {self.fix}" if self.fix else ""
        return f"{where}{self.problem}{stop}{tail}"

    def to_dict(self) -> dict[str, object]:
        return {"error": type(self).__name__, "problem": self.problem, "fix": self.fix, "source": self.source}


class WriteError(TinyfedError):
    """A file tinyfed writes could not be written (a full disk, no permission): names the file."""


class BoardError(TinyfedError):
    """A board profile or fleet file is missing or invalid."""


@dataclass(frozen=True)
class FieldIssue:
    """One problem at one key of a data file."""

    key: str
    problem: str
    fix: str | None = None

    def render(self) -> str:
        tail = f" ({self.fix})" if self.fix else ""
        return f"{self.key}: {self.problem}{tail}"


class DataFileError(BoardError):
    """A TOML data file with one or more invalid keys; all are reported at once."""

    def __init__(self, path: str, issues: list[FieldIssue]) -> None:
        self.path = path
        self.issues = list(issues)
        listing = "; ".join(i.render() for i in self.issues)
        on_command_line = path == "the command line"
        super().__init__(
            f"{len(self.issues)} problem(s): {listing}",
            fix=("change the option as suggested" if on_command_line else "edit the file as suggested")
            + " and run the command again",
            source=path,
        )

    def to_dict(self) -> dict[str, object]:
        d = super().to_dict()
        d["issues"] = [{"key": i.key, "problem": i.problem, "fix": i.fix} for i in self.issues]
        return d


class ModelError(TinyfedError):
    """A model file is unreadable, not int8, or uses ops the firmware cannot run."""


class DatasetError(TinyfedError):
    """A dataset that should ship offline is missing or malformed."""


class PlanError(TinyfedError):
    """The planner cannot produce a plan (other than 'does not fit', which is a result)."""

