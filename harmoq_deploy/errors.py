"""The one exception type that reaches the user as a one-line message."""


class HarmoqError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), short enough for a one-line error."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
