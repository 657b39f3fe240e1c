"""The docs stay true: README.md, docs/ and the manifests in deploy/k8s/.

- Every `vae ...` command in a code block of README.md or docs/ parses with the real
  parser (`pipelines.cli.build_parser`; argparse only, nothing runs) and uses no hidden
  (deprecated) spelling; every `--flag` named in the prose exists on its subcommand (or,
  with none named, on some subcommand). These tests import no TensorFlow.
- Every Python snippet in them runs against a small export served on 127.0.0.1 (gRPC and
  REST), unless an HTML comment `<!-- illustration ... -->` right before it says it is
  one (a snippet that needs a conditional model, certificates, ...).
- `mkdocs build --strict` passes; the Kubernetes manifests validate offline against the
  Kubernetes schemas (kubernetes-validate ships them) and agree with serving/ and the CLI.
- README.md stays short, and its headline figures are the ones in benchmarks/README.md.

The generated reference pages (docs/reference/) are checked by their generator's test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37.0"
# Flags of other programs named in the prose (Docker's, here).
FOREIGN_FLAGS = {"--cpuset-cpus"}
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}


def doc_files() -> list[Path]:
    """README.md and the hand-written pages of docs/."""
    pages = sorted(p for p in (ROOT / "docs").rglob("*.md") if "reference" not in p.relative_to(ROOT / "docs").parts)
    return [README, *pages]


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    illustration: bool  # an `<!-- illustration ... -->` comment right before it

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S)


def code_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        illustration = bool(before) and before[-1].strip().startswith("<!-- illustration")
        indent = len(match["indent"])
        body = "\n".join(line[indent:] for line in match["body"].splitlines())
        blocks.append(Block(path, text.count("\n", 0, match.start()) + 1, match["lang"].lower(), body, illustration))
    return blocks


def prose(path: Path) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", path.read_text())


def shell_commands(block: Block) -> list[list[str]]:
    """The commands of a shell block as argv lists: continuation lines joined; comments,
    leading VAR=value assignments, and everything from a redirection, `&`, `&&`, `||` or
    `|` on dropped."""
    commands = []
    for line in block.text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]
        for end, word in enumerate(words):  # redirections and a second command end it
            if word in {"&", "&&", "||", "|", ";"} or re.match(r"\d?>", word):
                words = words[:end]
                break
        if words:
            commands.append(words)
    return commands


def vae_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `vae`) of every vae command in a code block."""
    found = []
    for path in doc_files():
        for block in code_blocks(path):
            if block.language not in SHELL_LANGUAGES:
                continue
            for words in shell_commands(block):
                if Path(words[0]).name == "vae":
                    found.append((block.where, words[1:]))
    return found


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    from pipelines.cli import build_parser

    return build_parser()


