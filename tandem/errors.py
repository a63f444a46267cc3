"""User-facing errors: the CLI prints their message as one paragraph and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (config, data file, reward spec): no traceback, exit code 2."""
