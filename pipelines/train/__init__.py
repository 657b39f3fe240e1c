"""Training (`vae train`): input pipelines (`inputs`), the distributed loop (`trainer`),
and the run from data to export (`run`).

    from pipelines.train import train
    metrics = train(RunConfig(), "runs/fmnist")

Loaded lazily (PEP 562), so that the `vae` parser (`pipelines.train.cli`) does not load
TensorFlow.
"""

from core.lazy import lazy_attributes

_WHERE = {
    "Datasets": "pipelines.train.inputs",
    "load_datasets": "pipelines.train.inputs",
    "test_dataset": "pipelines.train.inputs",
    "Trainer": "pipelines.train.trainer",
    "build_model": "pipelines.train.run",
    "draw_pictures": "pipelines.train.run",
    "export_run": "pipelines.train.run",
    "finish": "pipelines.train.run",
    "fit": "pipelines.train.run",
    "load_saved_model": "pipelines.train.run",
    "set_precision": "pipelines.train.run",
    "train": "pipelines.train.run",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_attributes(__name__, _WHERE)
