"""Undeclared properties' values past max_depth (json_syntax.py): the skeleton in the automaton and the JSON
syntax beside it accept exactly the schema's documents whose undeclared values nest at most TAIL_LEVELS levels
(MaskBench's last mismatches: Github_trivial---o46904, o46906, o60275, o66141), and decoding with the syntax's
mask never dead-ends and always finishes within the horizon."""

import json
import pickle
import random

import numpy as np
import pytest

from pc_core import compile_constraint
from pc_core.constraints.json_syntax import TAIL_LEVELS, JsonSyntax, token_bytes_for
from pc_core.constraints.patterns import JsonDocuments, JsonSchema, char_automaton, json_holds
from pc_core.guide import ConstraintGuide
from pc_core.hmm import HMM
from pc_core.search import DeepMask

SCHEMA = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "string"}}}


def _compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _random_value(rng, depth):
    kind = rng.randrange(7 if depth > 0 else 5)
    if kind == 0:
        return rng.choice([0, -1, 12, 1.5, -0.25e-3, 1e21])
    if kind == 1:
        return rng.choice(["", "x", 'q"]}', "é€", "a\\b", "\n", "[{"])
    if kind == 2:
        return rng.choice([True, False])
    if kind == 3:
        return None
    if kind == 4:
        return rng.choice(["k", 7])
    if kind == 5:
        return [_random_value(rng, depth - 1) for _ in range(rng.randrange(3))]
    return {rng.choice(["k", "a", "z", 'w"']): _random_value(rng, depth - 1) for _ in range(rng.randrange(3))}


def _nesting(value):
    if isinstance(value, list):
        return 1 + max((_nesting(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_nesting(v) for v in value.values()), default=0)
    return 0


def _chain(levels, leaf=1):
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


def _mutations(rng, text, count):
    out = []
    for _ in range(count):
        i = rng.randrange(len(text) + 1)
        op = rng.randrange(3)
        char = rng.choice('[]{}",:0 ae\\')
        if op == 0:
            out.append(text[:i] + char + text[i:])
        elif op == 1 and i < len(text):
            out.append(text[:i] + text[i + 1 :])
        elif i < len(text):
            out.append(text[:i] + char + text[i + 1 :])
    return out


def _strict_json(text):
    def refuse(name):
        raise ValueError(name)

    try:
        json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError):
        return False
    return True


def test_syntax_is_json_in_the_layout():
    """JsonSyntax accepts exactly the JSON documents without whitespace (compact) or with one optional space
    after `:` and `,` (flexible), every prefix of one stays alive, and it refuses what json.loads refuses."""
    rng = random.Random(0)
    compact, flexible = JsonSyntax("compact"), JsonSyntax("flexible")
    checked = 0
    for _ in range(300):
        value = _random_value(rng, rng.randrange(1, 10))
        text = _compact(value)
        assert compact.accepts(text) and flexible.accepts(text)
        spaced = json.dumps(value, ensure_ascii=False)  # ", " and ": "
        assert flexible.accepts(spaced) and compact.accepts(spaced) == (spaced == text)
        data = text.encode()
        for cut in range(len(data)):
            assert compact.run((0, "", 0), data[:cut]) is not None
        for bad in _mutations(rng, text, 6):
            expected = _strict_json(bad) and not any(c in bad for c in " \t\r\n" if c not in _strings(bad))
            if " " in bad and _strict_json(bad):
                continue  # a space's place is the layout's business: judged below
            assert compact.accepts(bad) == expected, bad
            checked += 1
    assert checked > 1000
    assert (
        not flexible.accepts('{"a":  1}')
        and not flexible.accepts('{"a" :1}')
        and flexible.accepts('{"a": 1}')
    )
    assert not compact.accepts("[1,]") and not compact.accepts('{"a":1,}') and not compact.accepts("[01]")
    assert not compact.accepts('"\\x"') and compact.accepts('"\\u00e9"') and not compact.accepts('"\\u00g9"')


