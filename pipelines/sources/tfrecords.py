"""TFRecord files of serialized tf.train.Example as an input.

The image feature (`--image-feature`, default `image`) holds encoded PNG/JPEG bytes, or
the raw H*W*C pixels of the model's shape: one bytes value of uint8 pixels, a float list
in [0, 1] or an int64 list in 0..255. An optional label feature (int64) fills the label
column; an optional id feature (bytes or int64) replaces the default id `<file>:<record>`.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from pipelines.sources import images as I
from serving.errors import tf_error_message
from pipelines.sources.spec import SourceError, SourceSpec
from pipelines.sources.base import Source, assemble, expand_paths, file_names, file_size


def _count_records(path: str) -> tuple[int, str | None]:
    """(records readable from the start, the error that stopped the reading or None)."""
    try:
        return int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1)), None
    except tf.errors.OpError:
        pass
    count, records = 0, iter(tf.data.TFRecordDataset(path))
    while True:
        try:
            next(records)
        except StopIteration:
            return count, None
        except tf.errors.OpError as err:
            return count, tf_error_message(err)
        count += 1


class TFRecordSource(Source):
    """Records of TFRecord files (globs allowed), file by file in sorted order."""

    kind = "tfrecord"

    def __init__(self, spec: SourceSpec, image_shape):
        super().__init__(spec, image_shape)
        self.files = expand_paths(spec.paths, "--tfrecord")
        self.names = file_names(self.files)
        self.counts = []
        for name, path in zip(self.names, self.files):
            count, error = _count_records(path)
            if error is not None:
                problem = {"index": None, "id": f"{name}:{count}",
                           "reason": f"corrupt TFRecord data from record {count} on ({error}); the "
                                     f"rest of the file is unreadable"}
                if not spec.skip_bad:
                    raise SourceError(f"bad input {problem['id']}: {problem['reason']} (pass --skip-bad "
                                      f"to read the records before it and list this one as skipped)")
                self.problems.append(problem)
            self.counts.append(count)
        self.offsets = np.cumsum([0] + self.counts).tolist()
        self.has_labels = spec.label_feature is not None
        self.pixels = math.prod(self.image_shape)

    def __len__(self) -> int:
        return self.offsets[-1]

    def input_files(self) -> list[str]:
        return list(self.files)

    def first_shape(self):
        for f, path in enumerate(self.files):
            if self.counts[f]:
                record = next(iter(tf.data.TFRecordDataset(path).take(1))).numpy()
                try:
                    features = tf.train.Example.FromString(record).features.feature
                    feature = features[self.spec.image_feature]
                    data = feature.bytes_list.value[0] if feature.bytes_list.value else b""
                    return tuple(I.decode_image(data).shape) if I.looks_encoded(data) else None
                except (DecodeError, KeyError, I.BadInput):
                    return None
        return None

    def describe(self) -> dict:
        files = [{"path": p, "records": n, "bytes": file_size(p)} for p, n in zip(self.files, self.counts)]
        return {"kind": self.kind, "files": files, "image_feature": self.spec.image_feature,
                "label_feature": self.spec.label_feature, "id_feature": self.spec.id_feature,
                "num_inputs": len(self)}

    # === One record ===
    def _pixels(self, feature) -> np.ndarray:
        kind = feature.WhichOneof("kind")
        name = self.spec.image_feature
        if kind == "bytes_list":
            if len(feature.bytes_list.value) != 1:
                raise I.BadInput(f"feature {name!r} holds {len(feature.bytes_list.value)} byte strings, expected 1")
            data = feature.bytes_list.value[0]
            if I.looks_encoded(data):
                return I.decode_image(data)
            if len(data) == self.pixels:
                return np.frombuffer(data, np.uint8).reshape(self.image_shape)
            raise I.BadInput(f"feature {name!r} holds {len(data)} bytes that are neither a PNG/JPEG image "
                             f"nor {I.shape_text(self.image_shape)} = {self.pixels} raw uint8 pixels")
        if kind in ("float_list", "int64_list"):
            values = getattr(feature, kind).value
            if len(values) != self.pixels:
                raise I.BadInput(f"feature {name!r} holds {len(values)} values, expected "
                                 f"{I.shape_text(self.image_shape)} = {self.pixels} pixels")
            dtype = np.float32 if kind == "float_list" else np.int64
            return np.asarray(values, dtype).reshape(self.image_shape)
        raise I.BadInput(f"feature {name!r} is empty")

    def _parse(self, record: bytes, key: str):
        """-> (id, label, image or BadInput)."""
        try:
            features = tf.train.Example.FromString(record).features.feature
        except DecodeError as err:
            return key, None, I.BadInput(f"not a serialized tf.train.Example: {err}")
        label = None
        if self.spec.label_feature and self.spec.label_feature in features:
            values = features[self.spec.label_feature].int64_list.value
            label = int(values[0]) if values else None
        id_name = self.spec.id_feature
        if id_name:
            if id_name not in features:
                return key, label, I.BadInput(f"no id feature {id_name!r}")
            feature = features[id_name]
            values = feature.bytes_list.value or feature.int64_list.value
            if len(values) != 1:
                return key, label, I.BadInput(f"id feature {id_name!r} must hold one value")
            key = values[0].decode("utf-8", "replace") if isinstance(values[0], bytes) else str(values[0])
        if self.spec.image_feature not in features:
            return key, label, I.BadInput(f"no feature {self.spec.image_feature!r} "
                                          f"(features: {sorted(features.keys())}); see --image-feature")
        try:
            image = I.conform(self._pixels(features[self.spec.image_feature]), self.image_shape,
                              self.spec.resize)
        except I.BadInput as err:
            image = err
        return key, label, image

    def _batches(self, start, stop, batch_size):
        items = []
        for f, (name, path) in enumerate(zip(self.names, self.files)):
            first, last = max(start, self.offsets[f]), min(stop, self.offsets[f + 1])
            if first >= last:
                continue
            skip = first - self.offsets[f]
            ds = tf.data.TFRecordDataset(path).skip(skip).take(last - first).batch(256).prefetch(2)
            record_number = skip
            for records in ds.as_numpy_iterator():
                for record in records:
                    key, label, image = self._parse(record, f"{name}:{record_number}")
                    items.append((self.offsets[f] + record_number, key, label, image))
                    record_number += 1
                    if len(items) == batch_size:
                        yield assemble(items, self.image_shape)
                        items = []
        if items:
            yield assemble(items, self.image_shape)
