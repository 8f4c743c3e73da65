"""The one exception type that entry scripts turn into a clean message and a non-zero exit."""


class UserError(Exception):
    """A problem the user can fix (bad name, missing file, offline weights); printed without traceback."""
