"""`pcgen serve`: run the REST service under uvicorn.

Every setting (service.settings.Settings) is a flag, `--max-batch-size 8` for PCGEN_MAX_BATCH_SIZE; flags
override the environment. The flag parser is built from the settings when the command runs, so `pcgen --help`
stays fast (this module imports nothing heavy).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing

# Setting names (service.settings.Settings fields), kept here so registering the command imports nothing;
# tests check that they match the settings. Values are validated (and converted) by the settings model.
VALUE_SETTINGS = (
    "lm", "hmm", "device", "dtype", "model_name", "host", "port", "log_level", "redis_url", "cache_ttl_s",
    "cache_size", "rate_limit", "api_keys", "max_batch_size", "max_queue", "prepare_workers",
    "request_timeout_s", "max_new_tokens", "max_prompt_chars", "max_keywords", "max_forbidden",
    "max_keyword_chars", "max_beams", "max_body_bytes", "max_states", "compile_time_budget_s", "metrics_port",
    "response_cache_bytes", "redis_timeout_s", "compile_workers", "compile_backlog", "body_timeout_s",
    "dfa_cache_bytes", "guide_cache_bytes", "guide", "guide_budget_bytes", "guide_budget_gflops",
    "guide_table_dtype", "guide_emission_dtype", "max_suffix_chars", "compile_light_workers", "trusted_proxies",
)  # fmt: skip
BOOL_SETTINGS = (
    "playground", "warmup", "cache", "metrics_public", "docs_public", "batching", "allow_tokenizer_mismatch",
    "compile_warm_up",
)  # fmt: skip


class _FullHelp(argparse.Action):
    """`pcgen serve --help`: the flags with their descriptions, environment variables and defaults."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help="show the flags")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        build_parser().print_help()
        parser.exit()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the REST service (POST /generate, /v1/completions, SSE, /metrics)",
        description="Run the pcgen REST service. Each flag overrides its PCGEN_* environment variable.",
        add_help=False,
    )
    p.add_argument("-h", "--help", action=_FullHelp)
    for name in VALUE_SETTINGS:
        p.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, metavar=name.upper()
        )
    for name in BOOL_SETTINGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                       action=argparse.BooleanOptionalAction)  # fmt: skip
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    from service.settings import Settings, env_name, flag_name

    parser = argparse.ArgumentParser(
        prog="pcgen serve",
        description="Run the pcgen REST service. Each flag overrides its PCGEN_* environment variable.",
    )
    for name, field in Settings.model_fields.items():
        kind, choices = _kind(field.annotation)
        default = field.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else default
        help_text = f"{field.description or ''} [{env_name(name)}; default: {shown}]".strip()
        kwargs: dict = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            parser.add_argument(flag_name(name), action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(flag_name(name), type=kind, choices=choices, metavar=name.upper(), **kwargs)
    return parser


def _kind(annotation: object) -> tuple[type, list | None]:
    """The argparse type of a settings field: bool, int, float or str (lists are comma-separated strings)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kind(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return str, list(typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _kind(args[0])
    if annotation in (bool, int, float):
        return annotation, None  # type: ignore[return-value]
    return str, None


def load_settings(overrides: dict[str, object]) -> object:
    """Settings from the environment with `overrides` (flags) on top; exits with a clear message if invalid."""
    from pydantic import ValidationError

    from service.settings import Settings, describe_error

    try:
        return Settings(**overrides)
    except ValidationError as err:
        print(describe_error(err), file=sys.stderr)
        raise SystemExit(2) from err


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    # a server's log is for events: no "Loading weights" / download progress bars (tqdm) in it
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    names = set(VALUE_SETTINGS) | set(BOOL_SETTINGS)
    settings = load_settings({k: v for k, v in vars(args).items() if k in names})

    import uvicorn

    from service.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for package in ("pcgen", "pc_core", "service", "distill"):  # module loggers are named by __name__
        logging.getLogger(package).setLevel(settings.log_level.upper())
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # in case transformers was imported before the variable was set
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # ServiceMiddleware logs one line per request, without prompts or keys
        timeout_graceful_shutdown=5,
        # uvicorn would believe X-Forwarded-For from any loopback peer; pcgen believes forwarding headers only
        # from the proxies in the `trusted_proxies` setting (service/client_identity.py)
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    runtime = app.state.runtime

    def stop_serving(error: str) -> None:  # models that cannot serve: exit instead of answering 503 forever
        server.should_exit = True

    runtime.on_fatal = stop_serving
    server.run()
    if runtime.error is not None:
        print(f"pcgen serve: {runtime.error}", file=sys.stderr)
        return 1
    return 0
