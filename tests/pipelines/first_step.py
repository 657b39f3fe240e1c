"""Run as a script: one SGD step of the same VAE on one device or on N CPU replicas
(`first_step.py REPLICAS [KIND]`; KIND `m2` trains M2 on a batch where every other label
is -1, unlabelled).

Prints the flat weight update, the loss and the next step's noise seed of each replica as JSON. The log-variance head is set to -30 so that the
sampling noise (sigma ~ 3e-7) cannot make the runs differ: any difference is the
distribution's doing.
"""

import json
import sys

import numpy as np


def main(replicas: int, kind: str = "vae") -> None:
    from pipelines.distribute import make_cluster

    cluster = make_cluster("mirrored" if replicas > 1 else "default", replicas)
    import keras
    import tensorflow as tf

    from model import ModelConfig, build_model
    from model.config import DensityConfig, M2Config
    from pipelines.train.trainer import Trainer

    keras.utils.set_random_seed(0)
    # N(0, I): with the posterior's variance pinned near zero below, a VampPrior's
    # components would be near-delta densities (the check is of the update, not the prior).
    extra = (dict(kind="m2", m2=M2Config(alpha=2.0), num_classes=4) if kind == "m2"
             else dict(density=DensityConfig(prior="gaussian")))
    with cluster.strategy.scope():
        config = ModelConfig(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(32,), **extra)
        vae = build_model(config, seed=0)
        vae.build()
        head = vae.encoder.log_var_head
        head.kernel.assign(np.zeros(head.kernel.shape, "float32"))
        head.bias.assign(np.full(head.bias.shape, -30.0, "float32"))
        vae.compile(optimizer=keras.optimizers.SGD(0.01))
    rng = np.random.default_rng(0)
    images = (rng.random((64, 8, 8, 1)) < 0.5).astype("float32")
    labels = np.where(np.arange(64) % 2 == 0, np.arange(64) % 4, -1).astype("int64")
    ds = tf.data.Dataset.from_tensors((images, labels)).repeat()
    import tempfile
    from pathlib import Path

    trainer = Trainer(vae, cluster, global_batch=64, workdir=Path(tempfile.mkdtemp()), tensorboard=False)
    before = np.concatenate([w.numpy().ravel() for w in vae.trainable_variables])
    iterator = iter(cluster.strategy.experimental_distribute_dataset(ds))
    totals = trainer._train_steps(iterator, tf.constant(1)).numpy()
    after = np.concatenate([w.numpy().ravel() for w in vae.trainable_variables])
    # The seed of the next step's sampling noise on each replica.
    noise_seeds = cluster.strategy.experimental_local_results(cluster.strategy.run(trainer._noise_seed))
    print(json.dumps({"replicas": cluster.replicas, "update": (after - before).tolist(),
                      "loss": trainer._logs(totals)["loss"],
                      "noise_seeds": [seed.numpy().tolist() for seed in noise_seeds]}))


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:])
