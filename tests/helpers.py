"""Test helpers shared across the suite (keras-hub style round-trip checks)."""

from __future__ import annotations

import keras
import numpy as np


def assert_config_round_trip(layer) -> None:
    """from_config(get_config()) rebuilds an object with the same config."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


def assert_save_load_round_trip(obj, inputs, tmp_path) -> None:
    """A model (or a layer wrapped in one) saved as .keras reloads with identical outputs."""
    if not isinstance(obj, keras.Model):
        if isinstance(inputs, (list, tuple)):
            tensors = [keras.Input(shape=np.shape(x)[1:]) for x in inputs]
        else:
            tensors = keras.Input(shape=np.shape(inputs)[1:])
        obj = keras.Model(tensors, obj(tensors))
    path = tmp_path / f"{obj.name}.keras"
    expected = obj(inputs)
    obj.save(path)
    loaded = keras.models.load_model(path)
    actual = loaded(inputs)
    for e, a in zip(keras.tree.flatten(expected), keras.tree.flatten(actual)):
        np.testing.assert_array_equal(np.asarray(e), np.asarray(a))


def with_density(base: dict, **density) -> dict:
    """`ModelConfig` keyword arguments `base` with these options set in its `density`
    section (`model.config.DensityConfig`), the others kept."""
    import dataclasses

    from model.config import DensityConfig

    return dict(base, density=dataclasses.replace(base.get("density", DensityConfig()), **density))
