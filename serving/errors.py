"""Errors of the serving side: a refused request with its gRPC code, gRPC codes by number,
and the one readable line of a TensorFlow error.

No TensorFlow import: a TensorFlow error is read through its `message` and `error_code`
attributes (TensorFlow's error codes are gRPC's numbers).
"""

from __future__ import annotations

import re

import grpc

from core.errors import UserError

_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
# Lines of a TensorFlow error message that say where, not what.
_NOISE_PREFIXES = ("Graph execution error", "Detected at", "<stack")
_FUNCTION_NODE = re.compile(r"\{\{[^}]*\}\}\s*")
_OP_SUFFIX = re.compile(r"\s*\[Op:\w+\].*$")


class RequestError(Exception):
    """A request the server refuses, with the gRPC code TF Serving would answer.

    Args:
        code: the gRPC status code.
        message: what was wrong (and what was expected).
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    """An INVALID_ARGUMENT `RequestError`."""
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def status_code(number: int) -> grpc.StatusCode | None:
    """The gRPC status code with this number (`google.rpc.Code`), or None if there is none.

    TensorFlow's `error_code`, TF Serving's `StatusProto.error_code` and gRPC's status all
    use these numbers.
    """
    return _CODES_BY_NUMBER.get(number)


def status_code_name(number: int) -> str:
    """"NOT_FOUND" for 5, ...; the number itself as text when no code has it."""
    code = status_code(number)
    return code.name if code is not None else str(number)


def status_code_of(error) -> grpc.StatusCode:
    """The gRPC code of a TensorFlow error (`tf.errors.OpError`); INTERNAL if unknown."""
    return status_code(getattr(error, "error_code", -1)) or grpc.StatusCode.INTERNAL


def tf_error_message(error) -> str:
    """The useful line of a TensorFlow error: the failed in-graph check if there is one,
    else the first line that is not a location note, without its `{{function_node ...}}`
    prefix and `[Op:...]` suffix.

    Args:
        error: a `tf.errors.OpError` (anything with a `message`).

    Returns:
        One line; the error's type name when the message is empty.
    """
    lines = [line.strip() for line in (getattr(error, "message", "") or "").splitlines() if line.strip()]
    chosen = next((line for line in lines if "assertion failed" in line), None)
    if chosen is None:
        useful = [line for line in lines if not line.startswith(_NOISE_PREFIXES)]
        chosen = (useful or lines or [""])[0]
    chosen = _OP_SUFFIX.sub("", _FUNCTION_NODE.sub("", chosen)).strip()
    return chosen or type(error).__name__


class ExportError(UserError, ValueError):
    """An export folder cannot be read: no or a corrupt `saved_model.pb`, no serving MetaGraph."""
