"""The exception type for problems the user can fix (bad input, missing files, bad clicks)."""


class RenalSegError(Exception):
    """A user-facing error: its message is one specific line, shown without a traceback."""
