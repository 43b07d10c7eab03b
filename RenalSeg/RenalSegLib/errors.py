"""The exception types: problems the user can fix (bad input, missing files, bad clicks), and work stopped on request."""


class RenalSegError(Exception):
    """A user-facing error: its message is one specific line, shown without a traceback."""


class Cancelled(Exception):
    """Raised by long work (``inference.auto_segment``, ``measure.measure``) when its ``cancel`` event is set."""
