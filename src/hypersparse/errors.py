"""The base of every error a user can fix (bad config, data, checkpoint, ...); torch-free.

The CLI prints these as one ``hypersparse: error: ...`` line and exits with the error's
``exit_code``.
"""

from typing import ClassVar


class UserError(Exception):
    """A problem with the input that the message names, together with its fix."""

    exit_code: ClassVar[int] = 2  # the CLI's exit status for this error