def _strings(text):
    """The characters inside string literals (a crude scan, for the whitespace check above)."""
    inside, out, escaped = False, set(), False
    for ch in text:
        if inside:
            out.add(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                inside = False
        elif ch == '"':
            inside = True
    return out


def _deep_accepts(text, whitespace="compact"):
    dfa = char_automaton(JsonSchema(json.dumps(SCHEMA), whitespace, deep_tails=True))
    return dfa.accepts(text) and JsonSyntax(whitespace).accepts(text)


def _expected(text):
    """The documented language: valid under the schema, compact, undeclared values <= TAIL_LEVELS levels."""
    if not json_holds(SCHEMA, text) or not _strict_json(text):
        return False
    value = json.loads(text)
    if list(value)[: len([k for k in value if k in SCHEMA["properties"]])] != [
        k for k in SCHEMA["properties"] if k in value
    ]:
        return False  # declared properties first, in the schema's order
    return all(_nesting(v) <= TAIL_LEVELS for k, v in value.items() if k not in SCHEMA["properties"])


def test_skeleton_and_syntax_are_the_schema_to_eight_levels():
    """The character automaton with the skeleton, and the syntax beside it, accept exactly the documents of
    the schema whose undeclared values nest at most 8 levels (random documents and mutations of them); the
    automaton alone (the skeleton) accepts mismatched brackets, the syntax does not."""
    rng = random.Random(1)
    judged = deep_seen = 0
    for _ in range(250):
        doc = {"a": 1} if rng.random() < 0.7 else {}
        for key in rng.sample(["x", "y", "b"], rng.randrange(3)):
            doc[key] = "s" if key == "b" else _random_value(rng, rng.randrange(0, 11))
        doc.update({"z": _chain(rng.randrange(3, 11))} if rng.random() < 0.5 else {})
        text = _compact(doc)
        deep_seen += max((_nesting(v) for k, v in doc.items() if k not in "ab"), default=0) > 3
        for candidate in [text, *_mutations(rng, text, 4)]:
            assert _deep_accepts(candidate) == _expected(candidate), candidate
            judged += 1
    assert judged > 1000 and deep_seen > 50
    skeleton = char_automaton(JsonSchema(json.dumps(SCHEMA), deep_tails=True))
    mismatched = '{"a":1,"x":[[[{"k":1]]]]}'
    assert skeleton.accepts(mismatched) and not JsonSyntax().accepts(mismatched)
    shallow = char_automaton(JsonSchema(json.dumps(SCHEMA)))  # inside other constraints: max_depth levels
    assert not shallow.accepts(_compact({"a": 1, "x": _chain(4)})) and _deep_accepts(
        _compact({"x": _chain(8)})
    )
    assert not _deep_accepts(_compact({"x": _chain(9)}))


def test_the_token_automaton_judges_like_the_text(tokenizer):
    """compile_constraint of a json_schema alone carries the syntax (dfa.deep_values): its `accepts` on token
    ids equals the text judgement, also after a pickle round trip (compile workers send DFAs back)."""
    dfa = compile_constraint({"json_schema": SCHEMA}, tokenizer)
    assert dfa.deep_values is not None and dfa.deep_values.deep.any()
    again = pickle.loads(pickle.dumps(dfa))
    rng = random.Random(2)
    eos = tokenizer.eos_token_id
    for _ in range(120):
        doc = {"a": rng.choice([1, 2.5])}
        doc[rng.choice(["x", "é"])] = _random_value(rng, rng.randrange(2, 10))
        for text in [_compact(doc), *_mutations(rng, _compact(doc), 3)]:
            ids = tokenizer.encode(text) + [eos]
            assert dfa.accepts(ids) == _expected(text) == again.accepts(ids), text
    plain = compile_constraint({"json_schema": SCHEMA}, tokenizer, deep_values=False)
    assert plain.deep_values is None and not plain.accepts(
        tokenizer.encode(_compact({"x": _chain(4)})) + [eos]
    )


def _walk(tokenizer, dfa, hmm, horizon, rng, prefer, start=""):
    """A random decoder over the guide's allowed tokens (with the syntax's mask), preferring tokens that
    hold `prefer` characters; returns the text and its ids (at EOS or at the horizon), or fails if a step
    allows nothing."""
    guide = ConstraintGuide(hmm, dfa, horizon)
    state = guide.init_state(1)
    side = DeepMask(dfa, guide, tokenizer, 1)
    data = token_bytes_for(tokenizer).data
    ids, forced = [], tokenizer.encode(start)
    for step in range(horizon):
        q = side.mask(guide.next_log_probs(state), state)[0]
        allowed = np.flatnonzero(np.isfinite(q.numpy()))
        assert len(allowed), ids
        liked = [t for t in allowed.tolist() if any(c in data[t] for c in prefer)]
        token = rng.choice(liked if liked and rng.random() < 0.5 else allowed.tolist())
        if step < len(forced):
            token = forced[step]
            assert token in allowed, (start, ids)
        if token == tokenizer.eos_token_id:
            return tokenizer.decode(ids), ids
        ids.append(token)
        state = guide.advance(state, [token])
        side.advance([0], [token])
    return tokenizer.decode(ids), ids  # the horizon ends the text as max_new_tokens does


@pytest.mark.parametrize("horizon", [24, 40])
def test_decoding_with_the_mask_finishes_valid_documents(tokenizer, horizon):
    """Random decoding that starts inside undeclared values and loves brackets goes deep; with the syntax's mask and its
    completion bound every walk ends, within the horizon, in a document the schema accepts, whose deep values
    are well-formed (the skeleton alone would let mismatched brackets through, and without the bound walks
    run out of tokens inside a deep value)."""
    dfa = compile_constraint({"json_schema": SCHEMA}, tokenizer)
    hmm = HMM.random(8, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)
    rng = random.Random(horizon)
    deepest = 0
    for i in range(25):
        start = ['{"a":1,"x":[[[[', '{"x":{"k":[{"', '{"y":[[', ""][i % 4]
        text, ids = _walk(tokenizer, dfa, hmm, horizon, rng, b"[{", start)
        assert json_holds(SCHEMA, text) and _strict_json(text), text
        assert dfa.accepts(ids + [tokenizer.eos_token_id])
        value = json.loads(text)
        deepest = max([deepest, *(_nesting(v) for k, v in value.items() if k not in SCHEMA["properties"])])
    assert deepest > 3  # the walks went past the exact levels


@pytest.mark.parametrize(
    "options",
    [
        {"num_beams": 3},
        {"do_sample": True, "seed": 4, "num_return_sequences": 3},
        {"num_beams": 2, "guide": "factored"},  # the factored guide's feasibility is the whole automaton's
    ],
)
def test_generate_writes_deep_undeclared_values(tokenizer, tiny_lm, tiny_hmm, options):
    """Through the decoder (beams reorder their rows, samples drop theirs), with the automaton compiled here
    and with one sent back pickled (as a server's compile worker does): a required property the schema does
    not describe is an undeclared value; with brackets favoured by logit_bias the LM nests it past the exact
    levels, and every output is complete and valid, as judged by json + jsonschema."""
    from pc_core.compiled_constraint import CompiledConstraint
    from pc_core.decoding import DecodeParams, prepare, run_to_end

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "z"]}
    bias = {tokenizer.convert_tokens_to_ids("["): 20.0, tokenizer.convert_tokens_to_ids("{"): 10.0}
    params = DecodeParams(max_new_tokens=36, logit_bias=bias, **options)
    compiled = CompiledConstraint.for_request({"json_schema": schema}, params, len(tokenizer))
    sent_back = pickle.loads(pickle.dumps(compile_constraint(compiled.judged, tokenizer)))
    for constraint in ({"json_schema": schema}, compiled.with_dfa(sent_back)):
        out = run_to_end(tiny_lm, prepare(tokenizer, tiny_hmm, constraint, "", params))
        deepest = 0
        for sequence in out.sequences:
            assert json_holds(schema, sequence.text) and _strict_json(sequence.text), sequence.text
            deepest = max(deepest, _nesting(json.loads(sequence.text)["z"]))
        assert deepest > 3


