"""The commands in the READMEs cannot drift: every `pcgen ...` command in a fenced code block parses with
pcgen's own parser, every repository file it names exists, every directory a distill stage reads was written
by an earlier command of the same document; the cheap ones run end to end on tiny local models (the distill
chains, `distill run` on the example config, `compile`, `generate`), with the tiny models in place of hub ids
and tiny sizes in place of production ones. The Python snippets compile."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from pc_core.constraints.vocab import tokenizer_fingerprint
from pc_core.hmm import HMM
from pc_core.lm import check_pairing
from pcgen.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "service/README.md", "distill/README.md")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
SUFFIXES = (".yaml", ".yml", ".toml", ".json", ".txt", ".py", ".md", ".env")
READS = ("--data", "--init", "--heldout-data")  # distill inputs: written by an earlier command, or files


def blocks(doc: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer((ROOT / doc).read_text())]


def pcgen_commands(doc: str) -> list[tuple[str, list[str]]]:
    """(label, argv after `pcgen`) for each command line in the document's shell blocks: `pcgen ...`,
    `.venv/bin/pcgen ...`, `python -m pcgen[.cli] ...`, `torchrun ... -m pcgen.cli ...`, in order."""
    found = []
    for number, (lang, body) in enumerate(blocks(doc)):
        if lang not in SHELL_BLOCKS:
            continue
        pending = ""
        for line in body.replace("\\\n", " ").splitlines():
            if not pending and line.lstrip().startswith("#"):
                continue
            try:  # a quoted argument may span lines (curl -d '{...}')
                words = shlex.split(pending + line, comments=True)
            except ValueError:
                pending += line + "\n"
                continue
            pending = ""
            for cut, word in enumerate(words):  # the first command of a pipeline or list
                if word in ("|", "&&", "||", ";", ">", ">>"):
                    words = words[:cut]
                    break
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value before the command
                words = words[1:]
            argv = None
            if words and (words[0] == "pcgen" or words[0].endswith("/bin/pcgen")):
                argv = words[1:]
            for i, word in enumerate(words[:-1]):  # python -m pcgen, torchrun ... -m pcgen.cli
                if argv is None and word == "-m" and words[i + 1] in ("pcgen", "pcgen.cli"):
                    argv = words[i + 2 :]
            if argv:
                via = "" if words[0].endswith("pcgen") else f" (via {words[0]})"
                found.append((f"{doc} block {number}{via}: pcgen {' '.join(argv)[:60]}", argv))
    return found


ALL = [command for doc in DOCS for command in pcgen_commands(doc)]


def test_the_documents_have_commands():
    counts = {doc: len(pcgen_commands(doc)) for doc in DOCS}
    assert counts["README.md"] >= 10 and counts["distill/README.md"] >= 6 and counts["service/README.md"] >= 1


@pytest.mark.parametrize("argv", [argv for _, argv in ALL], ids=[label for label, _ in ALL])
def test_every_command_parses(argv):
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit:
        pytest.fail(f"pcgen {shlex.join(argv)}: argparse exited with {exit.code}")


def _repo_path(value: str) -> bool:
    """Does an argument name a file of this repository (rather than an output, a hub id or a placeholder)?"""
    if value.startswith(("-", "/", "~", "$")) or "://" in value or "{" in value:
        return False
    first = value.split("/")[0]
    return ("/" in value and (ROOT / first).exists()) or value.endswith(SUFFIXES)


@pytest.mark.parametrize("doc", DOCS)
def test_referenced_files_exist_and_inputs_come_from_earlier_commands(doc):
    written: set[str] = set()
    for label, argv in pcgen_commands(doc):
        for flag, value in zip(argv, argv[1:]):
            if flag == "--out":
                written.add(value.rstrip("/"))
            elif flag in READS:
                assert value.rstrip("/") in written or (ROOT / value).exists(), (
                    f"{label}: {flag} {value} is neither written by an earlier command nor a file"
                )
        for value in argv:
            produced = any(value == w or value.startswith(w + "/") for w in written)
            if not produced and _repo_path(value):
                assert (ROOT / value).exists(), f"{label}: {value} does not exist in the repository"


def test_python_snippets_compile():
    snippets = [(doc, body) for doc in DOCS for lang, body in blocks(doc) if lang == "python"]
    assert len(snippets) >= 3
    for doc, body in snippets:
        compile(body, f"<{doc} snippet>", "exec")


# ---------------------------------------------------------------------------------------------- running them

TINY_SIZES = {"--num-sequences": "96", "--save-embeddings": "64", "--hidden-size": "6", "--steps": "2",
              "--chunk-size": "64", "--max-new-tokens": "12"}  # fmt: skip
TINY_EXTRAS = {
    "sample": ["--seq-len", "12", "--shard-size", "32", "--batch-size", "16", "--device", "cpu"],
    "lvd": ["--kmeans-iters", "10", "--device", "cpu"],
    "train": ["--heldout", "16", "--batch-size", "32", "--device", "cpu", "--no-plot"],
    "generate": ["--device", "cpu"],
}
OUTPUTS = ("--out", *READS)


def tiny(argv: list[str], models: dict[str, str], workdir: Path) -> list[str]:
    """The command on tiny local models, sizes and a scratch directory."""
    out = []
    for i, word in enumerate(argv):
        flag = argv[i - 1] if i else ""
        if flag in ("--lm", "--tokenizer", "--hmm"):
            word = models[flag]
        elif flag in TINY_SIZES:
            word = TINY_SIZES[flag]
        elif flag in OUTPUTS:
            word = str(workdir / word)
        out.append(word)
    stage = out[1] if out[0] == "distill" else out[0]
    return out + TINY_EXTRAS.get(stage, [])


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_lm_dir, tokenizer):
    hmm = HMM.random(8, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)
    hmm.metadata.update(lm=str(tiny_lm_dir), tokenizer_fingerprint=tokenizer_fingerprint(tokenizer))
    hmm_dir = hmm.save(tmp_path_factory.mktemp("docs-hmm") / "hmm")
    return {"--lm": str(tiny_lm_dir), "--tokenizer": str(tiny_lm_dir), "--hmm": str(hmm_dir)}


@pytest.mark.parametrize("doc", ["README.md", "distill/README.md"])
def test_the_distill_chain_runs(doc, models, tokenizer, tmp_path):
    """sample -> lvd -> train exactly as the document writes them (sizes shrunk): each stage finds what the
    one before wrote, and the HMM records the LM and tokenizer it was distilled for."""
    stages = ("sample", "lvd", "train")
    commands = pcgen_commands(doc)
    chain = [
        argv
        for label, argv in commands
        if argv[0] == "distill"
        and argv[1] in stages
        and "(via " not in label
        and "--server" not in argv  # needs live servers: tests/distill/test_distill_server.py runs that path
    ]
    assert [argv[1] for argv in chain if argv[1] != "sample"] == ["lvd", "train"]
    for argv in chain:
        assert main(tiny(argv, models, tmp_path)) == 0, argv
    (hmm_dir,) = [tmp_path / argv[argv.index("--out") + 1] for argv in chain if argv[1] == "train"]
    hmm = HMM.load(hmm_dir)
    assert hmm.metadata["lm"] == models["--lm"]
    assert hmm.metadata["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert check_pairing(hmm, tokenizer, models["--lm"]) == "match"


def test_the_example_pipeline_config_runs(models, tmp_path):
    """`pcgen distill run --config distill/gpt2-large-4096.yaml` with the tiny LM and tiny sizes."""
    (argv,) = {tuple(argv) for _, argv in ALL if argv[:2] == ["distill", "run"]}
    config = yaml.safe_load((ROOT / argv[argv.index("--config") + 1]).read_text())
    assert config["out"].startswith("../runs/")  # relative to the file: runs/ at the repository root
    config.update(lm=models["--lm"], out="run", device="cpu")
    small = {"num_sequences": 96, "save_embeddings": 64, "seq_len": 12, "batch_size": 16, "shard_size": 32}
    config["sample"] = {k: small.get(k, v) for k, v in config["sample"].items()} | {"shard_size": 32}
    config["em_sample"] = {k: small.get(k, v) for k, v in config["em_sample"].items()} | {"shard_size": 32}
    config["lvd"] |= {"hidden_size": 6, "kmeans_iters": 10}
    config["train"] |= {"steps": 2, "chunk_size": 64, "batch_size": 32, "heldout": 16, "plot": False}
    (tmp_path / "distill.yaml").write_text(yaml.safe_dump(config))
    assert main(["distill", "run", "--config", str(tmp_path / "distill.yaml")]) == 0
    assert HMM.load(tmp_path / "run" / "hmm").hidden_size == 6


@pytest.mark.parametrize(
    "argv",
    [argv for _, argv in ALL if argv[0] in ("compile", "generate")],
    ids=[label for label, argv in ALL if argv[0] in ("compile", "generate")],
)
def test_compile_and_generate_commands_run(argv, models, tmp_path, capsys):
    assert main(tiny(argv, models, tmp_path)) == 0
    out = capsys.readouterr().out
    assert ("'dog' (case natural)" in out) if argv[0] == "compile" else ("[ok," in out)
