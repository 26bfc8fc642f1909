"""The one exception type for errors a user can cause."""


class GradstoreError(Exception):
    """Bad input or usage: the message names the bad value and the fix.

    The CLI prints it as one line on stderr and exits with status 2.
    """


class TableConflict(GradstoreError):
    """A table already holds results from other settings or data; ``--overwrite`` replaces it."""
