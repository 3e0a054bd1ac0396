"""The one exception type for user mistakes: the CLI prints its message on one line, without a traceback."""


class ZotuneError(Exception):
    """A problem the user can fix (bad name, missing file, malformed data, no network).

    The message must be one line that says what went wrong and what to do about it.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message without a final full stop (its type name if it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__
