"""JSON Schema generation with the proxy LM: the guided decoder against a mask-only decoder.

    python -m benchmarks.json_generation [--schemas 200] [--max-new-tokens 60] [--modes greedy sample]

Schemas: MaskBench's shared subset (../shared/data/jsonschema) in a seeded order that takes one schema from
each group in turn (benchmarks.json_step.sample_across_groups); the first `--schemas` that compile for the
proxy's tokenizer and whose shortest document fits `--max-new-tokens` are kept (the proxy LM has 64
positions, so longer documents cannot be generated at all; the rest are counted by reason). For each schema
and decoding mode (greedy; sampling at temperature 1, seeded), from the BOS token alone:

* guided: `pc_core.decoding` as a request runs it (automaton, HMM guide, q(x) exactly 0 where no document
  can be finished in the tokens left);
* mask-only: the same LM and the same automaton with no lookahead, as XGrammar / Outlines / LLGuidance do:
  a token is forbidden only when its successor state cannot reach an accepting state at all, whatever the
  tokens left.

Every output is judged by the `jsonschema` library (`validator_for(schema)` with its format checker) after
`json.loads`: an output is valid and complete when its text is a whole document the schema accepts (ended
by EOS, or complete exactly at max_new_tokens), unfinished when max_new_tokens ran out inside the document.
The guided decoder must be 100% valid and complete; the table gives the share of the mask-only decoder's
outputs left unfinished at the same max_new_tokens. Writes docs/quality.md, section "json-generation".
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time

import torch

from benchmarks._report import SHARED, command, load_proxy_models, machine, table, write_section
from benchmarks.json_step import DATA, load_rows, sample_across_groups

MODELS = SHARED / "models" / "commongen-proxy"


def judge(schema: dict, text: str, ended: bool) -> str:
    """'valid' (a complete document the schema accepts, whether EOS or max_new_tokens ended it),
    'unfinished' (no EOS within max_new_tokens and not a JSON document), 'not JSON' (EOS after text that is
    not one), 'invalid' (a JSON document the schema rejects)."""
    import jsonschema

    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return "not JSON" if ended else "unfinished"
    cls = jsonschema.validators.validator_for(schema)
    ok = cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(data)
    return "valid" if ok else "invalid"


def live_states(dfa) -> torch.Tensor:
    """(S,) bool: states from which some continuation is accepted (no bound on its length)."""
    return torch.from_numpy(dfa.steps_to_accept >= 0)


@torch.no_grad()
def mask_only(lm, tokenizer, dfa, max_new_tokens: int, sample: bool, seed: int = 0) -> tuple[list[int], bool]:
    """Decode with the automaton's mask alone: (token ids without EOS, ended with EOS)."""
    from pc_core.lm import KVBatch

    live = live_states(dfa)
    transitions = torch.from_numpy(dfa.transitions).long()  # (S, C)
    token_class = torch.from_numpy(dfa.token_class).long()  # (V,)
    v = dfa.vocab_size
    generator = torch.Generator().manual_seed(seed)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    kv, logits = KVBatch.prefill(lm, [bos])  # as pc_core.decoding starts from an empty prompt
    state, ids = dfa.initial_state, []
    deep, syntax = dfa.deep_values, None  # undeclared values past max_depth: the syntax's mask too
    if deep is not None:
        from pc_core.constraints.json_syntax import token_bytes_for

        vocab, syntax = token_bytes_for(tokenizer), deep.start()
        touches = deep.touches(dfa)  # (S,) in or next to a deep value
    for _ in range(max_new_tokens):
        successor = transitions[state][token_class]  # (V,)
        logits = logits[0, :v].masked_fill(~live[successor], float("-inf"))  # (V,)
        if deep is not None:  # what the JSON syntax refuses (a mask: no completion bound)
            allowed = torch.isfinite(logits).nonzero().reshape(-1).numpy()
            allowed = allowed if touches[state] else allowed[vocab.is_through[allowed]]
            moves = deep.moves(vocab, syntax, allowed)
            refused = [t for t, after in zip(allowed.tolist(), moves) if after is None]
            logits[refused] = float("-inf")
        if sample:
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        else:
            token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            return ids, True
        ids.append(token)
        state = int(successor[token])
        syntax = deep.advance(syntax, token) if deep is not None else None
        kv, logits = kv.forward(lm, torch.tensor([token]))
    return ids, False


def guided(lm, search) -> tuple[list[int], bool]:
    """Run a prepared search to the end: (token ids without EOS, ended with EOS or the automaton's end)."""
    from pc_core.decoding import run_to_end

    best = run_to_end(lm, search).sequences[0]
    return best.token_ids, best.finish_reason == "eos"


def select(tokenizer, rows: list[dict], args) -> tuple[list[tuple[dict, object]], collections.Counter]:
    """The first `args.schemas` rows that compile and fit max_new_tokens, with their automata."""
    from pc_core.constraints import compile_constraint
    from pc_core.errors import ConstraintError, ConstraintTooComplex

    chosen, passed = [], collections.Counter()
    for row in rows:
        if len(chosen) >= args.schemas:
            break
        try:
            dfa = compile_constraint({"json_schema": row["schema"]}, tokenizer, time_budget_s=args.timeout)
        except ConstraintTooComplex:
            passed["over the compile budget"] += 1
            continue
        except (ConstraintError, RecursionError):
            passed["not compiled (422)"] += 1
            continue
        need = int(dfa.steps_to_accept[dfa.initial_state])
        if not 0 <= need <= args.max_new_tokens:
            passed[f"shortest document over {args.max_new_tokens} tokens"] += 1
            continue
        chosen.append((row, dfa))
    return chosen, passed


