"""The error type of bad usage and bad input.

`vae` answers a `UserError` with its message and exit code 2 (0: done; 1: failure, e.g.
a server that cannot be reached). Every module raises a subclass that says where the
error belongs (`ConfigError`, `DataError`, `WorkdirError`, `EncodeError`, ...), and its
message says what was wrong and what to do.
"""


class UserError(Exception):
    """Bad usage or bad input: the message says what was wrong and what to do."""


# Exit codes of the `vae` command line.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
