"""Per-token step time of JSON Schema decoding (mask + guide) at V = 50,257 and V = 128,256, one CPU thread.

    python -m benchmarks.json_step [--schemas 100] [--hidden 256 ...] [--horizon 128] [--vocab 50257 128256]
                                   [--passes 3]

For a seeded sample of MaskBench schemas (../shared/data/jsonschema, round-robin across its groups) that
compile and have a valid test instance: `pc_core.decoding.prepare` compiles the token automaton and builds
the guide exactly as a request does (compile and guide precompute timed and reported apart), then the
instance, serialised compactly and followed by EOS, is walked token by token. One step is what the decoder
does per token besides the LM: the guide's q(x) for the whole vocabulary, whose -inf entries are the mask
(`guide.plan` / `multiply` / `assemble`), the JSON syntax's mask where undeclared values may go past
max_depth (pc_core.search.DeepMask), then `guide.advance` with the chosen token. Next to it, the
mask-only step of the engines that only mask (XGrammar, Outlines): the (V,) bool of tokens whose successor
can still reach an accepting state, and the automaton's move. The walks are repeated `--passes` times, each
pass a first request for every schema again (guide tables and step layouts built anew): this VM has slow
spells of seconds in which every operation, the floor included, takes up to twice as long, and a p99 of one
pass says as much about where they fell as about the step; the table gives each pass's p99 and the
statistics over all passes' steps.

The HMM is random (H hidden states, the shared proxy's 256 by default; the step's cost depends on H and V,
not on the HMM's weights); its per-model caches (the packed emission blocks) are built before the timings,
and then the process's objects are frozen out of the garbage collector's view, as the server's once ready.
Times are wall-clock and the thread's CPU time (the dev box is shared; CPU time leaves out other processes),
and next to them the floor: one dense (2, H) x (H, V) product with the guide's own packed emission, timed after every step. V = 50,257 is ../shared/tokenizers/bpe-50257; V = 128,256 the Llama-3-shaped BPE
that benchmarks.vocab128k builds locally (trained on ../shared text and padded with synthetic merges).
Writes docs/benchmarks.md, section "json-step".
"""

from __future__ import annotations

import argparse
import collections
import gc
import gzip
import json
import os
import random
import statistics
import time

import numpy as np
import torch

from benchmarks._report import SHARED, command, machine, table, write_section

DATA = SHARED / "data" / "jsonschema" / "maskbench-shared.jsonl.gz"
PUBLISHED = (
    "Published per-token mask time on the whole MaskBench (Llama-3 128k tokenizer, one thread; the data's "
    "README), mean / p99: LLGuidance 47 / 460 us, XGrammar 292 / 4,936 us, Outlines 59,420 us mean; "
    "time to first mask mean / p50: LLGuidance 1.6 / 1.0 ms, XGrammar 4.1 / 0.54 s, Outlines 37.9 / 7.0 s. "
    "Those engines only mask; none computes how likely the document is to finish in the tokens left."
)


def load_rows() -> list[dict]:
    with gzip.open(DATA, "rt") as f:
        return [json.loads(line) for line in f]


def sample_across_groups(rows: list[dict], seed: int = 0) -> list[dict]:
    """All rows in a seeded order that takes one schema from each group in turn (small groups are not
    crowded out); callers keep the first ones that suit them."""
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for row in rows:
        groups[row["group"]].append(row)
    queues = []
    for name in sorted(groups):
        members = groups[name][:]
        rng.shuffle(members)
        queues.append(members)
    out = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop())
    return out


def compact(data: object) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def mask_only_tables(dfa) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a mask-only engine keeps: (S, C) successors, (V,) token classes, (S,) live (can still accept)."""
    live = torch.from_numpy(dfa.steps_to_accept >= 0)
    transitions = torch.from_numpy(dfa.transitions.astype(np.int64))
    return transitions, torch.from_numpy(dfa.token_class.astype(np.int64)), live


class Clock:
    """Wall time and this thread's CPU time of a block: on the shared 2-core box the wall time includes the
    time other processes held the core, the thread's CPU time does not (one torch thread: it is all the work)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu.append(time.thread_time() - self._cpu)
        self.wall.append(time.perf_counter() - self._wall)