def subparsers(parser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def parse(parser, argv: list[str]) -> str | None:
    """None when `vae ARGV` parses (or asks for help), else argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exit:
        return None if exit.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def current_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings a parser shows: not hidden flags (help suppressed) nor the old
    spellings of renamed ones (`core.cli.add_old_spelling`)."""
    return {flag for flag, action in parser._option_string_actions.items()
            if action.help != argparse.SUPPRESS and flag not in getattr(action, "old_spellings", ())}


def hidden_flags_used(parser, argv: list[str]) -> list[str]:
    """The deprecated (hidden) spellings among the flags of `vae ARGV`."""
    sub = subparsers(parser).get(argv[0]) if argv else None
    if sub is None:
        return []
    shown = current_flags(sub) | current_flags(parser)
    used = []
    for word in argv[1:]:
        if word == "--":  # Beam's own flags follow
            break
        flag = word.split("=", 1)[0]
        if flag.startswith("-") and flag in sub._option_string_actions and flag not in shown:
            used.append(flag)
    return used


# === Commands and flags (no TensorFlow) ===
def test_the_docs_hold_vae_commands_for_every_subcommand(parser):
    named = {argv[0] for _, argv in vae_commands() if argv}
    assert set(subparsers(parser)) <= named, f"no example of: {sorted(set(subparsers(parser)) - named)}"


@pytest.mark.parametrize("where, argv", vae_commands(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_vae_command_in_the_docs_parses(parser, where, argv):
    assert parse(parser, argv) is None, f"{where}: vae {shlex.join(argv)}\n{parse(parser, argv)}"
    assert not hidden_flags_used(parser, argv), f"{where}: deprecated {hidden_flags_used(parser, argv)}"


def test_the_demo_script_uses_current_flags(parser):
    script = ROOT / "scripts" / "demo.sh"
    text = script.read_text().replace("$port", "8500")
    commands = [words[1:] for words in shell_commands(Block(script, 1, "bash", text, False))
                if words[0] == "$vae"]
    assert {argv[0] for argv in commands} == {"train", "serve", "generate", "encode"}
    for argv in commands:
        assert parse(parser, argv) is None and not hidden_flags_used(parser, argv), shlex.join(argv)


def test_the_parse_check_rejects_a_flag_that_does_not_exist_or_is_deprecated(parser):
    assert parse(parser, ["train", "--workdir", "w", "--no-such-flag"]) is not None
    assert hidden_flags_used(parser, ["encode", "--model", "e", "--out", "o", "--npy", "x.npy"]) == ["--model", "--out"]
    assert hidden_flags_used(parser, ["train", "--workdir", "w", "--labels", "l.npy"]) == ["--labels"]
    assert hidden_flags_used(parser, ["generate", "--labels", "0,1"]) == []
    assert parse(parser, ["tune", "--workdir", "w", "--kind", "cvae"]) is None


def test_config_overrides_in_the_docs_name_real_fields():
    from pipelines.config import RunConfig

    defaults = RunConfig()
    sections = {f.name: {g.name for g in dataclasses.fields(getattr(defaults, f.name))}
                for f in dataclasses.fields(defaults)}
    bad = []
    for where, argv in vae_commands():
        for word in argv:
            match = re.fullmatch(r"(model|data|train)\.([a-z_0-9]+)=.*", word)
            if match and match[2] not in sections[match[1]]:
                bad.append(f"{where}: {word}")
    assert not bad, bad


INLINE = re.compile(r"`([^`\n]+)`")
FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*(?!\w)")


def test_every_flag_named_in_the_prose_exists(parser):
    subs = subparsers(parser)
    everywhere = current_flags(parser).union(*(current_flags(sub) for sub in subs.values()))
    missing = []
    for path in doc_files():
        for span in INLINE.findall(prose(path)):
            words = span.split()
            if words[0] != "vae" and not words[0].startswith("-"):
                continue  # another program's command line (`tensorboard --logdir runs/`)
            sub = subs.get(words[1]) if len(words) > 1 and words[0] == "vae" else None
            for flag in FLAG.findall(span):
                if flag in FOREIGN_FLAGS:
                    continue
                known = current_flags(sub) | current_flags(parser) if sub else everywhere
                if flag not in known:
                    missing.append(f"{path.relative_to(ROOT)}: `{span}`")
    assert not missing, "flags that no subcommand has:\n" + "\n".join(missing)


# === README ===
def test_readme_is_short_and_opens_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    first = code_blocks(README)[0]
    assert [line.split("#")[0].strip() for line in first.text.splitlines()] == [
        "bash scripts/demo.sh", "bash scripts/test.sh"]


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_figures_are_the_benchmarks_and_link_to_them():
    benchmarks = (ROOT / "benchmarks" / "README.md").read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", benchmarks, re.M)}
    rows = [line for line in README.read_text().splitlines() if "benchmarks/README.md#" in line]
    assert len(rows) >= 5
    for row in rows:
        anchor = re.search(r"benchmarks/README\.md#([\w-]+)", row)[1]
        assert anchor in anchors, row
        figure = row.split("|")[2]
        for number in re.findall(r"\d[\d,]*\.\d+|\d{1,3}(?:,\d{3})+", figure):
            assert number in benchmarks, f"{number} (README: {row}) is not in benchmarks/README.md"


# === Python snippets ===
def python_blocks() -> list[Block]:
    return [b for path in doc_files() for b in code_blocks(path) if b.language == "python"]


def test_python_snippets_are_run_or_marked_as_illustrations():
    blocks = python_blocks()
    run = [b for b in blocks if not b.illustration]
    assert len(run) >= 5, [b.where for b in run]
    for block in blocks:  # an illustration says why, so that a runnable one is not hidden
        if block.illustration:
            text = block.path.read_text().splitlines()[: block.line - 1]
            marker = [line for line in text if line.strip()][-1]
            assert re.match(r"<!-- illustration: \S.* -->", marker.strip()), block.where


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A small VAE exported as version 1 of `vae` and served on 127.0.0.1 (gRPC and REST)."""
    sys.path.insert(0, str(ROOT / "tests" / "serving"))
    from serving_testlib import METRICS, RUN_CONFIG, build_vae, start_server

    from serving.export import export_model
    from serving.rest import RestOptions

    version = export_model(build_vae(0), tmp_path_factory.mktemp("exports"), run_config=RUN_CONFIG, metrics=METRICS)
    server = start_server(version.parent, poll_seconds=0, rest=RestOptions(port=0, num_threads=2))
    yield {"127.0.0.1:8500": f"127.0.0.1:{server.port}", "127.0.0.1:8501": f"127.0.0.1:{server.rest.port}",
           "exports/vae": str(version.parent)}
    server.stop(grace=1)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in python_blocks() if not b.illustration], ids=lambda b: b.where)
def test_python_snippet_runs_against_a_served_export(block, served):
    code = block.text
    for written, real in served.items():  # the docs' addresses and paths -> this test's
        code = code.replace(written, real)
    exec(compile(code, block.where, "exec"), {"__name__": "__docs__"})


# === The site ===
@pytest.mark.slow
def test_mkdocs_builds_the_site_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # the theme's notice, not a build warning
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client_page = (tmp_path / "site" / "client" / "index.html").read_text()
    assert "wait_until_ready" in client_page and "Blocks until a version is AVAILABLE" in client_page


# === Kubernetes manifests ===
def manifests() -> list[tuple[str, dict]]:
    import yaml

    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


def resource(kind: str, name: str) -> dict:
    return next(doc for _, doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name)


@pytest.mark.parametrize("where, doc", manifests(), ids=lambda v: v if isinstance(v, str) else None)
def test_manifest_validates_against_the_kubernetes_schema(where, doc):
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises ValidationError


def test_the_schema_check_rejects_a_broken_manifest():
    import kubernetes_validate

    broken = json.loads(json.dumps(resource("Deployment", "vae-serving")))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_k8s_server_serves_what_the_exporter_writes_as_compose_does():
    import yaml
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from serving import contract as C

    config = resource("ConfigMap", "vae-serving-config")["data"]
    models = text_format.Parse(config["models.config"], model_server_config_pb2.ModelServerConfig())
    ours = text_format.Parse((ROOT / "serving" / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())
    assert models == ours
    pod = resource("Deployment", "vae-serving")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["exports"] == models.model_config_list.config[0].base_path == C.CONTAINER_MODEL_BASE_PATH
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["tfserving"]
    assert container["image"] == compose["image"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    assert flags["model_config_file"] == f"{mounts['config']}/models.config"
    assert flags["monitoring_config_file"] == f"{mounts['config']}/monitoring.config"
    assert "enable_batching" not in flags
    assert {p["containerPort"] for p in container["ports"]} == {C.GRPC_PORT, C.REST_PORT}
    monitoring = config["monitoring.config"]
    annotations = pod["metadata"]["annotations"]
    assert f'path: "{annotations["prometheus.io/path"]}"' in monitoring
    assert annotations["prometheus.io/port"] == str(C.REST_PORT)


def test_k8s_training_job_gives_each_worker_a_tf_config_of_the_whole_cluster(parser):
    job = resource("Job", "vae-train")
    service = resource("Service", "vae-train")
    spec = job["spec"]
    script = spec["template"]["spec"]["containers"][0]["args"][0]
    assert spec["completionMode"] == "Indexed" and spec["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    exported, command = script.split("&&")
    for index in range(spec["completions"]):
        value = shlex.split(exported.replace("${JOB_COMPLETION_INDEX}", str(index)))[1].split("=", 1)[1]
        tf_config = json.loads(value)
        workers = tf_config["cluster"]["worker"]
        assert workers == [f"{job['metadata']['name']}-{i}.{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
                           for i in range(spec["completions"])]
        assert tf_config["task"] == {"type": "worker", "index": index}
    words = shlex.split(command)
    assert words[:2] == ["exec", "vae"] and parse(parser, words[2:]) is None
