"""What a search reports (pc_core.search.GuidedSearch): the text settled so far, streamed as it is generated
(beam search: the beams' common prefix; held back where it may still turn out to be the suffix or a stop
string), each finished hypothesis judged by the independent checker, and its GenerationOutput when done."""

from __future__ import annotations

import time

from pc_core.constraints import check_ids, decode_continuation
from pc_core.constraints.checker import first_stop, judge_ids
from pc_core.infill import rank_finished
from pc_core.results import GenerationOutput, Hypothesis, SequenceResult, StreamEvent


class SearchOutput:
    """GuidedSearch's reporting half: it reads the state GuidedSearch._start_rows sets (params, finished,
    generated, sample_index, streamed, ...) and the search's suffix_plan / lm / lm_input; UnguidedSearch
    overrides `_judge`."""

    def _settled(self) -> list[tuple[list[int], Hypothesis | None]]:
        """Per output index, the token ids that can no longer change, and the hypothesis when they are a
        finished one (sampling)."""
        if self.params.do_sample:
            out: list[tuple[list[int], Hypothesis | None]] = [
                (h.ids, h) if h else ([], None) for h in self.finished
            ]
            for row, slot in enumerate(self.sample_index):
                out[slot] = (self.generated[row].tolist(), None)
            return out
        candidates = [h.ids for h in self.finished] + self.generated.tolist()
        if not candidates:
            return [([], None)]
        common = candidates[0]
        for ids in candidates[1:]:
            n = 0
            while n < min(len(common), len(ids)) and common[n] == ids[n]:
                n += 1
            common = common[:n]
        return [(common, None)] + [([], None) for _ in range(self.params.num_return_sequences - 1)]

    def _settled_text(self, ids: list[int], finished: Hypothesis | None) -> str:
        """The text of settled ids that is certain to be part of the output's text (the span): all of it
        without a suffix or stop strings; else without the last len(suffix) characters (they may be the
        suffix) and the end of the text from where a stop string may start. A finished output: its span."""
        if finished is not None:
            return self._judge(finished)[0]
        # a character split across tokens decodes to U+FFFD until its last byte comes: held back till then
        text = decode_continuation(self.tokenizer, ids).rstrip("\ufffd")
        if not self.affixed:
            return text
        keep = len(text)
        if self.params.suffix is not None:
            keep -= len(self.params.suffix)
        if self.params.stop:
            cut = first_stop(text, self.params.stop)[1]
            keep = min(
                keep, len(text) if cut is None else cut, len(text) - max(map(len, self.params.stop)) + 1
            )
        return text[: max(0, keep)]

    def _judge(self, h: Hypothesis) -> tuple[str, bool, str, str]:
        """(span text, satisfied, finish reason, full text) of a finished hypothesis, by the independent
        checker."""
        if h.judgement is None:
            if not self.affixed:
                text = decode_continuation(self.tokenizer, h.ids)
                h.judgement = (text, check_ids(self.constraint, self.tokenizer, h.ids), h.finish_reason, text)
            else:
                found = judge_ids(self.judged, self.tokenizer, h.ids)
                reason = {"suffix": "eos"}.get(found.reason, found.reason)
                if reason == "length" and h.finish_reason == "eos":  # h.ids stop before the EOS that ended it
                    reason = "eos"
                full = found.full_text
                if self.suffix_plan is not None and found.reason == "suffix":
                    full += self.suffix_plan.rest  # attached as text after the junction
                h.judgement = (found.text, found.satisfied, reason, full)
        return h.judgement

    def _stream(self) -> None:
        if self.on_stream is None or (not self.params.do_sample and self.done):
            return  # beam search: the final result carries what was not settled before the end
        for index, (ids, finished) in enumerate(self._settled()):
            sent = self.streamed[index]
            if len(ids) > len(sent) or (finished is not None and index not in self.stream_closed):
                old = self.streamed_text[index]
                new = self._settled_text(ids, finished)
                self.streamed[index] = ids
                if finished is not None:
                    self.stream_closed.add(index)
                if len(new) > len(old) and new.startswith(old):
                    self.streamed_text[index] = new
                    self.on_stream(StreamEvent(index, new[len(old) :], ids[len(sent) :]))

    def _finish(self) -> None:
        results = []
        for h in (h for h in self.finished if h is not None):
            results.append((h, *self._judge(h)))
        ranking = self._score_suffix([item[0] for item in results])
        if not self.params.do_sample:

            def rank(item: tuple) -> tuple:
                h, _, ok, _, _ = item
                length = max(1, len(h.ids) + h.scored_tokens)
                return (bool(ok), h.lm_logprob / (length**self.params.length_penalty))

            results = sorted(results, key=rank, reverse=True)[: self.params.num_return_sequences]
            if self.on_stream is not None:  # the rest of each chosen beam, after what was settled
                for index, (h, text, _, _, _) in enumerate(results):
                    sent = self.streamed[index]
                    done = self.streamed_text[index] if h.ids[: len(sent)] == sent else ""
                    if text != done and text.startswith(done):
                        self.on_stream(StreamEvent(index, text[len(done) :], h.ids[len(sent) :]))
        sequences = [
            SequenceResult(text, h.ids, bool(ok), reason, h.lm_logprob, full, h.logprobs)
            for h, text, ok, reason, full in results
        ]
        decode_ms = (time.perf_counter() - self.decode_started) * 1000
        states = self.dfa.num_states if self.dfa is not None else None  # None: no constraint
        self.output = GenerationOutput(sequences, self.prompt_tokens, states,
                                       {**self.timings, "decode_ms": decode_ms}, self.params.suffix)  # fmt: skip
        if self.suffix_plan is not None:
            self.output.suffix, self.output.ranking = self.suffix_plan.suffix, ranking
        self.output.guide = getattr(self.guide, "kind", None)  # None: no guide (pc_core.unguided)

    def _score_suffix(self, finished: list[Hypothesis]) -> str | None:
        """With a suffix: add the LM's log-likelihood of its rest to each finished beam that ended with the
        junction, when the LM's context holds prompt, span and suffix (one batched forward); returns how the
        beams are ranked (pc_core.infill.rank_finished)."""
        if self.suffix_plan is None:
            return None
        suffix = self.suffix_plan.suffix
        ended = [h for h in finished if h.judgement is not None and h.judgement[3].endswith(suffix) and h.ids]
        spans = [[t for t in h.ids if t != self.eos] for h in ended]
        ranking, rest = rank_finished(self.lm, self.lm_input, spans, self.suffix_plan, self.fim)
        for h, value in zip(ended, rest):
            if ranking == "span+suffix" and self.suffix_plan.rest_ids:
                h.lm_logprob += value
                h.scored_tokens = len(self.suffix_plan.rest_ids)
        return ranking