def walk(search, tokens: list[int]) -> dict[str, Clock]:
    """Per token along `tokens` (the last one EOS): the guided step (q for every token, then advance), the
    mask-only step, and the floor (one dense (2, H) x (H, V) product with the guide's packed emission: a
    marginal and a joint row over the whole vocabulary, what a step inside a JSON string needs). Raises if
    the guide or the mask forbids a token of the instance."""
    from pc_core.guide import multiply
    from pc_core.kernels import matmul_exp_nt

    guide, state = search.guide, search.guide_state
    hmm = guide.hmm
    transitions, token_class, live = mask_only_tables(search.dfa)
    # (V, H) in the guide's dtype: the whole-vocabulary operand a guide's uniform steps read (guide.py,
    # emission_operands), the same buffer, not a copy of it: a second emission-sized buffer read between steps
    # would evict the step's from the CPU caches (26 MB each at H = 256 in bfloat16), which no decoder has
    emission = hmm.emission_block(None, "all/0", guide.emission_dtype)
    rows = torch.zeros(2, hmm.hidden_size)  # (2, H)
    dfa_state = int(search.dfa.initial_state)
    clocks = {"step": Clock(), "mask": Clock(), "floor": Clock()}
    first_product, seen = [], False  # per step: whether it took the walk's first vocabulary-wide product
    for token in tokens:
        with clocks["step"]:
            plan = guide.plan(state)  # what batched_next_log_probs does, with the plan kept
            q = guide.assemble(plan, multiply([(guide, plan)])[0])  # (1, V): -inf = masked
            if search.deep is not None:  # the JSON syntax beside the automaton (deep values), as choose does
                q = search.deep.mask(q, state)
            state = guide.advance(state, [token])
            if search.deep is not None:
                search.deep.advance([0], [token])
        wide = any(block.rows.shape[0] for block in plan.blocks)
        first_product.append(wide and not seen)
        seen = seen or wide
        if not bool(torch.isfinite(q[0, token])):
            raise AssertionError(f"the guide forbids token {token} of a valid instance")
        with clocks["mask"]:
            allowed = live[transitions[dfa_state][token_class]]  # (V,) bool
            dfa_state = int(transitions[dfa_state, token_class[token]])
        if not bool(allowed[token]):
            raise AssertionError(f"the mask forbids token {token} of a valid instance")
        with clocks["floor"]:
            matmul_exp_nt(rows, emission)
    clocks["first"] = first_product
    return clocks


def instance_tokens(tokenizer, row: dict, horizon: int) -> list[int] | None:
    """The first valid instance's token ids and EOS, when it fits the horizon."""
    for test in row["tests"]:
        if test["valid"]:
            ids = tokenizer.encode(compact(test["data"]), add_special_tokens=False) + [tokenizer.eos_token_id]
            return ids if len(ids) <= horizon else None
    return None


def compiled_request(tokenizer, schema: dict, params):
    """The request's constraint with its automaton compiled under the full time budget (a request compiles
    with the explicit budget of pc_core.decoding's `lazy` path instead), for `prepare`."""
    from pc_core.compiled_constraint import CompiledConstraint
    from pc_core.constraints import compile_constraint

    request = CompiledConstraint.for_request({"json_schema": schema}, params, len(tokenizer))
    dfa = compile_constraint(request.judged, tokenizer, params.max_states, params.time_budget_s)
    return request.with_dfa(dfa)


