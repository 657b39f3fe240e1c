#!/usr/bin/env bash
# The main job end to end on a fresh machine: set up, prepare Fashion-MNIST offline,
# train a small VAE for a few epochs, evaluate it (negative ELBO, IWAE NLL), save it and
# draw its pictures. Outputs go to $VAE_DEMO_DIR (default runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
out=${VAE_DEMO_DIR:-runs/demo}
.venv/bin/vae train --workdir "$out/train" --epochs 3 --overwrite
echo "demo: done; outputs in $(cd "$out" && pwd)"
