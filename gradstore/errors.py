"""The one exception type for errors a user can cause, and the one warning type for what a
user should know but that does not stop the work."""


class GradstoreError(Exception):
    """Bad input or usage: the message names the bad value and the fix.

    The CLI prints it as one line on stderr and exits with status 2.
    """


class TableConflict(GradstoreError):
    """A table already holds results from other settings or data; ``--overwrite`` replaces it."""


class GradstoreNote(UserWarning):
    """Something the user should know that does not stop the work (e.g. a table that
    cannot be checked for damage); the CLI prints it as one line ``gradstore: note: ...``."""
