"""Typed errors. The CLI prints any MultiKPIError as one line and exits with code 2;
every other exception is a bug and keeps its traceback."""
from __future__ import annotations


class MultiKPIError(Exception):
    """Base class of every error a user can cause and fix. The CLI exits with `exit_code`."""

    exit_code = 2


class ConfigError(MultiKPIError):
    """A configuration problem. Holds every problem found, reported together on one line."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        super().__init__(self._one_line())

    def _one_line(self) -> str:
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}"
        body = "; ".join(f"({i}) {p}" for i, p in enumerate(self.problems, 1))
        return f"{self.source}: {len(self.problems)} problems: {body}"


class DataError(MultiKPIError):
    """Input data that cannot be used as configured (missing file or column, bad values)."""


class ArtifactError(MultiKPIError):
    """A run directory that is incomplete, tampered with, or from another package version."""


class TrainingError(MultiKPIError):
    """Training that cannot go on (a non-finite loss, out of memory)."""


class ReportError(MultiKPIError):
    """`multikpi report` was pointed at something it cannot report on, or asked to write a non-HTML file."""


class PeerFailed(MultiKPIError):
    """Another process of a distributed run failed (its own one-line error says why); this one stops
    too instead of waiting for it. The CLI prints nothing more for it."""


class Interrupted(MultiKPIError):
    """A command stopped by SIGINT (exit 130) or SIGTERM (exit 143); the message says what was kept."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that cleanup runs as it does for Ctrl-C."""
