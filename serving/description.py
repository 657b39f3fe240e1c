"""What an export says of itself, `assets.extra/serving_contract.json`: one writer, one reader.

The exporter writes it (`ExportDescription.write`); the server reads K from it to check a
request's labels before running it (`servable.py`), and the batch encoder reads the served
name and K (`pipelines/encode/signatures.py`), both with `ExportDescription.read`. TF
Serving's GetModelMetadata answers the signatures alone, so a client over the network
(`client.py`) sees K only as the width of `classify`'s probabilities.

The file is one JSON object with sorted keys. Every version of the exporter wrote
`contract_version`, `model_name`, `image_shape`, `latent_dim`, `iwae_num_samples`,
`signatures` (each one's doc by name), `default_signature`, `tensorflow_version` and
`keras_version`; a conditional model's adds `kind` and `condition` (no `kind`: a plain
VAE, whose file stays as it always was), and a kind that takes labels `num_classes` and
`class_names`. The reader accepts every version's file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.files import read_json
from serving import contract as C
from serving.errors import ExportError
from serving.layout import join

_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class ExportDescription:
    """The description of one exported version.

    Args:
        model_name: the served name.
        image_shape: (H, W, C) of the images the signatures take.
        latent_dim: D.
        signatures: each signature's doc by name (the contract's, when it was written).
        default_signature: the signature `serving_default` stands for.
        kind: the served kind (`contract.PLAIN_KIND`, `LABEL_KIND`, `M2_KIND`, `HALF_KIND`).
        condition: a conditional model's condition (`"label"`, `"left_half"`, ...), else None.
        num_classes: K of a kind that takes labels, else None.
        class_names: the names of those K classes, else None.
        contract_version: `contract.CONTRACT_VERSION` when it was written.
        iwae_num_samples: k of the `log_likelihood` signature.
        tensorflow_version, keras_version: what wrote the export.

    Example:
        >>> description = ExportDescription.read("exports/vae/1")  # None: the export has none
        >>> description.num_classes, description.class_names  # (10, ('T-shirt/top', ...)) for M2
    """

    model_name: str
    image_shape: tuple[int, int, int]
    latent_dim: int
    signatures: dict[str, str]
    default_signature: str
    tensorflow_version: str
    keras_version: str
    kind: str = C.PLAIN_KIND
    condition: str | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    contract_version: int = C.CONTRACT_VERSION
    iwae_num_samples: int = C.IWAE_NUM_SAMPLES

    @classmethod
    def of_kind(cls, kind: str, model_name: str, image_shape: Sequence[int], latent_dim: int, *,
                tensorflow_version: str, keras_version: str, condition: str | None = None,
                num_classes: int | None = None, class_names: Sequence[str] | None = None) -> ExportDescription:
        """A new export's description, with the signatures and default of the served `kind`
        (`contract.signatures_for`)."""
        return cls(
            model_name=model_name, image_shape=tuple(int(d) for d in image_shape), latent_dim=int(latent_dim),
            signatures={name: spec.doc for name, spec in C.signatures_for(kind).items()},
            default_signature=C.default_signature_for(kind), kind=kind, condition=condition,
            num_classes=num_classes, class_names=None if class_names is None else tuple(class_names),
            tensorflow_version=tensorflow_version, keras_version=keras_version,
        )

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object: the fields by name (a plain VAE's without `kind` and
        `condition`, a kind without labels without `num_classes` and `class_names`)."""
        described = dataclasses.asdict(self)
        described["image_shape"] = list(self.image_shape)
        if self.class_names is not None:
            described[C.CLASS_NAMES_FIELD] = list(self.class_names)
        if self.kind == C.PLAIN_KIND:
            del described[C.CONTRACT_KIND_FIELD], described[C.CONTRACT_CONDITION_FIELD]
        for name in (C.NUM_CLASSES_FIELD, C.CLASS_NAMES_FIELD):
            if described[name] is None:
                del described[name]
        return described

    def write(self, version_dir: str | os.PathLike) -> Path:
        """Writes `assets.extra/serving_contract.json` into a (local) version folder."""
        path = Path(version_dir) / C.ASSETS_EXTRA / C.CONTRACT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, version_dir: str | os.PathLike) -> ExportDescription | None:
        """The description of the export at `version_dir` (a local path or a URL that
        `tf.io.gfile` reads); None when it has none.

        Raises:
            ExportError: the file cannot be read, is not JSON, lacks a field every version
                wrote (all but `kind`, `condition`, `num_classes` and `class_names`) or has
                one of the wrong type; the message names the file and the field.
        """
        path = join(version_dir, C.ASSETS_EXTRA, C.CONTRACT_FILE)
        try:
            described = read_json(path, default=None)
        except UserError as err:  # not JSON
            raise ExportError(str(err)) from None
        except (OSError, ValueError) as err:  # unreadable, not text
            raise ExportError(f"cannot read {path}: {err}") from None
        return None if described is None else _parsed(described, path)


def _parsed(described: Any, path: str) -> ExportDescription:
    """The description in a file's JSON value (today's or an earlier version's)."""
    if not isinstance(described, dict):
        raise ExportError(f"{path} is not an export description (a JSON object)")

    def value(name: str, types: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
        found = described.get(name, default)
        if not (isinstance(found, types) or (found is None and default is None)):
            shown = "missing" if found is _REQUIRED else f"{found!r}"
            raise ExportError(f"{path} is not an export description: {name!r} is {shown}")
        return found

    shape = value("image_shape", list)
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape):
        raise ExportError(f"{path} is not an export description: 'image_shape' is {shape!r}")
    kind = value(C.CONTRACT_KIND_FIELD, str, C.PLAIN_KIND)
    names = value(C.CLASS_NAMES_FIELD, list, None)
    return ExportDescription(
        model_name=value("model_name", str),
        image_shape=tuple(shape),
        latent_dim=value("latent_dim", int),
        signatures=dict(value("signatures", dict)),
        default_signature=value("default_signature", str),
        kind=kind,
        condition=value(C.CONTRACT_CONDITION_FIELD, str, None),
        num_classes=value(C.NUM_CLASSES_FIELD, int, None),
        class_names=None if names is None else tuple(str(n) for n in names),
        contract_version=value("contract_version", int),
        iwae_num_samples=value("iwae_num_samples", int),
        tensorflow_version=value("tensorflow_version", str),
        keras_version=value("keras_version", str),
    )
