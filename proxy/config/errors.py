"""Config errors: every problem found in a file, each with its position.

Every problem is collected (not just the first) and reported as
`FILE:LINE:COL: yaml.path: message`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config file, with its position when known."""

    file: str
    line: int | None
    col: int | None
    path: str
    message: str

    def render(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.col}"
        line = f"{where}: {self.path or '(document)'}: {self.message}"
        # one problem, one line: a key or value holding a line break cannot fake another
        return line.replace("\r", "\\r").replace("\n", "\\n")


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists every error found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(p.render() for p in problems))
        self.problems = tuple(problems)
