"""The VAE models (`vae`, the conditional `cvae`, the semi-supervised `m2` and `m1m2`): configs,
layers, networks, the models and their evaluation. No I/O here.

Loaded lazily (PEP 562): `model.config` and `model.kinds` load neither Keras nor
TensorFlow (the `vae` parser reads their choices); `from model import VAE` (or any model
class) imports every registered kind's class (`model/classes.py`), registering each custom
Keras object, which `keras.models.load_model` needs for a saved model of any kind.
"""

from core.lazy import lazy_attributes

_WHERE = {
    "CVAE": "model.classes",
    "ConvClassifier": "model.classifiers",
    "HalfCondition": "model.conditions",
    "HierarchicalVAE": "model.classes",
    "PseudoInputs": "model.priors",
    "LabelCondition": "model.conditions",
    "M1M2": "model.classes",
    "M2": "model.classes",
    "MLPClassifier": "model.classifiers",
    "REGISTRY": "model.kinds",
    "build_model": "model.classes",
    "model_class": "model.kinds",
    "ConfigBase": "model.config",
    "ConfigError": "model.config",
    "ModelConfig": "model.config",
    "BernoulliLikelihood": "model.layers",
    "GaussianLikelihood": "model.layers",
    "Sampling": "model.layers",
    "ConvDecoder": "model.networks",
    "ConvEncoder": "model.networks",
    "MLPDecoder": "model.networks",
    "MLPEncoder": "model.networks",
    "VAE": "model.classes",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_attributes(__name__, _WHERE)
