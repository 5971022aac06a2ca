"""The `pcgen` command line (package pcgen): entry points and `pcgen generate`."""

import json
import subprocess
import sys

from pc_core.constraints.checker import check_text
from pc_core.hmm import HMM


def test_python_m_pcgen_is_the_pcgen_command():
    run = subprocess.run(
        [sys.executable, "-m", "pcgen", "--help"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    for command in ("compile", "import-hmm", "generate", "demo", "distill", "serve"):
        assert command in run.stdout


def test_generate_json_has_the_rest_response_shape(tiny_lm_dir, tokenizer, tmp_path, capsys):
    """`pcgen generate --json` prints what POST /generate answers, less id, model and cached: the service's own
    response schema accepts it once those three are added. The command runs in this process (`pcgen`'s main,
    as the entry point calls it; the entry point itself is the test above): no interpreter importing torch."""
    from pcgen.cli import main
    from service.schemas import GenerateResponse

    HMM.random(8, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id).save(tmp_path / "hmm")
    cmd = ["generate", "--lm", str(tiny_lm_dir), "--hmm", str(tmp_path / "hmm"),
           "--keywords", "dog", "park", "--prompt", "The", "--max-new-tokens", "10", "--num-return-sequences", "2",
           "--device", "cpu", "--json"]  # fmt: skip
    capsys.readouterr()
    assert main(cmd) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"outputs", "usage", "timings", "dfa_states", "guide", "keywords"}
    assert result["guide"] == "exact"
    # the keywords' accepted forms, as /generate lists them (the same serializer: service/response_body.py)
    polarities = [(k["keyword"], k["polarity"]) for k in result["keywords"]]
    assert polarities == [("dog", "required"), ("park", "required")]
    assert all(k["keyword"] in k["forms"] for k in result["keywords"])
    GenerateResponse.model_validate({**result, "id": "cli", "model": "tiny", "cached": False})
    assert len(result["outputs"]) == 2 and result["dfa_states"] > 1
    for output in result["outputs"]:
        assert output["constraint_satisfied"] and check_text({"keywords": ["dog", "park"]}, output["text"])
        assert {m["keyword"] for m in output["matches"]} == {"dog", "park"}
        for match in output["matches"]:
            assert output["text"][match["start"] : match["end"]].lower().startswith(match["keyword"])
    assert result["usage"]["completion_tokens"] == sum(len(o["token_ids"]) for o in result["outputs"])
    assert result["usage"]["prompt_tokens"] == len(tokenizer("The")["input_ids"])
    timings = result["timings"]
    assert set(timings) == {"queue_ms", "dfa_ms", "precompute_ms", "decode_ms", "total_ms"}
    assert timings["queue_ms"] == 0 and timings["total_ms"] >= timings["dfa_ms"] + timings["decode_ms"]

    assert main(cmd[:-1] + ["--max-new-tokens", "1"]) == 2
    assert "max_new_tokens=1" in capsys.readouterr().err