def run_schema(lm, tokenizer, hmm, row: dict, mode: str, args) -> dict:
    from benchmarks.json_step import compiled_request
    from pc_core.constraints import decode_continuation
    from pc_core.decoding import prepare
    from pc_core.params import DecodeParams

    sample = mode == "sample"
    params = DecodeParams(max_new_tokens=args.max_new_tokens, do_sample=sample, seed=args.seed,
                          time_budget_s=args.timeout)  # fmt: skip
    started = time.perf_counter()
    search = prepare(tokenizer, hmm, compiled_request(tokenizer, row["schema"], params), "", params)
    ids, ended = guided(lm, search)
    guided_s = time.perf_counter() - started
    text = decode_continuation(tokenizer, ids)
    masked_ids, masked_ended = mask_only(lm, tokenizer, search.dfa, args.max_new_tokens, sample, args.seed)
    masked_text = decode_continuation(tokenizer, masked_ids)
    return {
        "id": row["id"],
        "group": row["group"],
        "mode": mode,
        "guide": search.output.guide,
        "guided": judge(row["schema"], text, ended),
        "guided_text": text,
        "guided_tokens": len(ids),
        "guided_s": guided_s,
        "masked": judge(row["schema"], masked_text, masked_ended),
        "masked_text": masked_text,
        "masked_tokens": len(masked_ids),
    }


def render(results: list[dict], chosen: int, passed: collections.Counter, args) -> str:
    groups = sorted({r["group"] for r in results})
    body = []
    for mode in args.modes:
        for group in groups + ["all"]:
            rs = [r for r in results if r["mode"] == mode and group in ("all", r["group"])]
            count = collections.Counter
            g, m = count(r["guided"] for r in rs), count(r["masked"] for r in rs)
            body.append([mode, group, len(rs), f"{g['valid'] / len(rs):.1%}",
                         f"{m['unfinished'] / len(rs):.1%}", m["invalid"] + m["not JSON"],
                         f"{m['valid'] / len(rs):.1%}",
                         round(sum(r["guided_tokens"] for r in rs) / len(rs), 1),
                         round(sum(r["masked_tokens"] for r in rs) / len(rs), 1)])  # fmt: skip
    kinds = collections.Counter(r["guide"] for r in results)
    bad = [r for r in results if r["guided"] != "valid"]
    lines = [
        "### JSON Schema generation: guided vs mask-only (proxy LM)",
        "",
        f"`{command()}` on {machine()}; load average at the start {args.load}. Proxy LM and HMM of "
        f"../shared/models/commongen-proxy (V = 8,192, H = 256), prompt: the BOS token alone, max_new_tokens "
        f"{args.max_new_tokens} (the LM has 64 positions). {chosen} schemas of MaskBench's shared subset in a "
        "seeded order across its groups, the first that compile for the proxy's tokenizer and whose shortest "
        f"document fits max_new_tokens (passed over on the way: {dict(passed) or 'none'}). Outputs judged "
        "by the `jsonschema` library with its format checker; complete = the text is a whole document (ended by EOS or exactly at max_new_tokens). Mask-only: the "
        "same LM and automaton, a token forbidden only when its successor cannot reach an accepting state "
        "(no lookahead, as XGrammar / Outlines). Guides that ran: "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=str)) + ".",
        "",
        table(["mode", "group", "schemas", "guided valid + complete", "mask-only unfinished",
               "mask-only invalid", "mask-only valid + complete", "guided tokens", "mask-only tokens"], body),
    ]  # fmt: skip
    lines += ["", f"Guided outputs not valid and complete: **{len(bad)}**" + (":" if bad else ".")]
    lines += [f"- {r['id']} ({r['mode']}): {r['guided']}: `{r['guided_text'][:120]}`" for r in bad[:10]]
    examples = [r for r in results if r["masked"] == "unfinished"][:3]
    if examples:
        lines += [
            "",
            "Mask-only outputs left unfinished (first three), and the guided output of the same schema:",
        ]
        for r in examples:
            lines += [f"- {r['id']} ({r['mode']}): mask-only `{r['masked_text'][:100]}…`; "
                      f"guided `{r['guided_text'][:100]}`"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.json_generation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--schemas", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--modes", nargs="+", choices=["greedy", "sample"], default=["greedy", "sample"])
    parser.add_argument("--timeout", type=float, default=20.0, help="compile time budget per schema, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lm", default=str(MODELS / "lm"))
    parser.add_argument("--hmm", default=str(MODELS / "hmm-256"))
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    if not DATA.exists() or not MODELS.exists():
        print(f"skipped: {DATA} or {MODELS} is absent")
        return
    args.load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lm, tokenizer, hmm = load_proxy_models(args.lm, args.hmm, threads=1)
    chosen, passed = select(tokenizer, sample_across_groups(load_rows(), args.seed), args)
    results = []
    for i, (row, _) in enumerate(chosen):
        for mode in args.modes:
            r = run_schema(lm, tokenizer, hmm, row, mode, args)
            results.append(r)
            print(f"{i + 1}/{len(chosen)} {mode} {r['id'][:50]} guided {r['guided']} ({r['guide']}) "
                  f"mask-only {r['masked']}", flush=True)  # fmt: skip
    report = render(results, len(chosen), passed, args)
    print(report)
    if not args.no_docs:
        write_section("quality.md", "json-generation", report)


if __name__ == "__main__":
    main()
