"""Optimizers for the training loop."""

from __future__ import annotations

import keras
import tensorflow as tf


def _handle(variable):
    """The resource handle of a Keras variable (the local copy under tf.distribute)."""
    return variable.handle


@keras.saving.register_keras_serializable(package="vae")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` with its update done by TensorFlow's fused kernel.

    Keras 3's Adam updates each variable with about ten element-wise ops (several
    passes over memory); `ResourceApplyAdam` does the same arithmetic in one pass:
    m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    w -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps).
    On the 784-400-20 VAE that is about a third of a training step on a 2-core CPU.
    Takes the same arguments as Adam; `amsgrad=True` falls back to Keras' update.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )
