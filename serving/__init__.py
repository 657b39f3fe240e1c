"""Export and serving: the serving contract, the exporter, a TF-Serving-compatible local
server and its client. Nothing here but `serving.export` imports the Keras model.

- `serving.contract`: signature names, tensor keys, shapes, limits (the one source).
- `serving.export`: `export_model(vae, base_dir, ...)`, `export_workdir(workdir, base_dir, ...)`.
- `serving.server`: `ModelServer(ServerOptions(...))`, `serve(options)` (`vae serve`).
- `serving.model_config`: TF Serving's models.config read into frozen dataclasses;
  `serving.registry`: `ModelRegistry`, every model of such a file, with live reloads.
- `serving.client`: `VAEClient(target)`, `ServingError`, `TLSOptions`.
- `serving.cli`: `register(subparsers)` adds `serve` and `generate` to `vae`.
- `serving.layout`: `list_versions(base)`, `read_meta_graph(version_dir)`: the export layout on disk.
- `serving.errors`: `RequestError`, gRPC codes by number, `tf_error_message(err)`.
- `serving.tensors`: numpy <-> TensorProto; `serving.grid`: PNG grids of images.
"""
