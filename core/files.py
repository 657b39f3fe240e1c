"""JSON files written atomically (a reader sees the old file or the new one, never half)
and read with errors that name the file. Local paths use the os; remote ones
(`gs://...`, any `scheme://`) go through `tf.io.gfile`, imported only for them."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from core.errors import UserError

_MISSING = object()


def is_remote(path: str | Path) -> bool:
    """Whether `path` names a file system other than the local one (`scheme://...`)."""
    return "://" in str(path)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def write_text_atomic(path: str | Path, text: str) -> str:
    """Writes `text` to a unique temporary file beside `path`, then renames it into place."""
    path = str(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    if is_remote(path):
        gfile = _gfile()
        with gfile.GFile(tmp, "w") as f:
            f.write(text)
        gfile.rename(tmp, path, overwrite=True)
        return path
    try:
        Path(tmp).write_text(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | Path, payload: Any, *, sort_keys: bool = True) -> str:
    """`payload` as indented JSON, written atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: str | Path, default: Any = _MISSING) -> Any:
    """The JSON value in `path`; `default` when the file is missing (if given).

    Raises:
        UserError: the file is missing (and no default was given) or is not valid JSON.
    """
    try:
        if is_remote(path):
            gfile = _gfile()
            if not gfile.exists(str(path)):
                raise FileNotFoundError(path)
            with gfile.GFile(str(path)) as f:
                text = f.read()
        else:
            text = Path(path).read_text()
    except FileNotFoundError:
        if default is not _MISSING:
            return default
        raise UserError(f"{path} does not exist") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}); delete it or restore it") from None
