"""User-facing errors: one line each, naming the key that is wrong."""
from __future__ import annotations

import difflib
from dataclasses import dataclass

MAX_MESSAGE = 500


@dataclass
class Problem:
    key: str  # full config key, e.g. "stages.quantize.bits"
    message: str

    def __str__(self) -> str:
        message = self.message
        if len(message) > MAX_MESSAGE:  # a message echoing a 5,000-character value stays one short line
            message = f"{message[:MAX_MESSAGE - 160]} ...({len(message)} chars)... {message[-120:]}"
        return f"{self.key}: {message}" if self.key else message


class UserError(Exception):
    """A mistake in the user's input. The CLI prints it as one line per problem, no traceback."""

    def __init__(self, problems: list[Problem] | Problem | str, key: str = ""):
        if isinstance(problems, str):
            problems = [Problem(key, problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = problems
        super().__init__()

    def __str__(self) -> str:  # from the problems as they are now: the runner prefixes stage keys later
        return "\n".join(str(p) for p in self.problems)


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def short(value, limit: int = 80) -> str:
    """repr(value), cut to about `limit` characters, for messages that echo what the user gave."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"
