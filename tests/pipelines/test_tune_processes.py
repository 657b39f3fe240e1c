"""`vae tune` as processes: SIGKILL and resume, and a chief with two workers on 127.0.0.1."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.tune.settings import PROJECT, RESULT, TRIAL_RECORD
from tests.pipelines.test_tune_space import TINY_OVERRIDES, TINY_SPACE, write_space

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300  # seconds a process may take on a busy 2-core machine


def tune_argv(tfds_dir, workdir, space, *flags):
    return ["--workdir", str(workdir), "--space", space, "--data-dir", tfds_dir, *flags,
            *TINY_OVERRIDES]


def start(argv, log_path: Path, **env):
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "tune", *argv], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env})


def records_of(workdir: Path) -> dict:
    records = {}
    for path in (workdir / PROJECT).glob(f"trial_*/{TRIAL_RECORD}"):
        try:
            records[path.parent.name] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            pass  # being replaced right now
    return records


def finish(process, log_path: Path, timeout: float = TIMEOUT) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
def test_killed_search_resumes_without_redoing_finished_trials(tfds_dir, tmp_path):
    workdir = tmp_path / "w"
    argv = tune_argv(tfds_dir, workdir, write_space(tmp_path, TINY_SPACE),
                     "--tuner", "random", "--max-trials", "3", "--max-epochs", "2")
    process = start(argv, tmp_path / "first.log")
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if any(r.get("result") for r in records_of(workdir).values()):
                break
            time.sleep(0.2)
        assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    before = records_of(workdir)
    done_before = {name: r["result"] for name, r in before.items() if r.get("result")}
    assert done_before and len(done_before) < 3 and not (workdir / RESULT).exists()

    assert cli.main(["tune", *argv]) == 0  # the same command again

    after = records_of(workdir)
    assert len(after) == 3 and all(r.get("result") for r in after.values())
    for name, result in done_before.items():
        assert after[name]["attempts"] == 1 and after[name]["result"] == result  # not redone
    interrupted = set(before) - set(done_before)  # running at the kill: retried once
    assert all(after[name]["attempts"] == 2 for name in interrupted)
    trials = json.loads((workdir / "trials.json").read_text())["trials"]
    assert len(trials) == 3 and all(t["status"] == "COMPLETED" for t in trials)
    assert (workdir / "exports" / "vae" / "1" / "saved_model.pb").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers_share_one_search(tfds_dir, tmp_path):
    workdir = tmp_path / "w"
    argv = tune_argv(tfds_dir, workdir, write_space(tmp_path, TINY_SPACE),
                     "--tuner", "random", "--max-trials", "4", "--max-epochs", "1")
    oracle = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(free_port())}
    # Workers may start before the chief: they wait for it.
    workers = [start(argv, tmp_path / f"tuner{i}.log", KERASTUNER_TUNER_ID=f"tuner{i}", **oracle)
               for i in range(2)]
    chief = start(argv, tmp_path / "chief.log", KERASTUNER_TUNER_ID="chief", **oracle)
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and chief.poll() is None:
            if any(w.poll() not in (None, 0) for w in workers):
                break  # a worker failed: the chief would wait for it
            time.sleep(0.5)
        assert "exported to" in finish(chief, tmp_path / "chief.log")
        for i, worker in enumerate(workers):
            assert "worker finished" in finish(worker, tmp_path / f"tuner{i}.log")
    finally:
        for process in (*workers, chief):
            if process.poll() is None:
                process.kill()

    records = records_of(workdir)
    assert len(records) == 4
    assert all(r["attempts"] == 1 and len(r["tuner_ids"]) == 1 and r.get("result")
               for r in records.values())  # every trial ran once, on one worker
    assert {r["tuner_ids"][0] for r in records.values()} == {"tuner0", "tuner1"}
    trials = json.loads((workdir / "trials.json").read_text())["trials"]
    assert sorted(t["trial_id"] for t in trials) == ["0", "1", "2", "3"]
    assert all(t["status"] == "COMPLETED" for t in trials)
    # Saved once more after the search: reopening it would not run a trial again.
    assert json.loads((workdir / PROJECT / "oracle.json").read_text())["ongoing_trials"] == {}
    result = json.loads((workdir / RESULT).read_text())
    assert Path(result["export"]) == workdir / "exports" / "vae" / "1"