def measure(tokenizer, rows: list[dict], hidden: int, args) -> dict:
    """Compile, precompute and step times over the first `args.schemas` usable schemas of `rows`."""
    from pc_core.decoding import prepare
    from pc_core.errors import PcgenError
    from pc_core.guide import GUIDE_TABLES
    from pc_core.hmm import HMM
    from pc_core.params import DecodeParams

    v = len(tokenizer)
    hmm = HMM.random(hidden, v, seed=0, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    params = DecodeParams(max_new_tokens=args.horizon, time_budget_s=args.timeout,
                          guide_emission_dtype=args.emission_dtype)  # fmt: skip
    warm = prepare(tokenizer, hmm, compiled_request(tokenizer, {"type": "string"}, params), "", params)
    walk(warm, tokenizer.encode('"a"', add_special_tokens=False))  # per-model caches (packed emission blocks)
    # what the server does once ready (service Runtime._freeze_startup_objects): the start-up's objects (the
    # tokenizer, torch, the model) out of the collector's view, so a full collection is not ~200 ms of them
    gc.collect()
    gc.freeze()
    out = {"V": v, "H": hidden, "dtype": str(warm.guide.emission_dtype).removeprefix("torch."), "compile": [], "precompute": [], "states": [], "kinds": collections.Counter(),
           "skipped": collections.Counter(), "per_schema_p99": [], **{k: Clock() for k in CLOCKS}}  # fmt: skip
    walked = []  # (request, instance tokens) of the schemas walked, for the later passes
    for row in rows:
        if len(out["compile"]) >= args.schemas:
            break
        tokens = instance_tokens(tokenizer, row, args.horizon)
        if tokens is None:
            out["skipped"]["no valid instance within the horizon"] += 1
            continue
        try:
            request = compiled_request(tokenizer, row["schema"], params)
            compile_ms = request.dfa.compile_seconds * 1e3  # its first compile (later H: from the cache)
            search = prepare(tokenizer, hmm, request, "", params)
        except PcgenError as err:
            out["skipped"][type(err).__name__] += 1
            continue
        if not search.dfa.accepts(tokens):
            out["skipped"]["instance rejected (a correctness bug: benchmarks.jsonschema lists them)"] += 1
            continue
        clocks = walk(search, tokens)
        add_clocks(out, clocks)
        walked.append((request, tokens))
        out["compile"].append(compile_ms)
        out["precompute"].append(search.timings["precompute_ms"])
        out["states"].append(search.dfa.num_states)
        out["kinds"][search.guide.kind] += 1
        out["per_schema_p99"].append((pct(clocks["step"].wall, 0.99), row["id"]))
        print(f"V={v} H={hidden} {len(out['compile'])}/{args.schemas} {row['id'][:50]} states "
              f"{search.dfa.num_states} guide {search.guide.kind} step mean "
              f"{statistics.fmean(clocks['step'].wall) * 1e3:.2f} ms", flush=True)  # fmt: skip
    out["passes"] = [(pct(out["step"].wall, 0.99), pct(out["floor"].cpu, 0.5))]
    for _ in range(1, args.passes):
        # the same schemas again, each a first request once more (tables and step layouts built anew): the
        # machine's slow spells fall on other steps, so the passes show how much of a p99 is the machine's
        GUIDE_TABLES.clear()
        this_pass = {k: Clock() for k in CLOCKS}
        for request, tokens in walked:
            add_clocks(this_pass, walk(prepare(tokenizer, hmm, request, "", params), tokens))
        add_clocks(out, this_pass)
        out["passes"].append((pct(this_pass["step"].wall, 0.99), pct(this_pass["floor"].cpu, 0.5)))
        print(f"V={v} H={hidden} pass {len(out['passes'])}: step p99 {out['passes'][-1][0] * 1e3:.3f} ms, "
              f"floor p50 {out['passes'][-1][1] * 1e3:.3f} ms", flush=True)  # fmt: skip
    return out


def add_clocks(into: dict, clocks: dict) -> None:
    for name in CLOCKS:
        into[name].wall += clocks[name].wall
        into[name].cpu += clocks[name].cpu
    into.setdefault("first", []).extend(clocks["first"])


def first_products(r: dict) -> str:
    """Where the p99 steps fall: a walk's first step with a vocabulary-wide product reads the emission
    operand after the precompute has pushed it out of the CPU caches (docs/benchmarks.md, json-step)."""
    wall, first = r["step"].wall, r["first"]
    p99 = pct(wall, 0.99)
    top = [f for w, f in zip(wall, first) if w >= p99]
    cold = [w for w, f in zip(wall, first) if f]
    return (f"V = {r['V']:,}, H = {r['H']}: {sum(top)} of the {len(top)} steps at or above the p99; every "
            f"first-product step p50 {pct(cold, 0.5) * 1e3:.2f} ms (n = {len(cold)})")  # fmt: skip


CLOCKS = ("step", "mask", "floor")


def summary_row(r: dict) -> list:
    def ms(xs: list[float], q: float | None = None) -> float:
        return round((statistics.fmean(xs) if q is None else pct(xs, q)) * 1e3, 3) if xs else float("nan")

    step, mask, floor = r["step"], r["mask"], r["floor"]
    return [
        f"{r['V']:,}",
        r["H"],
        r["dtype"],
        len(r["compile"]),
        len(step.wall),
        f"{pct(r['states'], 0.5)} / {max(r['states'], default=0)}",
        ", ".join(f"{k} {n}" for k, n in sorted(r["kinds"].items())),
        round(pct(r["compile"], 0.5), 1),
        f"{pct(r['precompute'], 0.5):.1f} / {pct(r['precompute'], 0.99):.0f}",
        f"{ms(step.wall)} / {ms(step.wall, 0.5)} / **{ms(step.wall, 0.99)}**",
        " / ".join(f"{p * 1e3:.3f}" for p, _ in r["passes"]),
        f"{ms(step.cpu)} / {ms(step.cpu, 0.5)} / {ms(step.cpu, 0.99)}",
        f"{ms(floor.cpu, 0.5)} ({' / '.join(f'{f * 1e3:.3f}' for _, f in r['passes'])})",
        f"{ms(mask.wall)} / {ms(mask.wall, 0.99)}",
    ]


def render(results: list[dict], args, sources: list[str]) -> str:
    headers = ["V", "H", "emission", "schemas", "tokens", "states p50 / max", "guide", "compile p50 ms",
               "precompute p50 / p99 ms", "step mean / p50 / p99 ms (wall)", "step p99 per pass ms (wall)",
               "step mean / p50 / p99 ms (CPU)", "floor ms (CPU p50; per pass)",
               "mask-only mean / p99 ms (wall)"]  # fmt: skip
    lines = [
        "### JSON Schema: per-token step time (mask + guide)",
        "",
        f"`{command()}` on {machine()}; load average at the start {args.load}, at the end {args.load_end}. "
        f"Random HMMs, horizon (max_new_tokens) {args.horizon}, one beam. Schemas: MaskBench's shared subset "
        "in a seeded order across its groups, those that compile and whose first valid instance, compact, fits "
        f"the horizon; each instance walked token by token (EOS included), in {args.passes} passes (each pass "
        "a first request for every schema: the guide's tables and step layouts built anew; step statistics "
        "over all passes' steps, the p99 of each pass beside them). A step is the guide's q(x) over the "
        "whole vocabulary (its -inf entries are the mask), the JSON syntax's mask beside it where undeclared "
        "values may go deep (pc_core.search.DeepMask), plus the guide's advance; precompute (the guide's "
        "tables, once per request, cached by content) is reported apart. Wall time and the thread's CPU time "
        "(the box is shared: CPU time leaves out what other processes took). Emission: the dtype the step's product "
        "reads (the guide_emission_dtype setting; docs/method.md §5.9 bounds what bfloat16 changes). Floor: one "
        "dense (2, H) x (H, V) product with the packed emission in that dtype (the guide's own whole-vocabulary operand, the buffer its "
        "steps read), the least a step inside a JSON string computes (a marginal and a "
        "joint row over the vocabulary), timed after every step. Mask-only: the (V,) live-successor mask and the "
        "automaton's move, what a mask-only engine does per token. " + ". ".join(sources) + ".",
        "",
        table(headers, [summary_row(r) for r in results]),
        "",
        PUBLISHED,
        "",
        "Goal: step p99 < 2 ms at V = 50,257. Slowest schemas by their own step p99 (wall, ms): "
        + "; ".join(
            f"V = {r['V']:,}, H = {r['H']}: "
            + ", ".join(f"{i} {p * 1e3:.2f}" for p, i in sorted(r["per_schema_p99"], reverse=True)[:3])
            for r in results
        )
        + ".",
    ]
    cold = "; ".join(first_products(r) for r in results)
    lines += ["", "Steps at or above the p99 that were a walk's first step with a vocabulary-wide product (the "
              "emission operand out of the CPU caches after the request's precompute; a server's LM forward "
              f"between steps evicts it at every step): {cold}."]  # fmt: skip
    skipped = [f"V = {r['V']:,}, H = {r['H']}: {dict(r['skipped'])}" for r in results if r["skipped"]]
    if skipped:
        lines += ["", "Schemas passed over on the way to the sample: " + "; ".join(skipped) + "."]
    return "\n".join(lines)


def load_tokenizer(vocab: int):
    if vocab == 50257:
        from transformers import AutoTokenizer

        path = SHARED / "tokenizers" / "bpe-50257"
        return AutoTokenizer.from_pretrained(str(path)), f"V = 50,257: {path.name} from ../shared"
    from benchmarks.vocab128k import load_tokenizer_128k

    tokenizer, source = load_tokenizer_128k()
    return tokenizer, f"V = 128,256: {source}, benchmarks.vocab128k"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.json_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--schemas", type=int, default=100, help="schemas per vocabulary")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256], help="HMM hidden sizes, each in turn")
    parser.add_argument("--horizon", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=20.0, help="compile time budget per schema, s")
    parser.add_argument("--vocab", type=int, nargs="+", choices=[50257, 128256], default=[50257, 128256])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passes", type=int, default=3, help="walks of every schema (the step p99 per pass)")
    parser.add_argument("--emission-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="the guide_emission_dtype setting (auto: bfloat16 where the CPU has a bfloat16 product)")  # fmt: skip
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return
    torch.set_num_threads(1)
    args.load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = sample_across_groups(load_rows(), args.seed)
    results, sources = [], []
    for vocab in args.vocab:
        tokenizer, source = load_tokenizer(vocab)
        sources.append(source)
        for hidden in args.hidden:
            results.append(measure(tokenizer, rows, hidden, args))
    args.load_end = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    report = render(results, args, sources)
    print(report)
    if not args.no_docs:
        write_section("benchmarks.md", "json-step", report)


if __name__ == "__main__":
    main()
