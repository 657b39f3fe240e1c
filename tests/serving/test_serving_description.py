"""The export's description (`assets.extra/serving_contract.json`): today's writer writes the
file every version wrote, the reader reads it back and reads the files of earlier
versions, and the server keeps serving a version whose description it cannot read."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from serving_testlib import IMAGE_SHAPE, LATENT_DIM, NUM_CLASSES, build_conditional
from tensorflow_serving.apis import predict_pb2

from serving import contract as C
from serving.description import ExportDescription
from serving.errors import ExportError, RequestError
from serving.export import export_model
from serving.servable import Servable
from serving.tensors import to_tensor_proto

NAMES = ["tee", "trouser", "pullover", "dress"]


def written(kind: str, condition: str | None = None, num_classes: int | None = None, names=None):
    return ExportDescription.of_kind(kind, "digits", (8, 8, 1), 3, tensorflow_version="2.20.0",
                                     keras_version="3.15.1", condition=condition, num_classes=num_classes,
                                     class_names=names)


def as_before(kind: str, extra: dict) -> dict:
    """The dict the exporter wrote before the description had a class (serving/export.py
    `_write_assets` up to this change), for a model of the served `kind`."""
    specs = C.signatures_for(kind)
    return {
        "contract_version": C.CONTRACT_VERSION, "model_name": "digits", "image_shape": [8, 8, 1], "latent_dim": 3,
        "iwae_num_samples": C.IWAE_NUM_SAMPLES, "signatures": {name: spec.doc for name, spec in specs.items()},
        "default_signature": C.default_signature_for(kind), "tensorflow_version": "2.20.0",
        "keras_version": "3.15.1", **extra,
    }


CASES = {
    C.PLAIN_KIND: (written(C.PLAIN_KIND), {}),
    C.LABEL_KIND: (written(C.LABEL_KIND, "label", 4, NAMES),
                   {"kind": C.LABEL_KIND, "condition": "label", "num_classes": 4, "class_names": NAMES}),
    C.M2_KIND: (written(C.M2_KIND, "label", 4, NAMES),
                {"kind": C.M2_KIND, "condition": "label", "num_classes": 4, "class_names": NAMES}),
    C.HALF_KIND: (written(C.HALF_KIND, "left_half"), {"kind": C.HALF_KIND, "condition": "left_half"}),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_todays_writer_writes_the_file_as_before_and_reads_it_back(kind, tmp_path):
    description, extra = CASES[kind]
    path = description.write(tmp_path)
    assert path == tmp_path / C.ASSETS_EXTRA / C.CONTRACT_FILE
    assert path.read_text() == json.dumps(as_before(kind, extra), indent=2, sort_keys=True)
    read = ExportDescription.read(tmp_path)
    assert read == description
    assert (read.kind, read.num_classes) == (kind, extra.get("num_classes"))
    assert read.class_names == (tuple(NAMES) if "class_names" in extra else None)


def test_the_files_of_earlier_versions_read_back(tmp_path):
    # The first exporter's file: no kind (a plain VAE), the signatures of that day.
    first = {"contract_version": 1, "model_name": "vae", "image_shape": [28, 28, 1], "latent_dim": 16,
             "iwae_num_samples": 100, "signatures": {"generate": "z ~ N(0, temperature^2 I) ...", "encode": "q(z|x)"},
             "default_signature": "generate", "tensorflow_version": "2.16.1", "keras_version": "3.3.3"}
    (tmp_path / "1" / C.ASSETS_EXTRA).mkdir(parents=True)
    (tmp_path / "1" / C.ASSETS_EXTRA / C.CONTRACT_FILE).write_text(json.dumps(first, indent=2, sort_keys=True))
    read = ExportDescription.read(tmp_path / "1")
    assert (read.model_name, read.image_shape, read.latent_dim) == ("vae", (28, 28, 1), 16)
    assert (read.kind, read.condition, read.num_classes, read.class_names) == (C.PLAIN_KIND, None, None, None)
    assert read.signatures == first["signatures"] and read.keras_version == "3.3.3"
    assert read.to_dict() == first
    # An M2 export of the first conditional exporter, as an untyped dict, with a URL-free str path.
    m2 = {**first, "model_name": "m2", "kind": "m2", "condition": "label", "num_classes": 10,
          "class_names": [str(k) for k in range(10)]}
    (tmp_path / "2" / C.ASSETS_EXTRA).mkdir(parents=True)
    (tmp_path / "2" / C.ASSETS_EXTRA / C.CONTRACT_FILE).write_text(json.dumps(m2))
    read = ExportDescription.read(str(tmp_path / "2"))
    assert (read.kind, read.num_classes, read.class_names[:2]) == (C.M2_KIND, 10, ("0", "1"))
    assert read.to_dict() == m2


def test_no_description_reads_as_none_and_a_broken_one_names_the_file_and_field(tmp_path):
    assert ExportDescription.read(tmp_path) is None
    path = tmp_path / C.ASSETS_EXTRA / C.CONTRACT_FILE
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        ExportDescription.read(tmp_path)
    broken = as_before(C.LABEL_KIND, {"kind": C.LABEL_KIND, "num_classes": "four"})
    path.write_text(json.dumps(broken))
    with pytest.raises(ExportError, match=r"serving_contract\.json .*'num_classes' is 'four'"):
        ExportDescription.read(tmp_path)
    del broken["latent_dim"], broken["num_classes"]
    path.write_text(json.dumps(broken))
    with pytest.raises(ExportError, match="'latent_dim' is missing"):
        ExportDescription.read(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(ExportError, match="a JSON object"):
        ExportDescription.read(tmp_path)


def test_the_exporter_writes_the_description_the_server_reads(export_dir, tmp_path):
    read = ExportDescription.read(export_dir)
    assert (read.model_name, read.image_shape, read.latent_dim) == (C.MODEL_NAME, IMAGE_SHAPE, LATENT_DIM)
    assert (read.kind, read.default_signature, read.num_classes) == (C.PLAIN_KIND, C.GENERATE, None)
    assert set(read.signatures) == set(C.SIGNATURES)
    # A version whose description is unreadable still serves (the in-graph checks hold).
    copy = shutil.copytree(export_dir, tmp_path / "1")
    (copy / C.ASSETS_EXTRA / C.CONTRACT_FILE).write_text("{not json")
    servable = Servable(C.MODEL_NAME, 1, copy)
    assert servable.description is None and servable.num_classes is None
    encoded = servable.run(servable.signatures[C.ENCODE], {C.IMAGES: np.zeros((2, *IMAGE_SHAPE), np.float32)})
    assert encoded[C.Z_MEAN].shape == (2, LATENT_DIM)


def test_the_server_checks_labels_against_the_number_of_classes_of_the_description(tmp_path):
    version = export_model(build_conditional("cvae", "label"), tmp_path, "label")
    servable = Servable("label", 1, version)
    assert servable.num_classes == NUM_CLASSES == servable.description.num_classes
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = C.GENERATE
    for key, value in {C.LABELS: np.int32([0, NUM_CLASSES]), C.SEED: np.zeros(2, np.int64),
                       C.TEMPERATURE: np.float32(1)}.items():
        request.inputs[key].CopyFrom(to_tensor_proto(value))
    with pytest.raises(RequestError, match=rf"must be within \[0, {NUM_CLASSES}\), got \[{NUM_CLASSES}\]"):
        servable.prepare(request)  # refused before running, with the labels it got
