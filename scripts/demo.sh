#!/usr/bin/env bash
# The main job end to end on a fresh machine: set up; prepare Fashion-MNIST offline;
# train a small VAE for a few epochs, evaluate it (negative ELBO, IWAE NLL), save it,
# draw its pictures and export it as a versioned SavedModel; serve the export with the
# local TF-Serving-compatible gRPC server, call `generate` over gRPC and write the grid;
# batch-encode the test split to Parquet. Outputs go to $VAE_DEMO_DIR (default runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
out=${VAE_DEMO_DIR:-runs/demo}
vae=.venv/bin/vae
mkdir -p "$out"
out=$(cd "$out" && pwd)

echo "demo: 1/3 training, evaluating and exporting"
$vae train --workdir "$out/train" --epochs 3 --overwrite

echo "demo: 2/3 serving the export over gRPC and calling generate"
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$vae serve --model-base-path "$out/train/exports/vae" --model-name vae --host 127.0.0.1 \
  --port "$port" > "$out/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
$vae generate --target "127.0.0.1:$port" --wait 120 -n 16 --seed 7 --output "$out/generated.png" || {
  echo "demo: generate failed; the server's log:" >&2; cat "$out/server.log" >&2; exit 1; }
kill "$server" && wait "$server" 2>/dev/null || true
trap - EXIT

echo "demo: 3/3 batch-encoding the test split"
$vae encode --model-base-path "$out/train/exports/vae" --dataset fashion_mnist --split test \
  --output-dir "$out/codes" --overwrite

echo "demo: done; outputs in $out: train/ (model, metrics.json, pictures, exports/vae/N),"\
     "generated.png (from the gRPC server), codes/ (Parquet latent codes of the test split)"
