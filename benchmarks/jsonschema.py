"""JSON Schema coverage, correctness and compile time on MaskBench's schemas (../shared/data/jsonschema).

    python -m benchmarks.jsonschema [--limit N] [--timeout 20] [--token-schemas 100] [--no-docs]
        [--processes 2] [--deadline MINUTES] [--mismatches FILE] [--recheck FILE]

For every schema (or an even sample of N), in a random order over worker processes (a run stopped at the
deadline has measured a random sample): compile the character automaton (patterns.JsonDocuments: a schema
alone, with undeclared values past max_depth as a skeleton and the JSON syntax beside it) under a
per-schema limit of CPU time; count compiled schemas per group and the rest by the reason of the 422. On each
compiled schema, every test instance, serialised compactly (`json.dumps(data, separators=(",", ":"),
ensure_ascii=False)`, keys in the instance's order), must be accepted when valid and rejected when invalid:
a mismatch is a bug (listed, never just counted). Key order: MaskBench's creation script
(maskbench/creation/reorder.py in guidance-ai/jsonschemabench) rewrote each instance's keys in the order
LLGuidance writes them, the schema's, but only for schemas LLGuidance compiles: the instances of the others
(oneOf, which LLGuidance refuses, for one) keep the order the LLM wrote. So an instance is judged in its own
order and again with its keys in the schema's order (the documented layout, as MaskBench's step): a valid
one must be accepted in one of them, an invalid one rejected in both; valid ones accepted only reordered are
counted apart. For the first `--token-schemas` compiled schemas, the token
automaton for the 50,257-token BPE (../shared/tokenizers/bpe-50257) is compiled too (its compile time and
size, and the instances judged again on their token ids). Writes the tables to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import multiprocessing
import random
import re
import signal
import statistics
import time

from benchmarks._report import SHARED, command, machine, table, write_section
from pc_core.constraints.patterns import JsonDocuments, JsonSchema
from pc_core.constraints.regex import category
from pc_core.errors import ConstraintError, ConstraintTooComplex

DATA = SHARED / "data" / "jsonschema" / "maskbench-shared.jsonl.gz"


PUBLISHED = (
    "Published figures on the whole MaskBench (10,163 schemas, Llama-3 128k tokenizer, one thread; the data's "
    "README): schemas compiled and passing every test: LLGuidance 7,765 (76.4%), XGrammar 5,216 (51.3%), "
    "Outlines 4,259 (41.9%); time to first mask mean / p50: LLGuidance 1.6 / 1.0 ms, XGrammar 4.1 / 0.54 s, "
    "Outlines 37.9 / 7.0 s; per-token mask mean / p99: LLGuidance 47 / 460 us, XGrammar 292 / 4,936 us. "
    "None of them guarantees a complete document within max_tokens."
)


class Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Timeout


def reason(err: ConstraintError) -> str:
    """The 422's reason without the schema-specific parts: the keyword for `not supported`, else the message
    with quoted names and numbers replaced."""
    if err.message == "not supported":
        return f"{err.path.rsplit('.', 1)[-1]}: not supported"
    text = re.sub(r"'[^']*'", "'…'", err.message.split(" (")[0])
    return re.sub(r"\d+", "N", text)[:90]


def compile_one(row: dict, timeout: float) -> tuple[str, object, float]:
    """('ok', dfa, seconds) or ('422', reason, seconds) or ('timeout' | 'crash', detail, seconds). Seconds and
    the limit are this process's CPU time (ITIMER_PROF): the machine is shared, and wall time would charge
    a schema for other people's work."""
    node = JsonSchema(json.dumps(row["schema"], ensure_ascii=False))
    started = time.process_time()
    spent = lambda: time.process_time() - started  # noqa: E731
    signal.setitimer(signal.ITIMER_PROF, timeout)
    try:
        try:
            dfa = JsonDocuments(node)  # the language compile_constraint gives a json_schema alone
        finally:  # off before any handler runs: a late alarm lands in `except Timeout` below
            signal.setitimer(signal.ITIMER_PROF, 0)
        return "ok", dfa, spent()
    except Timeout:
        return "timeout", f"over {timeout:g}s", spent()
    except ConstraintError as err:
        return "422", reason(err), spent()
    except RecursionError:
        return "422", "schema nested too deeply", spent()
    except Exception as err:  # a crash is a bug: reported by name (unless the timer fired inside numpy)
        if spent() >= timeout:
            return "timeout", f"over {timeout:g}s", spent()
        return "crash", f"{type(err).__name__}: {err}"[:120], spent()


