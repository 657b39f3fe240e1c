"""The VAE model: configs, layers, networks, the model and its evaluation. No I/O here."""

from model.config import ConfigBase, ConfigError, ModelConfig
from model.layers import BernoulliLikelihood, GaussianLikelihood, Sampling
from model.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from model.vae import VAE

__all__ = [
    "BernoulliLikelihood",
    "ConfigBase",
    "ConfigError",
    "ConvDecoder",
    "ConvEncoder",
    "GaussianLikelihood",
    "MLPDecoder",
    "MLPEncoder",
    "ModelConfig",
    "Sampling",
    "VAE",
]
