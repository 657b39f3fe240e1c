"""Reading the export layout as TF Serving does: integer version folders under a model
folder, and the signatures written in a version's `saved_model.pb`.

    <model base path>/<version>/saved_model.pb

The server's version poller, the exporter's next version number and the batch encoder's
model look-up all list versions with `list_versions`; the server and the batch encoder
read signatures with `read_meta_graph` (read, not loaded: a few ms instead of a load).
Local paths and URLs that `tf.io.gfile` reads (gs://...) both work; TensorFlow is imported
only for a URL or a `saved_model.pb`.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from core.files import is_remote
from serving import contract as C
from serving.errors import ExportError

SERVE_TAG = "serve"  # tf.saved_model.SERVING, the MetaGraph tag TF Serving loads


def join(base: str | os.PathLike, *names: str) -> str:
    """Joins a local path or a URL (gs://...) that tf.io.gfile reads."""
    return posixpath.join(str(base), *names) if is_remote(base) else os.path.join(base, *names)


def list_versions(base: str | os.PathLike) -> list[int]:
    """The integer version folders under a model folder, ascending.

    Args:
        base: the model folder (`<export base>/<model name>`), a local path or a URL.

    Returns:
        The version numbers; empty when `base` does not exist. Files with integer names
        and hidden staging folders are not versions.
    """
    if is_remote(base):
        import tensorflow as tf

        if not tf.io.gfile.isdir(str(base)):
            return []
        names = [name.rstrip("/") for name in tf.io.gfile.listdir(str(base))]
        return sorted(int(n) for n in names if n.isdigit() and tf.io.gfile.isdir(join(base, n)))
    try:
        with os.scandir(base) as entries:
            return sorted(int(e.name) for e in entries if e.name.isdigit() and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _read_bytes(path: str) -> bytes:
    if not is_remote(path):
        return Path(path).read_bytes()
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.OpError as err:  # NotFoundError, PermissionDeniedError, ...
        raise OSError(err.message) from None


def read_meta_graph(version_dir: str | os.PathLike):
    """The serving MetaGraph of an export, as written in its `saved_model.pb`.

    The MetaGraph tagged `serve` (what TF Serving loads), or the only one there is (what
    `tf.saved_model.load` takes without tags).

    Args:
        version_dir: a version folder (local path or URL).

    Returns:
        A `tensorflow.core.protobuf.meta_graph_pb2.MetaGraphDef`.

    Raises:
        ExportError: no `saved_model.pb`, a corrupt one, or no serving MetaGraph in it.
    """
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = join(version_dir, C.SAVED_MODEL_FILE)
    try:
        saved_model = saved_model_pb2.SavedModel.FromString(_read_bytes(path))
    except (DecodeError, OSError) as err:
        raise ExportError(f"cannot read {path}: {err}") from None
    graphs = list(saved_model.meta_graphs)
    tagged = [g for g in graphs if SERVE_TAG in g.meta_info_def.tags]
    graph = tagged[0] if tagged else graphs[0] if len(graphs) == 1 else None
    if graph is None:
        raise ExportError(f"the export at {version_dir} has no MetaGraph tagged {SERVE_TAG!r}")
    return graph


def read_signature_defs(version_dir: str | os.PathLike) -> dict:
    """The SignatureDefs of the serving MetaGraph by key (what TF Serving serves).

    Raises:
        ExportError: see `read_meta_graph`.
    """
    return dict(read_meta_graph(version_dir).signature_def)