def check_instances(dfa: object, row: dict) -> tuple[list[dict], int]:
    """(mismatches, valid instances accepted only with their keys in the schema's order). Each instance is
    written compactly with keys in its own order, and again in the schema's order (what MaskBench's creation
    did to the instances of the schemas LLGuidance compiles): a valid one must be accepted in one of the two,
    an invalid one rejected in both."""
    bad, reordered = [], 0
    names = _names(row["schema"])
    for test in row["tests"]:
        text = json.dumps(test["data"], separators=(",", ":"), ensure_ascii=False)
        again = json.dumps(_reorder(test["data"], names), separators=(",", ":"), ensure_ascii=False)
        own = dfa.accepts(text)
        other = own if again == text else dfa.accepts(again)
        if test["valid"] and not own and other:
            reordered += 1
        elif (own or other) != test["valid"]:
            shown = again if other and not own else text
            bad.append({"id": row["id"], "valid": test["valid"], "text": shown[:300]})
    return bad, reordered


def _names(schema: object) -> dict[str, int]:
    """Every property name of the schema (definitions included), numbered in order of first appearance."""
    out: dict[str, int] = {}
    stack = [schema]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict):
                for name in node["properties"]:
                    out.setdefault(name, len(out))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _reorder(value: object, names: dict[str, int]) -> object:
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: names.get(k, len(names)))
        return {k: _reorder(value[k], names) for k in keys}
    if isinstance(value, list):
        return [_reorder(v, names) for v in value]
    return value


def judge(job: tuple[dict, float]) -> tuple[str, object, float, int, tuple[list[dict], int]]:
    """One schema in a worker: (outcome, detail, seconds, states, (mismatches, reordered)); the DFA stays
    there."""
    row, timeout = job
    signal.signal(signal.SIGPROF, _alarm)
    outcome, detail, seconds = compile_one(row, timeout)
    if outcome != "ok":
        return outcome, detail, seconds, 0, ([], 0)
    return outcome, None, seconds, detail.num_states, check_instances(detail, row)


