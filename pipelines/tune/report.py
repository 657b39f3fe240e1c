"""The trials of a search as a table (printed), `trials.csv`, `trials.json` and `objective.png`."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from keras_tuner.engine.trial import TrialStatus

from core.files import write_json_atomic, write_text_atomic
from pipelines.tune.settings import OBJECTIVE_PLOT, TRIALS_CSV, TRIALS_JSON

# Columns before the hyperparameters; `objective` is the search's objective value.
FIXED_COLUMNS = ("rank", "trial_id", "status", "objective", "val_loss", "iwae_nll", "epochs",
                 "continues", "wall_seconds", "tuner_ids")


def _finite(value):
    """A float for JSON: None for a missing, NaN or infinite value."""
    return float(value) if value is not None and math.isfinite(value) else None


def _metric(trial, name: str):
    return _finite(trial.metrics.get_last_value(name)) if trial.metrics.exists(name) else None


def trial_rows(oracle, space, objective: str, trial_dirs: dict | None = None) -> list[dict]:
    """One row per trial, ranked by the objective (lower is better): the finished
    trials first (rank 1 = best), then the failed or unfinished ones by id.

    Args:
        oracle: the search's oracle (the chief's, in distributed tuning).
        space: the `SearchSpace` (names and values of the hyperparameters).
        objective: the objective's metric name.
        trial_dirs: trial id -> its `run.json` record, when readable (tuner ids).
    """
    rows = []
    for trial in oracle.trials.values():
        values = trial.hyperparameters.values
        done = trial.status == TrialStatus.COMPLETED and trial.score is not None
        epochs = values.get("tuner/epochs", _metric(trial, "epochs"))
        record = (trial_dirs or {}).get(trial.trial_id) or {}
        rows.append({
            "rank": None,
            "trial_id": trial.trial_id,
            "status": trial.status,
            "objective": _finite(trial.score) if done else None,
            "val_loss": _metric(trial, "val_loss"),
            "iwae_nll": _metric(trial, "iwae_nll"),
            "epochs": int(epochs) if epochs is not None else None,
            "continues": values.get("tuner/trial_id"),
            "wall_seconds": _metric(trial, "wall_seconds"),
            "tuner_ids": record.get("tuner_ids"),
            "hyperparameters": space.decoded(values),
        })
    finished = sorted((r for r in rows if r["objective"] is not None),
                      key=lambda r: (r["objective"], int(r["trial_id"])))
    for rank, row in enumerate(finished, 1):
        row["rank"] = rank
    others = sorted((r for r in rows if r["rank"] is None), key=lambda r: int(r["trial_id"]))
    if objective != "iwae_nll":
        for row in rows:
            row.pop("iwae_nll")
    return finished + others


def _flat(row: dict) -> dict:
    flat = {k: v for k, v in row.items() if k != "hyperparameters"}
    flat.update(row["hyperparameters"])
    return flat


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), separators=(",", ":"))
    return str(value)


def table(rows: list[dict], objective: str) -> str:
    """The trials as an aligned text table, best first."""
    if not rows:
        return "no trials"
    flat = [_flat(r) for r in rows]
    hidden = {"tuner_ids"} | ({"val_loss"} if objective == "val_loss" else set())  # = objective
    columns = [c for c in flat[0] if c not in hidden]
    header = {c: (objective if c == "objective" else c.replace("model.", "").replace("train.", ""))
              for c in columns}
    cells = [[_text(r.get(c)) for c in columns] for r in flat]
    widths = [max(len(header[c]), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(header[c].ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def write_csv(rows: list[dict], path: Path) -> Path:
    flat = [_flat(r) for r in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]) if flat else list(FIXED_COLUMNS))
    writer.writeheader()
    for row in flat:
        writer.writerow({k: _text(v) if isinstance(v, (list, tuple)) else v for k, v in row.items()})
    write_text_atomic(path, buffer.getvalue())
    return path


def write_json(rows: list[dict], path: Path, **summary) -> Path:
    write_json_atomic(path, {**summary, "trials": rows})
    return path


def plot(rows: list[dict], path: Path, objective: str, title: str = "") -> Path:
    """The objective of each finished trial against its trial number, with the best so far."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    done = sorted((r for r in rows if r["rank"] is not None), key=lambda r: int(r["trial_id"]))
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if done:
        x = [int(r["trial_id"]) for r in done]
        y = [r["objective"] for r in done]
        epochs = [r["epochs"] or 1 for r in done]
        points = axes.scatter(x, y, c=epochs, cmap="viridis", zorder=3, label="trial")
        if len(set(epochs)) > 1:
            figure.colorbar(points, ax=axes, label="epochs")
        best, best_so_far = math.inf, []
        for value in y:
            best = min(best, value)
            best_so_far.append(best)
        axes.step(x, best_so_far, where="post", color="tab:red", label="best so far")
        winner = min(done, key=lambda r: r["objective"])
        axes.scatter([int(winner["trial_id"])], [winner["objective"]], marker="*", s=250,
                     color="tab:red", zorder=4, label=f"best: trial {winner['trial_id']}")
        axes.legend(loc="upper right")
    else:
        axes.text(0.5, 0.5, "no finished trial", ha="center", va="center", transform=axes.transAxes)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial")
    axes.set_ylabel(f"{objective} (nats, lower is better)")
    axes.set_title(title or f"{objective} by trial")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return path


def write_report(rows: list[dict], workdir: Path, objective: str, **summary) -> dict[str, Path]:
    """Writes trials.csv, trials.json and objective.png into `workdir`."""
    return {
        "csv": write_csv(rows, workdir / TRIALS_CSV),
        "json": write_json(rows, workdir / TRIALS_JSON, objective=objective, **summary),
        "plot": plot(rows, workdir / OBJECTIVE_PLOT, objective,
                     title=f"vae tune ({summary.get('tuner', '')}): {objective} by trial"),
    }
