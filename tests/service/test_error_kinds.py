"""One error enum (pc_core.errors.ErrorKind), said as HTTP in one place (service/errors.py): every kind has its
status, every error class its kind, and what the engine raises as the library raised it reaches the client
through that one table, with the body's own field names."""

import asyncio

import httpx

from pc_core.errors import (
    BlocklistInteraction,
    CompileBacklogFull,
    ConstraintError,
    ConstraintTooComplex,
    DeadlineExceeded,
    ErrorKind,
    HMMFormatError,
    PcgenError,
    TokenizerMismatch,
    UnsatisfiableConstraint,
)
from pc_core.guide import GuideError
from pc_core.params import DecodingError
from service.errors import HTTP_STATUS, classify

RAISED = {
    ConstraintError("constraint.all[1]", "bad"): (422, "invalid_constraint"),
    ConstraintTooComplex("constraint", "too big", states=9, limit=8): (422, "constraint_too_complex"),
    UnsatisfiableConstraint("constraint", "cannot"): (422, "unsatisfiable_constraint"),
    DecodingError("top_p", "must be in (0, 1]"): (422, "invalid_parameters"),
    DeadlineExceeded("late"): (504, "timeout"),
    CompileBacklogFull("busy"): (429, "compile_backlog_full"),
    TokenizerMismatch("other tokenizer"): (500, "model_mismatch"),
    HMMFormatError("corrupt"): (500, "model_error"),
    GuideError("horizon"): (500, "guide_error"),
    BlocklistInteraction("dead end"): (500, "internal_error"),
    PcgenError("anything"): (500, "internal_error"),
}


def test_every_kind_has_one_status_and_every_error_its_kind():
    assert set(HTTP_STATUS) == set(ErrorKind)
    assert {type(err).kind for err in RAISED} == set(ErrorKind)
    for err, (status, error_type) in RAISED.items():
        said = classify(err)
        assert (said.status, said.error_type) == (status, error_type), type(err).__name__
        assert err.kind.request_fault == (status == 422)
        if status == 500:  # a server fault is never blamed on the client, nor its text shown
            assert said.path is None and "see the server log" in said.message
    assert classify(ValueError("a bug")).status == 500  # not raised on purpose: internal, no detail


def _app(error: BaseException):
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(hmm="unused", warmup=False), load=False)
    runtime = app.state.runtime

    class Raising:  # an EngineClient whose submit raises what the library raised, unclassified
        queue_depth = active = 0

        async def submit(self, *args, **kwargs):
            raise error

        def cancel(self, job, reason="disconnect"):
            return False

        def stop(self):
            pass

    return app, runtime, Raising()


def _post(error: BaseException, path: str, body: dict) -> httpx.Response:
    app, runtime, engine = _app(error)

    async def run():
        await runtime.start(load=False)
        runtime.engine, runtime.warmup = engine, "ok"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(path, json=body)
        await runtime.stop()
        return response

    return asyncio.run(run())


def test_the_engines_errors_are_said_with_the_bodys_field_names():
    error = DecodingError("max_new_tokens", "must be >= {min_new_tokens}")
    native = _post(error, "/generate", {"prompt": "The", "keywords": ["dog"], "max_new_tokens": 4})
    assert native.status_code == 422
    assert native.json()["error"] == {"type": "invalid_parameters", "message": "must be >= min_new_tokens",
                                      "path": "max_new_tokens"}  # fmt: skip

    openai = _post(error, "/v1/completions", {"prompt": "The", "keywords": ["dog"], "max_tokens": 4})
    assert openai.status_code == 400
    assert openai.json()["error"] == {"message": "must be >= min_tokens", "type": "invalid_request_error",
                                      "param": "max_tokens", "code": "invalid_parameters"}  # fmt: skip


def test_a_server_fault_from_the_engine_is_a_500_not_the_clients():
    response = _post(TokenizerMismatch("the HMM was distilled for another tokenizer"), "/generate",
                     {"prompt": "The", "keywords": ["dog"]})  # fmt: skip
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "model_mismatch" and "path" not in error and "request_id" in error
