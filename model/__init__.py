"""The VAE models (`vae`, the conditional `cvae`, the semi-supervised `m2`): configs,
layers, networks, the models and their evaluation. No I/O here.

Loaded lazily (PEP 562): `model.config` alone loads neither Keras nor TensorFlow (the
`vae` parser reads its choices); `from model import VAE` (or `model_class`) loads the models and registers
every custom Keras object, which `keras.models.load_model` needs.
"""

from core.lazy import lazy_attributes

_WHERE = {
    "CVAE": "model.cvae",
    "ConvClassifier": "model.classifiers",
    "HalfCondition": "model.conditions",
    "HierarchicalVAE": "model.hierarchical",
    "PseudoInputs": "model.priors",
    "LabelCondition": "model.conditions",
    "M2": "model.m2",
    "MLPClassifier": "model.classifiers",
    "MODEL_CLASSES": "model.kinds",
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
    "VAE": "model.vae",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_attributes(__name__, _WHERE)