@pytest.mark.parametrize("name", ["byte_level", "llama2", "metaspace", "wordpiece"])
def test_tokenizer_families_judge_deep_values_like_the_text(name, tmp_path):
    """On byte-level, byte-fallback (SentencePiece <0xNN>), metaspace and wordpiece vocabularies, tokenised
    canonically and re-split into other pieces (split characters included): the automaton with the syntax
    beside it accepts a token sequence exactly when its decoded text is in the language (and, as for every
    character constraint on bytes, the sequence is valid UTF-8)."""
    from byte_support import ANY, breaks_characters
    from tokenizer_families import build_family, byte_token_ids, resplit

    from pc_core.constraints import decode_continuation

    tokenizer = build_family(name, tmp_path)
    dfa = compile_constraint({"json_schema": SCHEMA}, tokenizer)
    assert (dfa.deep_values is not None) == token_bytes_for(tokenizer).complete
    rng = random.Random(3)
    eos = tokenizer.eos_token_id
    by_byte = {b: i for i, b in byte_token_ids(tokenizer).items()}
    agreed = deep_accepted = 0
    for _ in range(60):
        value = _random_value(rng, 3) if rng.random() < 0.3 else _chain(rng.randrange(3, 10), "é€")
        doc = {"a": 1, rng.choice(["x", "é"]): value}
        text = _compact(doc)
        for candidate in [text, *_mutations(rng, text, 2)]:
            ids = tokenizer.encode(candidate, add_special_tokens=False)
            spelled = [by_byte.get(b) for b in candidate.encode()]  # SentencePiece: all <0xNN> tokens
            spellings = [ids, resplit(tokenizer, ids, rng)] + ([spelled] if None not in spelled else [])
            for tokens in spellings:
                decoded = decode_continuation(tokenizer, tokens)
                expected = _expected(decoded) and not breaks_characters(tokenizer, tokens, ANY)
                assert dfa.accepts(tokens + [eos]) == expected, (name, decoded)
                agreed += 1
                deep_accepted += expected and _nesting(json.loads(decoded)) > 4
    assert agreed > 300 and (deep_accepted > 5 or dfa.deep_values is None)
    assert (dfa.deep_values is None) == (name in ("metaspace", "wordpiece"))  # they lack `"` or `}` alone