def recheck(path: str, timeout: float) -> list[str]:
    """The mismatches listed in `path` (JSON lines, --mismatches), classified: a valid instance that the
    automaton accepts once its schema is compiled with a larger `max_depth` (4..8) was rejected only by the
    documented nesting bound for unconstrained values; anything else is a bug."""
    with open(path) as f:
        ids = {json.loads(line)["id"] for line in f}
    with gzip.open(DATA, "rt") as f:
        rows = [row for row in map(json.loads, f) if row["id"] in ids]
    signal.signal(signal.SIGPROF, _alarm)
    lines = []
    for row in rows:
        text_of = lambda test: json.dumps(test["data"], separators=(",", ":"), ensure_ascii=False)  # noqa: E731
        schema = json.dumps(row["schema"], ensure_ascii=False)
        bad = [t for t in row["tests"] if JsonDocuments(JsonSchema(schema)).accepts(text_of(t)) != t["valid"]]
        for test in bad:
            verdict = "bug: invalid instance accepted" if not test["valid"] else "bug: not a depth bound"
            for depth in range(4, 9) if test["valid"] else ():
                signal.setitimer(signal.ITIMER_PROF, timeout)
                try:
                    ok = JsonDocuments(JsonSchema(schema, max_depth=depth)).accepts(text_of(test))
                except (Timeout, ConstraintError) as err:
                    why = "time limit" if isinstance(err, Timeout) else err.message
                    verdict = f"rejected up to max_depth={depth - 1}; at {depth}: {why}"
                    break
                finally:
                    signal.setitimer(signal.ITIMER_PROF, 0)
                if ok:
                    verdict = f"accepted at max_depth={depth}"
                    break
            lines.append(f"{row['id']}: {verdict}")
    return lines


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def token_level(rows: list[tuple[dict, object]], limit: int, timeout: float) -> dict:
    """Compile the token automaton for the 50,257-token BPE on the first `limit` compiled schemas."""
    from transformers import AutoTokenizer

    from pc_core.constraints import compile_constraint

    path = SHARED / "tokenizers" / "bpe-50257"
    if not path.exists():
        return {}
    tok = AutoTokenizer.from_pretrained(str(path))
    times, states, blocked, bad, judged = [], [], collections.Counter(), [], 0
    compile_constraint({"regex": "a"}, tok)  # vocabulary tables built once, outside the timings
    for row, _ in rows[:limit]:
        spec = {"json_schema": row["schema"]}
        started = time.perf_counter()
        try:
            dfa = compile_constraint(spec, tok, time_budget_s=timeout)
        except ConstraintTooComplex as err:
            blocked["time budget" if err.out_of_time else "state cap"] += 1
            continue
        times.append(time.perf_counter() - started)
        states.append(dfa.num_states)
        for test in row["tests"]:
            text = json.dumps(test["data"], separators=(",", ":"), ensure_ascii=False)
            judged += 1
            if dfa.accepts(tok.encode(text, add_special_tokens=False)) != test["valid"]:
                bad.append({"id": row["id"], "valid": test["valid"], "text": text[:300]})
    return {"times": times, "states": states, "blocked": blocked, "mismatches": bad, "judged": judged}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=0, help="an even sample of N schemas (0: all)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per schema")
    parser.add_argument("--token-schemas", type=int, default=100)
    parser.add_argument("--processes", type=int, default=2, help="worker processes (at most 2 here)")
    parser.add_argument("--deadline", type=float, default=0, help="stop after this many minutes (0: never)")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--mismatches", help="write every mismatch (JSON lines) to this file")
    parser.add_argument("--recheck", help="classify the mismatches of an earlier run's --mismatches file")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return
    if args.recheck:
        print("\n".join(recheck(args.recheck, args.timeout)))
        return
    with gzip.open(DATA, "rt") as f:
        rows = [json.loads(line) for line in f]
    if args.limit:
        rows = rows[:: max(1, len(rows) // args.limit)][: args.limit]
    per_group = collections.defaultdict(collections.Counter)
    reasons, crashes, mismatches, times, states, compiled = collections.Counter(), [], [], [], [], []
    instances = reordered = 0
    random.Random(0).shuffle(rows)  # a run stopped at --deadline has measured a random sample
    jobs = [(row, args.timeout) for row in rows]
    measured, stop_at = [], time.monotonic() + 60 * args.deadline if args.deadline else float("inf")
    for name in ("digit", "space", "word"):  # Unicode tables of \d \s \w: once, before the workers fork
        category(name)
    with multiprocessing.get_context("fork").Pool(args.processes) as pool:
        for i, (row, (outcome, detail, seconds, size, (bad, moved))) in enumerate(
            zip(rows, pool.imap(judge, jobs))
        ):
            measured.append(row)
            per_group[row["group"]][outcome] += 1
            if outcome == "ok":
                times.append(seconds)
                states.append(size)
                compiled.append((row, None))
                mismatches += bad
                reordered += moved
                for m in bad:
                    print("MISMATCH", json.dumps(m, ensure_ascii=False), flush=True)
                instances += len(row["tests"])
            elif outcome == "crash":
                crashes.append((row["id"], detail))
            else:
                reasons[detail if outcome == "422" else f"time limit ({detail})"] += 1
            if i % 250 == 0:
                print(f"{i}/{len(rows)} compiled {len(compiled)} mismatches {len(mismatches)}", flush=True)
            if time.monotonic() > stop_at:  # leaving the pool's block terminates the workers
                break
    tokens = token_level(compiled, args.token_schemas, args.timeout) if args.token_schemas else {}
    report = render(
        measured, len(rows), per_group, reasons, crashes, mismatches, reordered, times, states, instances,
        tokens,
    )  # fmt: skip
    print(report)
    for m in mismatches[:20]:
        print("MISMATCH", m)
    for c in crashes[:20]:
        print("CRASH", c)
    if args.mismatches:
        with open(args.mismatches, "w") as f:
            f.writelines(json.dumps(m, ensure_ascii=False) + "\n" for m in mismatches)
    if not args.no_docs:
        write_section("benchmarks.md", "jsonschema", report)


def render(
    rows, total_rows, per_group, reasons, crashes, mismatches, reordered, times, states, instances, tokens
) -> str:
    total = sum(c["ok"] for c in per_group.values())
    lines = [
        "### JSON Schema: coverage, correctness, compile time (MaskBench subset)",
        "",
        f"`{command()}` on {machine()}. {len(rows)} schemas of ../shared/data/jsonschema"
        + (f" (of {total_rows}: a random sample, stopped at --deadline)." if len(rows) < total_rows else "."),
        "",
        table(
            ["group", "schemas", "compiled", "share", "422", "time limit", "crash"],
            [
                [
                    g,
                    sum(c.values()),
                    c["ok"],
                    f"{c['ok'] / max(1, sum(c.values())):.1%}",
                    c["422"],
                    c["timeout"],
                    c["crash"],
                ]
                for g, c in sorted(per_group.items())
            ]
            + [
                [
                    "all",
                    len(rows),
                    total,
                    f"{total / max(1, len(rows)):.1%}",
                    sum(c["422"] for c in per_group.values()),
                    sum(c["timeout"] for c in per_group.values()),
                    len(crashes),
                ]
            ],
        ),  # fmt: skip
        "",
        f"Correctness: {instances} test instances of the compiled schemas judged by the character automaton "
        f"with the JSON syntax beside it (patterns.JsonDocuments: the language compile_constraint gives a "
        f"schema alone, undeclared values to 8 levels), "
        f"**{len(mismatches)} mismatches**: {sum(not m['valid'] for m in mismatches)} invalid instances "
        f"accepted (in their own key order or the schema's), {sum(m['valid'] for m in mismatches)} valid "
        f"ones rejected in both; {reordered} valid ones accepted with their keys in the schema's order, not "
        f"in their own (MaskBench's creation script put keys in the schema's order only for the schemas "
        f"LLGuidance compiles). Character "
        f"automaton compile time (CPU time of the compiling process) p50 {pct(times, 0.5) * 1e3:.1f} ms, "
        f"p90 {pct(times, 0.9) * 1e3:.0f} ms, p99 {pct(times, 0.99) * 1e3:.0f} ms; states p50 "
        f"{pct(states, 0.5)}, p99 {pct(states, 0.99)}.",
    ]
    if tokens:
        t = tokens
        lines += [
            "",
            f"Token automaton for the 50,257-token BPE on {len(t['times']) + sum(t['blocked'].values())} compiled "
            f"schemas: compile p50 {pct(t['times'], 0.5) * 1e3:.0f} ms, p99 {pct(t['times'], 0.99) * 1e3:.0f} ms "
            f"(mean {statistics.fmean(t['times']) * 1e3 if t['times'] else float('nan'):.0f} ms); minimal states "
            f"p50 {pct(t['states'], 0.5)}, max {max(t['states'], default=0)}; blocked: {dict(t['blocked']) or 'none'}; "
            f"{t['judged']} instances judged on their token ids, {len(t['mismatches'])} mismatches.",
        ]  # fmt: skip
    lines += [
        "",
        PUBLISHED,
        "",
        "Reasons for the 422s (schemas):",
        "",
        table(["reason", "schemas"], reasons.most_common(25)),
    ]
    if crashes:
        lines += ["", "Crashes (bugs): " + "; ".join(f"{i}: {d}" for i, d in crashes[:10])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
