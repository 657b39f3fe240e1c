"""The VAE models (`vae`, the conditional `cvae`, the semi-supervised `m2`): configs,
layers, networks, the models and their evaluation. No I/O here.

Loaded lazily (PEP 562): `model.config` alone loads neither Keras nor TensorFlow (the
`vae` parser reads its choices); `from model import VAE` (or any model class, `build_model`,
`model_class`) loads every model through `model.kinds` and so registers every custom Keras
object, which `keras.models.load_model` needs.
"""

from core.lazy import lazy_attributes

_WHERE = {
    "CVAE": "model.kinds",
    "ConvClassifier": "model.classifiers",
    "HalfCondition": "model.conditions",
    "HierarchicalVAE": "model.kinds",
    "PseudoInputs": "model.priors",
    "LabelCondition": "model.conditions",
    "M2": "model.kinds",
    "MLPClassifier": "model.classifiers",
    "REGISTRY": "model.kinds",
    "build_model": "model.kinds",
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
    "VAE": "model.kinds",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_attributes(__name__, _WHERE)