def _deep_by_hand(tokenizer):
    """The schema's token automaton with deep values, as the compiler builds it before its early test."""
    from pc_core.constraints.char_tokens import compile_char_only
    from pc_core.constraints.vocab import vocab_tables

    node = JsonSchema(json.dumps(SCHEMA), deep_tails=True)
    dfa = compile_char_only(char_automaton(node), vocab_tables(tokenizer), 10_000, lambda: None)
    dfa.deep_values.tokens = token_bytes_for(tokenizer)
    return dfa


def test_a_token_that_passes_through_the_skeleton_is_checked(tmp_path):
    """Once a value goes past max_depth, the rest of it is skeleton; a token can enter the skeleton and
    leave it at the value's end ("[]]]]" at the third level of "x"): its successor is an exact state, yet the
    skeleton forgot which brackets were opened, so the syntax judges such tokens wherever they are allowed
    ("[}]]]" and "{]]]]" refused, "[]]]]" and "{}]]]" kept)."""
    from tiny_models import build_tokenizer

    tokenizer = build_tokenizer(tmp_path)
    texts = ("[}]]]", "{]]]]", "[]]]]", "{}]]]")
    tokenizer.add_tokens(list(texts))
    ids = {text: tokenizer.convert_tokens_to_ids(text) for text in texts}
    assert compile_constraint({"json_schema": SCHEMA}, tokenizer).deep_values is None  # shortcuts: refused
    dfa = _deep_by_hand(tokenizer)  # the mask itself, on the automaton the compiler refused
    hmm = HMM.random(8, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)
    guide = ConstraintGuide(hmm, dfa, 32)
    state, side = guide.init_state(1), DeepMask(dfa, guide, tokenizer, 1)
    for token in tokenizer.encode('{"a":1,"x":[[['):
        state = guide.advance(state, [token])
        side.advance([0], [token])
    deep = dfa.deep_values.deep
    assert not deep[int(state.dfa_state[0])]  # three levels: still exact
    assert not any(deep[dfa.step(int(state.dfa_state[0]), i)] for i in ids.values())  # back out: exact
    raw = guide.next_log_probs(state)[0]
    assert all(np.isfinite(float(raw[i])) for i in ids.values())  # the automaton alone allows all four
    q = side.mask(guide.next_log_probs(state), state)[0]
    allowed = {text for text, i in ids.items() if np.isfinite(float(q[i]))}
    assert allowed == {"[]]]]", "{}]]]"}


