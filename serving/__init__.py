"""Export and serving: the serving contract, the exporter, a TF-Serving-compatible local
server and its client. Nothing here but `serving.export` imports the Keras model.

- `serving.contract`: signature names, tensor keys, shapes, limits (the one source).
- `serving.export`: `export_model(vae, base_dir, ...)`, `export_workdir(workdir, base_dir, ...)`.
- `serving.server`: `ModelServer(ServerOptions(...))`, `serve(options)` (`vae serve`).
- `serving.client`: `VAEClient(target)`, `ServingError`, `TLSOptions`.
- `serving.cli`: `register(subparsers)` adds `export`, `serve` and `generate` to `vae`.
"""
