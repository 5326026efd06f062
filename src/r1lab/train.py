"""The entry point of every stage: ``python -m r1lab.train stage=<stage> [overrides]``.

A training stage: seed → backbone (model + tokenizer) → DataModule (connected to the tokenizer) →
module → callbacks, loggers → trainer → fit → test → metrics.json; returns the metric a sweep
optimises. A job stage (its config sets ``job``: rejection sampling, preference pairs, …): seed → the
job → its run → metrics.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("r1lab.train")


def short_name(text: str, limit: int = 160) -> str:
    """A folder name from a run's overrides, cut with a hash when too long for the file system
    (an Optuna trial's overrides easily pass the 255-byte limit of a name)."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 9]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


OmegaConf.register_new_resolver("short_name", short_name, replace=True)


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key."""


def build(cfg: DictConfig, key: str, **kwargs):
    """``hydra.utils.instantiate`` with errors that name the config key at fault."""
    node = OmegaConf.select(cfg, key)
    if node is None:
        raise ConfigError(f"{key}: missing from the config")
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except Exception as e:  # re-raised with the key; the original stays chained
        cause = e.__cause__ if e.__cause__ is not None and type(e).__name__ == "InstantiationException" else e
        message = str(cause)
        named = message.split(":", 1)[0]
        names_a_key = "." in named and " " not in named and named.split(".")[0] in cfg
        raise ConfigError(message if names_a_key else f"{key}: {message}") from e


def _flat(cfg: DictConfig) -> dict:
    """The resolved config as flat ``a/b/c -> scalar`` hyperparameters for TensorBoard."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        elif isinstance(node, list):
            out[prefix] = str(node)
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), "")
    return {k: v for k, v in out.items() if not k.startswith(("hydra", "paths", "callbacks"))}


def checkpoint_step(path: str) -> int:
    """The global step of a Lightning checkpoint, read without loading its tensors; a missing,
    truncated or foreign file fails naming ``ckpt_path``."""
    import zipfile

    import torch

    if not Path(path).is_file():
        raise ConfigError(f"ckpt_path: no checkpoint file at {path}")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"ckpt_path: {path} is not a complete checkpoint (truncated, or not written by torch.save)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure to read it is the same user error
        raise ConfigError(f"ckpt_path: {path} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise ConfigError(f"ckpt_path: {path} is not a Lightning checkpoint (no global_step)")
    return int(checkpoint["global_step"])


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and/or test one stage as configured; returns the final metrics."""
    resume_step = checkpoint_step(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.get("job") is not None:
        return run_job(cfg)

    log.info(f"Backbone <{cfg.backbone._target_}>")
    backbone = build(cfg, "backbone")
    log.info(f"DataModule <{cfg.data._target_}> in mode {cfg.data.mode!r}")
    datamodule = build(cfg, "data")
    datamodule.connect(backbone.tokenizer)
    log.info(f"Module <{cfg.module._target_}>")
    module = build(cfg, "module", backbone=backbone)

    callbacks = [build(cfg, f"callbacks.{name}") for name in (cfg.get("callbacks") or {})
                 if cfg.callbacks[name] is not None]
    loggers = []
    for name in cfg.get("logger") or {}:
        if cfg.logger[name] is not None:
            # a resumed run drops the TensorBoard events its killed predecessor logged after the checkpoint
            purge = {"purge_step": resume_step} if resume_step is not None and "TensorBoard" in str(
                cfg.logger[name].get("_target_")) else {}
            loggers.append(build(cfg, f"logger.{name}", **purge))
    log.info(f"Trainer <{cfg.trainer._target_}>")
    trainer = build(cfg, "trainer", callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(_flat(cfg))

    try:
        if cfg.get("train"):
            log.info("Training")
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test"):
            log.info("Testing the trained weights (the exported ones: callbacks.hf_export.weights) on the test split")
            trainer.test(module, datamodule=datamodule, ckpt_path=None if cfg.get("train") else cfg.get("ckpt_path"))
            metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
    finally:  # a sweep's runs share the process: each frees its engine (vLLM's memory) before the next
        if hasattr(module, "close_engine"):
            module.close_engine()

    # The HParams view of TensorBoard: this run's config next to its final numbers.
    final = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items() if k.split("/")[0] in ("val", "test")}
    final |= {f"hp/{k.replace('/', '_')}": metrics[k] for k in ("train/kl", "train/reward") if k in metrics}
    for logger in loggers:
        logger.log_hyperparams(_flat(cfg), metrics=final)

    if trainer.is_global_zero:
        if cfg.get("test") and getattr(module, "test_rows", None):
            # each test prompt's scores: the report pairs two stages' answers prompt by prompt
            from r1lab.jobs.durable import jsonl_text, write_atomic

            write_atomic(Path(cfg.paths.output_dir) / "test_predictions.jsonl", jsonl_text(module.test_rows))
        write_metrics(cfg, metrics)
    return metrics


def run_job(cfg: DictConfig) -> dict[str, float]:
    """A data-generating stage: build the job from ``cfg.job`` and run it into the run's folder."""
    log.info(f"Job <{cfg.job._target_}>")
    job = build(cfg, "job")
    metrics = {k: float(v) for k, v in job.run(Path(cfg.paths.output_dir)).items()}
    write_metrics(cfg, metrics)
    return metrics


def write_metrics(cfg: DictConfig, metrics: dict[str, float]) -> None:
    """``metrics.json``, written last: the pipeline takes a stage whose folder has it as finished."""
    out = Path(cfg.paths.output_dir) / "metrics.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    tmp.replace(out)
    log.info(f"Metrics: {json.dumps({k: round(v, 4) for k, v in metrics.items()})}")


# Errors a user can fix from the message alone: one line at the end, the traceback in the run's log.
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except USER_ERRORS as error:
        if not is_user_error(error):
            raise
        files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s: %s", (type(error).__name__, error),
                                sys.exc_info())
        for handler in files:  # the traceback goes to the run's train.log only
            handler.handle(record)
        where = f" (traceback in {files[0].baseFilename})" if files else ""
        print(f"error: {error}{where}", file=sys.stderr, flush=True)
        sys.exit(1)
    return metrics.get(cfg.get("optimized_metric"))


def is_user_error(error: BaseException) -> bool:
    """Errors of the project's own checks (a config value, a data file, a checkpoint, a job, a
    non-finite loss), as opposed to a failure inside a library, which keeps its traceback."""
    from r1lab.data.sources import DataError
    from r1lab.jobs.durable import JobError
    from r1lab.modules.guards import NonFiniteError

    return isinstance(error, ConfigError | DataError | JobError | NonFiniteError) or (
        isinstance(error, ValueError | FileNotFoundError) and type(error).__module__.startswith("r1lab")) or (
        any(str(error).startswith(prefix) for prefix in ("module.", "data.", "job.", "backbone.", "rollout.",
                                                          "reward.", "ckpt_path", "trainer.")))


if __name__ == "__main__":
    main()
