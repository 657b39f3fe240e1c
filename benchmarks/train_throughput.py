"""Training throughput of the project against a plain PyTorch VAE, side by side in one run.

The model is the 784-400-20 MLP VAE (Bernoulli, dynamically binarised Fashion-MNIST,
Adam 1e-3). Throughput is images per second, the median over the epochs after the
first. PyTorch runs its fast settings: fused Adam, `rand < p` binarisation, in-memory
tensors, 2 threads, in float32 and with bf16 autocast. The project runs its own `vae
train` code path (the in-memory input, the custom training loop) with evaluation cut to
a minimum, in float32 and with `--mixed-precision` (bf16 matrix products, float32
loss; on CPUs with AMX or AVX512-BF16 they run several times faster). The limit is the
float32 matrix-product rate divided by the FLOPs of one training image.

Usage (torch is a benchmark-only dependency: `pip install torch==2.13.0`):
    .venv/bin/python benchmarks/train_throughput.py --batch-sizes 128 1024 --epochs 4
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

FOLDER = "/usr/share/datasets/fashion-mnist"
# FLOPs of one training image of the 784-400-20 VAE (forward + backward ~ 3x forward).
FLOP_PER_IMAGE = 3 * 2 * (784 * 400 + 400 * 40 + 20 * 400 + 400 * 784)


def fashion_mnist_train() -> np.ndarray:
    with gzip.open(f"{FOLDER}/train-images-idx3-ubyte.gz", "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)


def torch_images_per_second(batch: int, epochs: int, autocast: bool = False) -> list[float]:
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.set_num_threads(os.cpu_count() or 2)
    torch.manual_seed(0)

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.mu, self.logvar = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, x):
            h = F.relu(self.fc1(x))
            mu, logvar = self.mu(h), self.logvar(h)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            return self.fc4(F.relu(self.fc3(z))), mu, logvar

    data = torch.from_numpy(fashion_mnist_train().astype(np.float32) / 255.0)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    steps = len(data) // batch
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(data))
        for i in range(steps):
            x = data[order[i * batch:(i + 1) * batch]]
            x = (torch.rand_like(x) < x).float()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits, mu, logvar = model(x)
            logits, mu, logvar = logits.float(), mu.float(), logvar.float()
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = (recon + kl) / batch
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        rates.append(steps * batch / (time.perf_counter() - start))
    return rates


def project_images_per_second(batch: int, epochs: int, data_dir: str, extra: list[str]) -> list[float]:
    from pipelines.config import RunConfig
    from pipelines.train import train

    config = RunConfig()
    for assignment in [
        "model.hidden_units=[400]", "model.latent_dim=20", f"train.batch_size={batch}",
        f"train.epochs={epochs}", "train.iwae_k=1", "train.eval_examples=500",
        "train.tensorboard=false", "train.learning_rate=1e-3", f'data.data_dir="{data_dir}"',
        *extra,
    ]:
        config = config.override(assignment)
    with tempfile.TemporaryDirectory() as workdir:
        metrics = train(config, workdir, verbose=0)
    steps = 60_000 // batch
    return [steps * batch / s for s in metrics["epoch_seconds"]]


def steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] or rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data-dir", default=os.path.expanduser("~/tensorflow_datasets"))
    parser.add_argument("--gflops", type=float, default=220.0,
                        help="the machine's float32 matmul rate, for the limit")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for the project")
    args = parser.parse_args()
    limit = args.gflops * 1e9 / FLOP_PER_IMAGE
    results = []
    for batch in args.batch_sizes:
        rates = {
            "project_float32": project_images_per_second(batch, args.epochs, args.data_dir, args.overrides),
            "project_mixed_bf16": project_images_per_second(
                batch, args.epochs, args.data_dir, [*args.overrides, "train.mixed_precision=true"]),
            "pytorch_float32": torch_images_per_second(batch, args.epochs),
            "pytorch_autocast_bf16": torch_images_per_second(batch, args.epochs, autocast=True),
        }
        row = {"batch": batch, **{k: round(steady(v)) for k, v in rates.items()}, "limit": round(limit)}
        results.append(row)
        print(json.dumps(row), flush=True)
    print("| batch | project float32 | project mixed bf16 | PyTorch float32 | PyTorch autocast bf16 "
          "| ratio float32 / PyTorch | ratio mixed / PyTorch | mixed, share of the limit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        torch_rate = r["pytorch_float32"]
        print(f"| {r['batch']} | {r['project_float32']:,} | {r['project_mixed_bf16']:,} | {torch_rate:,} "
              f"| {r['pytorch_autocast_bf16']:,} | {r['project_float32'] / torch_rate:.2f} "
              f"| {r['project_mixed_bf16'] / torch_rate:.2f} "
              f"| {r['project_mixed_bf16'] / r['limit']:.0%} of {r['limit']:,} |")


if __name__ == "__main__":
    main()
