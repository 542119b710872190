"""The base of every error a user can fix (bad config, data, checkpoint, ...); torch-free.

The CLI prints these as one ``hypersparse: error: ...`` line and exits non-zero.
"""


class UserError(Exception):
    """A problem with the input that the message names, together with its fix."""
