"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class ClipmemError(Exception):
    """A problem with the user's input or files, stated so they can fix it."""
