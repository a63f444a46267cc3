"""User-facing errors: the CLI prints their message as one paragraph and exits with code 2."""

from __future__ import annotations

import importlib
import logging
import re

# Ray colours the remote frames it prints (`ray::Actor.method()` in cyan).
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The last line of a Python traceback that names a tandem exception: `tandem.x.YError: message`.
_RAISED = re.compile(r"^(tandem(?:\.\w+)+): ", re.MULTILINE)


class UserError(Exception):
    """Bad input from the user (config, data file, reward spec): no traceback, exit code 2."""


class JobError(Exception):
    """A job that cannot go on for a reason outside the user's input (a role that kept failing), with a
    message that says what failed and what to do next: no traceback, exit code 1."""


def find_user_error(err: BaseException | None) -> UserError | None:
    """The UserError behind `err`, wherever a tandem process raised it: `err` itself, an exception it
    was raised from (an ActorGroupError), the user exception of a Ray task error (whose own text is
    Ray's banner and the remote traceback), or the text of an actor that died raising it in its
    constructor (Ray keeps no exception object for that). None if there is none."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        cause = getattr(err, "cause", None)  # RayTaskError: the exception the remote code raised
        if isinstance(cause, BaseException):
            err = cause
            continue
        if isinstance(err, UserError):
            return err
        if getattr(err, "_actor_init_failed", False):  # Ray's ActorDiedError
            found = _raised_in_text(getattr(err, "error_msg", ""))
            if found is not None:
                return found
        err = err.__cause__  # `raise ... from`: only an explicit cause, not an error met in cleanup
    return None


def _raised_in_text(traceback_text: str) -> UserError | None:
    """The UserError (subclass included) a traceback's text, as Ray prints it (coloured), ends with,
    rebuilt from its message."""
    traceback_text = _ANSI.sub("", traceback_text)
    matches = list(_RAISED.finditer(traceback_text))
    if not matches:
        return None
    module, _, name = matches[-1].group(1).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    if not (isinstance(cls, type) and issubclass(cls, UserError)):
        return None
    return UserError(traceback_text[matches[-1].end() :].strip())


class _QuietUserErrors(logging.Filter):
    """Drops the log a Ray worker writes when an actor's constructor raised a UserError: Ray logs
    the whole remote traceback there and forwards it to the driver's console, where the CLI then
    prints the same error as its one paragraph."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _raised_in_text(record.getMessage()) is None


# At import, so in every process that can raise a UserError: Ray's worker logs creation-task
# errors on this logger ("Exception raised in creation task: ...").
logging.getLogger("ray._raylet").addFilter(_QuietUserErrors())
