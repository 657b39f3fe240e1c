"""The encode job: check the output folder, run the local or Beam runner, write the manifest."""

from __future__ import annotations

import concurrent.futures
import datetime
import logging
import os
import time

import tensorflow as tf

from core.files import is_remote
from pipelines.encode import output
from pipelines.encode.config import EncodeConfig, EncodeError
from pipelines.encode.signatures import Encoder, describe_export, needed_signatures, output_keys
from pipelines.sources import SourceError, open_source
from pipelines.workdir import differences

log = logging.getLogger(__name__)


def prepare_output(out: str, identity: dict, overwrite: bool) -> output.JobState:
    """Makes `out` ready for a job of `identity`: new, resumable, or replaced on request.

    Raises:
        EncodeError: `out` holds a finished output or a partial one of another job (and
            `overwrite` is off), or files that no encode job wrote.
    """
    if tf.io.gfile.exists(out) and not tf.io.gfile.isdir(out):
        raise EncodeError(f"--output-dir {out} is a file; name a folder")
    tf.io.gfile.makedirs(out)
    state = output.JobState(out)
    manifest, name = None, None
    for name in (output.MANIFEST_FILE, output.LEGACY_MANIFEST_FILE):
        if (manifest := output.read_json(output.join(out, name))) is not None:
            break
    if manifest is not None and not overwrite:
        older = (f"; an earlier version of vae encode wrote it (this one names the manifest "
                 f"{output.MANIFEST_FILE})" if name == output.LEGACY_MANIFEST_FILE else "")
        raise EncodeError(f"{out} already holds a finished encoding ({name}: "
                          f"{manifest.get('rows')} rows, written {manifest.get('finished_utc')}{older}); "
                          f"pass --overwrite to replace it, or choose another --output-dir")
    recorded = state.job()
    if manifest is not None or (recorded is not None and recorded != identity and overwrite):
        output.remove_outputs(out)
        recorded = None
    elif recorded is not None and recorded != identity:
        raise EncodeError(f"{out} holds an unfinished encoding made with other arguments "
                          f"({differences(recorded, identity)}); run the earlier command again to "
                          f"finish it, pass --overwrite to start over, or choose another --output-dir")
    if recorded is None:
        foreign = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(out) if not output.is_ours(n))
        if foreign:
            raise EncodeError(f"{out} is not empty and holds no encode job ({', '.join(foreign[:5])}"
                              f"{', ...' if len(foreign) > 5 else ''}); choose a new or empty --output-dir")
        output.remove_outputs(out)  # leftovers of a job killed before it recorded itself
        state.start(identity)
    else:
        output.remove_outputs(out, only_beam_temporary=True)  # a killed Beam run's scratch
    return state


def encode(config: EncodeConfig) -> dict:
    """Encodes every input of `config` with the export's signatures into `config.out`.

    Returns:
        The manifest, as written to `<out>/_manifest.json`.

    Raises:
        EncodeError: bad arguments, a missing or unusable export or input, an output
            folder that cannot be used (see `prepare_output`), or a bad input without
            `skip_bad`. The message names the input, file or flag.
    """
    started = time.monotonic()
    out = config.out if is_remote(config.out) else os.path.abspath(config.out)
    info = describe_export(config.model, needed_signatures(config.log_likelihood, config.reconstruction_error))
    columns = output_keys(config.log_likelihood, config.reconstruction_error, info.num_classes is not None)
    encoder = None
    if config.runner == "local":  # loads while the input opens and the first batches are read
        loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="encode-load")
        encoder = loader.submit(Encoder, info.path, config.log_likelihood, config.reconstruction_error,
                                info=info)
        loader.shutdown(wait=False)
    try:
        source = open_source(config.source, info.image_shape)
    except SourceError as err:
        raise EncodeError(str(err)) from None
    identity = {"model": {"path": info.path, "version": info.version}, "input": source.identity(),
                "options": config.identity()}
    state = prepare_output(out, identity, config.overwrite)
    meta = {"model_name": info.model_name, "model_version": info.version, "latent_dim": info.latent_dim}
    table_schema = output.schema(info.latent_dim, columns, meta, info.num_classes)
    log.info("encoding %d inputs (%s) with %s version %s into %s", len(source), source.kind,
             info.model_name, info.version, out)
    if config.runner == "local":
        from pipelines.encode.local import run_local

        shards, resumed = run_local(config, source, state, encoder, table_schema)
    else:
        from pipelines.encode.beam import run_beam

        shards, resumed = run_beam(config, out, source, info, table_schema, state)
    skipped = list(source.problems)
    for shard in shards:
        skipped += shard.pop("skipped", [])
    rows = sum(s["rows"] for s in shards)
    if rows + sum(s.get("index") is not None for s in skipped) != len(source):
        raise EncodeError(f"internal error: {rows} rows and {len(skipped)} skipped inputs for "
                          f"{len(source)} inputs; the output in {out} is left unfinished")
    seconds = time.monotonic() - started
    manifest = {
        "manifest_version": output.MANIFEST_VERSION,
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": info.to_dict(),
        "input": source.describe(),
        "format": config.output_format,
        "columns": [{"name": f.name, "type": str(f.type)} for f in table_schema],
        "options": {"resize": config.source.resize, "skip_bad": config.source.skip_bad,
                    "log_likelihood": config.log_likelihood,
                    "reconstruction_error": config.reconstruction_error,
                    "rows_per_shard": config.rows_per_shard, "batch_size": config.batch_size},
        "runner": {"name": config.runner, "beam_args": list(config.beam_args),
                   "resumed_shards": resumed, "wall_seconds": round(seconds, 3)},
        "num_inputs": len(source),
        "rows": rows,
        "num_skipped": len(skipped),
        "shards": shards,
        "skipped": skipped,
    }
    output.write_json(output.join(out, output.MANIFEST_FILE), manifest)
    state.clear()
    log.info("wrote %d rows in %d shards (%d inputs skipped) to %s in %.1f s", rows, len(shards),
             len(skipped), out, seconds)
    return manifest