def test_a_shortcut_through_a_deep_value_falls_back_to_exact_tails(tmp_path):
    """A vocabulary with "[]]]" and "]}" but no "]]": from `{"a":1,"x":[[[` the automaton finishes in 2 tokens
    through a deep value ("[]]]" "]}"), the exact way takes 3 ("]" "]" "]}"). Decoding checks the deep token
    with the syntax's one-character completion, so with 2 tokens left nothing would be allowed: a dead end.
    The compiler sees that the fewest tokens differ from the exact part's and compiles without deep values
    (and prepare() would, comparing the feasibility tables, for an automaton compiled elsewhere)."""
    from tiny_models import build_tokenizer

    from pc_core.decoding import DecodeParams, prepare

    tokenizer = build_tokenizer(tmp_path)
    tokenizer.add_tokens(["[]]]", "]}"])
    prefix = tokenizer.encode('{"a":1,"x":[[[')
    compiled = compile_constraint({"json_schema": SCHEMA}, tokenizer)
    assert compiled.deep_values is None  # the compiler's early test already refuses the deep values
    dfa = _deep_by_hand(tokenizer)  # what it refused
    assert not dfa.deep_values.exact_ways(dfa, dfa.deep_values.tokens)
    hmm = HMM.random(8, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)
    guide = ConstraintGuide(hmm, dfa, len(prefix) + 2)
    state, side = guide.init_state(1), DeepMask(dfa, guide, tokenizer, 1)
    for token in prefix:  # the automaton's feasibility lets the beam get here with 2 tokens left
        assert np.isfinite(float(side.mask(guide.next_log_probs(state), state)[0, token]))
        state = guide.advance(state, [token])
        side.advance([0], [token])
    assert not np.isfinite(side.mask(guide.next_log_probs(state), state)[0].numpy()).any()  # the dead end
    from pc_core.compiled_constraint import CompiledConstraint

    for horizon in (len(prefix) + 2, 40):
        params = DecodeParams(max_new_tokens=horizon)
        search = prepare(tokenizer, hmm, {"json_schema": SCHEMA}, "", params)
        assert search.dfa.deep_values is None and search.deep is None
        # sent by another compiler with its deep values: prepare compares the feasibility tables itself
        elsewhere = CompiledConstraint.for_request({"json_schema": SCHEMA}, params, len(tokenizer)).with_dfa(
            dfa
        )
        search = prepare(tokenizer, hmm, elsewhere, "", params)
        assert search.dfa.deep_values is None and search.deep is None
    plain = build_tokenizer(tmp_path / "plain")
    hmm = HMM.random(8, len(plain), seed=0, eos_token_id=plain.eos_token_id)
    normal = prepare(plain, hmm, {"json_schema": SCHEMA}, "", DecodeParams())
    assert normal.dfa.deep_values is not None and normal.deep is not None


def test_a_keyword_inside_a_deep_document(tokenizer):
    """`all` of the schema and a keyword (the folded product, token_product.py) keeps the deep values: random
    decoding that goes deep ends in documents that are valid and hold the keyword, as the independent
    checker judges (json + jsonschema, the keyword's word semantics)."""
    from pc_core import check_ids

    spec = {"all": [{"json_schema": SCHEMA}, {"keyword": "dog"}]}
    dfa = compile_constraint(spec, tokenizer)
    assert dfa.deep_values is not None and dfa.deep_values.deep.any()
    assert dfa.accepts(
        tokenizer.encode(_compact({"a": 1, "x": _chain(6, "the dog")})) + [tokenizer.eos_token_id]
    )
    assert not dfa.accepts(
        tokenizer.encode(_compact({"a": 1, "x": _chain(6, "a cat")})) + [tokenizer.eos_token_id]
    )
    hmm = HMM.random(8, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)
    rng, deepest = random.Random(5), 0
    for i in range(16):
        text, ids = _walk(
            tokenizer, dfa, hmm, 40, rng, b"[{", ['{"a":1,"x":[[[[', '{"x":{"k":[{"', ""][i % 3]
        )
        assert json_holds(SCHEMA, text) and check_ids(spec, tokenizer, ids), text
        value = json.loads(text)
        deepest = max([deepest, *(_nesting(v) for k, v in value.items() if k not in SCHEMA["properties"])])
    assert deepest > 3


def test_a_schema_whose_tails_no_document_reaches():
    """Github_easy---o21833's shape: no `type`, so any non-object is valid, and the object branch is empty (a
    required string whose pattern cannot match): the skeleton is unreachable, minimisation merges the mark's
    column with dead characters, and the schema compiles with no deep states (it crashed the first full run)."""
    schema = {"properties": {"y": {"type": "string", "pattern": "/^[0-9]{4}$/"}}, "required": ["y"]}
    documents = JsonDocuments(JsonSchema(json.dumps(schema), deep_tails=True))
    assert documents.syntax is None and not documents.dfa.deep.any()
    assert documents.accepts("1") and not documents.accepts('{"y":"2001","x":[[[[1]]]]}')
