"""The CommonGen quality harness end to end on a CommonGen-shaped dataset the test writes (tiny models)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.commongen import lemma_coverage, load_dev, main, score

ROOT = Path(__file__).resolve().parents[2]

SETS = [
    ("dog_N#frisbee_N#catch_V", ["The dog caught a frisbee.", "A dog catches the frisbee in the park."]),
    ("man_N#field_N#stand_V", ["A man stands in the field."]),
    ("cat_N#couch_N", ["The cat sat on the couch.", "Cats sleep on couches."]),
]


def write_dataset(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines, forms = [], []
    for concept_set, scene in SETS:
        lines.append(json.dumps({"concept_set": concept_set, "scene": scene}))
        concepts = [c.split("_")[0] for c in concept_set.split("#")]
        forms.append(json.dumps([[c, c + "s", c.capitalize()] for c in concepts]))
    (directory / "commongen.dev.jsonl").write_text("\n".join(lines) + "\n")
    (directory / "dev.constraint.json").write_text("\n".join(forms) + "\n")
    return directory


def test_scores_follow_their_definitions(tmp_path):
    rows = load_dev(write_dataset(tmp_path / "data"))
    assert [r["concepts"] for r in rows][1] == ["man", "field", "stand"]
    perfect = score(rows, [r["refs"][0] for r in rows])
    assert perfect["BLEU-4"] > 99 and perfect["ROUGE-L"] > 99
    assert perfect["satisfied %"] == 100.0 and perfect["lemma coverage %"] == 100.0
    # "stood" satisfies "stand" (inflections); a missing concept fails the set
    partial = score(rows, ["the dog caught a frisbee", "a man stood in a field", "the cat sat"])
    assert round(partial["satisfied %"], 1) == 66.7
    assert partial["BLEU-4"] < perfect["BLEU-4"]
    assert lemma_coverage(["stand", "field"], "He stood there.") == 0.5


def harness(monkeypatch, capsys, args: list[str]) -> str:
    """`python -m benchmarks.commongen ARGS` in this process (its main reads sys.argv): what it printed. The
    module's command line itself is run as a process by test_missing_dataset_is_a_clean_skip."""
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "argv", ["python -m benchmarks.commongen", *args])
        main()
    return capsys.readouterr().out


def test_harness_runs_all_systems_and_caches_outputs(tmp_path, model_env, monkeypatch, capsys):
    data = write_dataset(tmp_path / "data")
    report = tmp_path / "quality.md"
    command = ["--lm", model_env["PCGEN_LM"], "--hmm", model_env["PCGEN_HMM"], "--data", str(data),
               "--work", str(tmp_path / "work"), "--beams", "2", "--max-new-tokens", "12", "--report", str(report)]  # fmt: skip
    first = harness(monkeypatch, capsys, command)
    assert "pcgen-H16: 1/3" in first  # decoded (and reported its progress) the first time
    table = {
        cells[0]: cells[1:]
        for line in report.read_text().splitlines()
        if line.startswith("| ") and not line.startswith("| system")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(table) == {"unconstrained", "mask-only", "pcgen-H16"}
    assert float(table["pcgen-H16"][0]) == 100.0  # every output satisfies its constraint
    outputs = tmp_path / "work" / "beams2-n3" / "pcgen-H16.jsonl"
    assert len(outputs.read_text().splitlines()) == len(SETS)
    # outputs are cached: a rerun decodes nothing and reports the same numbers
    before = outputs.read_text()
    second = harness(monkeypatch, capsys, command)
    assert outputs.read_text() == before
    assert "pcgen-H16: 1/3" not in second


def test_missing_dataset_is_a_clean_skip(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.commongen", "--lm", "unused", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0 and "not found" in out.stdout
