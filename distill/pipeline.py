"""`pcgen distill run --config FILE`: sample -> lvd -> (fresh samples) -> train from one YAML or TOML file.

    lm: gpt2-large            # hub id or local directory
    out: runs/gpt2l-4096      # stage outputs go to out/samples, out/lvd, out/em-samples, out/hmm
    seed: 0                   # default seed of every stage
    device: auto
    sample:    {num_sequences: 200000, seq_len: 32, save_embeddings: 200000, batch_size: 256}
    lvd:       {hidden_size: 4096, kmeans_iters: 30}
    em_sample: {num_sequences: 8000000, seq_len: 32, batch_size: 256}   # optional: EM on fresh samples
    train:     {steps: 40, chunk_size: 1000000, batch_size: 1024}

With a `server:` section, sampling goes through OpenAI-compatible servers and an embed stage computes the
hidden states LVD needs with the local LM (sample (server) -> embed -> lvd -> em_sample (server) -> train):

    server: {url: "http://gpu-a:8000,http://gpu-b:8000", model: gpt2-large, concurrency: 64}
    embed:  {batch_size: 256}     # optional: EmbedConfig fields; default: every LVD sample, last layer

`url` is a comma-separated string or a list; the other keys are SampleConfig's server fields (api_key, model,
concurrency, max_retries, request_timeout). `sample` then must not set save_embeddings.

Section keys are the fields of SampleConfig / LVDConfig / TrainConfig (the CLI flags with '_'); a section
may set its own `out` and `seed` (em_sample defaults to seed + 1, so its samples are fresh). Relative paths (out, prompts, heldout_data) are relative to the config file.
Every stage is resumable, and finished ones are skipped: rerunning the same file after a kill continues
where it stopped. Under torchrun, sampling and EM use every rank; LVD runs on rank 0 while the others wait.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from distill import dist
from distill.errors import DistillError

log = logging.getLogger(__name__)


def _say(ctx: dist.Context, *args: object) -> None:
    if ctx.is_main:
        log.info(*args)


TOP = {"lm", "out", "seed", "device", "server", "sample", "embed", "lvd", "em_sample", "train"}
SERVER_KEYS = {"url", "api_key", "model", "concurrency", "max_retries", "request_timeout"}


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise DistillError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            config = tomllib.loads(text)
        else:
            import yaml

            config = yaml.safe_load(text)
    except Exception as err:  # yaml.YAMLError, tomllib.TOMLDecodeError
        raise DistillError(f"{path}: cannot parse ({err})") from err
    if not isinstance(config, dict):
        raise DistillError(f"{path}: expected a mapping at the top level")
    unknown = set(config) - TOP
    if unknown:
        raise DistillError(f"{path}: unknown keys {sorted(unknown)} (allowed: {sorted(TOP)})")
    for key in ("lm", "out"):
        if key not in config:
            raise DistillError(f"{path}: missing required key {key!r}")
    for key in ("sample", "lvd", "train"):
        if not isinstance(config.get(key), dict):
            raise DistillError(f"{path}: missing section {key!r}")
    server = config.get("server")
    if server is not None and (
        not isinstance(server, dict) or "url" not in server or set(server) - SERVER_KEYS
    ):
        raise DistillError(
            f"{path}: server: a mapping with `url` and optionally {sorted(SERVER_KEYS - {'url'})}"
        )
    return config


def _server_fields(config: dict) -> dict:
    """The `server:` section as SampleConfig fields (url -> server, a list joined with commas)."""
    section = dict(config.get("server") or {})
    if not section:
        return {}
    url = section.pop("url")
    return {"server": ",".join(url) if isinstance(url, list) else str(url), **section}


def _section(cls: type, values: dict, where: str, **fixed: object) -> object:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise DistillError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(names - set(fixed))})")
    try:
        return cls(**{**fixed, **values})
    except TypeError as err:
        raise DistillError(f"{where}: {err}") from err


def run_pipeline(config_path: str | Path) -> Path:
    """Run every unfinished stage; returns the directory of the final HMM."""
    from distill import data
    from distill.em import TrainConfig, run_train
    from distill.lvd import LVDConfig, run_lvd
    from distill.sample import SampleConfig, run_sample

    config_path = Path(config_path)
    config = load_config(config_path)
    base = config_path.resolve().parent
    rel = lambda p: None if p is None else str(p if Path(p).is_absolute() else base / p)
    root = Path(rel(config["out"]))
    common = {"seed": config.get("seed", 0), "device": config.get("device", "auto")}
    ctx = dist.init(common["device"])

    samples = {}
    for name, default_dir in (("sample", "samples"), ("em_sample", "em-samples")):
        section = dict(config.get(name) or {})
        if name == "em_sample" and not section:
            continue
        section["out"] = rel(section.get("out", root / default_dir))
        if section.get("prompts"):
            section["prompts"] = rel(section["prompts"])
        fixed = dict(common, lm=config["lm"], **_server_fields(config))
        if name == "em_sample":  # fresh samples: other shard seeds than the LVD samples unless set
            fixed["seed"] = common["seed"] + 1
        cfg = _section(SampleConfig, section, f"{config_path}: {name}", **fixed)
        samples[name] = Path(cfg.out)
        if _sample_finished(cfg, data):
            _say(ctx, "stage %s: %s is complete, skipping", name, cfg.out)
        else:
            _say(ctx, "stage %s -> %s", name, cfg.out)
            run_sample(cfg)

    if config.get("server") or config.get("embed"):
        _embed(config, config_path, samples["sample"], common)

    section = dict(config["lvd"])
    section["out"] = rel(section.get("out", root / "lvd"))
    lvd_cfg = _section(LVDConfig, section, f"{config_path}: lvd", data=str(samples["sample"]), **common)
    if ctx.is_main:
        log.info("stage lvd -> %s", lvd_cfg.out)
        run_lvd(lvd_cfg)  # skips by itself when the output exists with the same settings
    dist.barrier(ctx)

    section = dict(config["train"])
    section["out"] = rel(section.get("out", root / "hmm"))
    if section.get("heldout_data"):
        section["heldout_data"] = rel(section["heldout_data"])
    train_data = samples.get("em_sample", samples["sample"])
    train_cfg = _section(
        TrainConfig, section, f"{config_path}: train", init=lvd_cfg.out, data=str(train_data), **common
    )
    out = Path(train_cfg.out)
    if _train_finished(out, train_cfg):
        _say(ctx, "stage train: %s already holds the model after %d steps, skipping", out, train_cfg.steps)
    else:
        _say(ctx, "stage train -> %s", out)
        run_train(train_cfg)
    return out


def _embed(config: dict, config_path: Path, samples: Path, common: dict) -> None:
    """Hidden states for LVD over the LVD samples (run_embed skips the shards it finished before)."""
    from distill.embed import EmbedConfig, run_embed

    fixed = dict(lm=config["lm"], data=str(samples), device=common["device"])
    cfg = _section(EmbedConfig, dict(config.get("embed") or {}), f"{config_path}: embed", **fixed)
    _say(dist.init(common["device"]), "stage embed -> %s", samples)
    run_embed(cfg)


def _sample_finished(cfg: object, data: object) -> bool:
    out = Path(cfg.out)
    if not (out / data.MANIFEST).exists():
        return False
    manifest = data.read_manifest(out)
    same = (
        manifest.get("num_sequences") == cfg.num_sequences
        and manifest.get("seq_len") == cfg.seq_len
        and manifest.get("shard_size") == cfg.shard_size
        and manifest["settings"].get("seed") == cfg.seed
        and manifest["settings"].get("save_embeddings") == cfg.save_embeddings
    )
    return bool(manifest.get("complete")) and same


def _train_finished(out: Path, cfg: object) -> bool:
    """The final model is there and was trained with these settings (run_train would only reload it)."""
    config = out / "config.json"
    if not config.exists():
        return False
    meta = json.loads(config.read_text()).get("metadata", {})
    done = meta.get("em", {}) if meta.get("source") == "em" else {}
    keys = (
        "init",
        "data",
        "steps",
        "chunk_size",
        "step_size",
        "pseudocount",
        "seed",
        "heldout",
        "heldout_data",
    )
    return (
        bool(done)
        and done.get("steps_done") == cfg.steps
        and all(done.get(k) == getattr(cfg, k) for k in keys)
    )
