"""The one exception type that entry scripts turn into a clean message and a non-zero exit."""


class UserError(Exception):
    """A problem the user can fix (bad name, missing file, offline weights); printed without traceback."""


class Missing(UserError):
    """A dataset or pretrained weights that are not on this machine and could not be fetched: `python -m
    tools.reproduce` skips a preset over it, saying what is missing and where to get it."""
