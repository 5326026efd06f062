"""A corpus of bad inputs: each gets one clear error naming the config key, or the file and line, before
any model is trained, and leaves no checkpoint, export or metrics behind."""

import json
import zipfile

import pytest

from r1lab.data.sources import DataError
from r1lab.train import ConfigError, run

FAST = ["debug=fast", "callbacks.progress_bar=null", "test=false"]

# (overrides, the error's start): config values, each named by its key
CONFIGS = [
    (["stage=sft", "module.loss_on=everything"], r"module.loss_on: 'everything' is not 'response' or 'all'"),
    (["stage=sft", "data.mode=ppo"], r"data.mode: unknown mode 'ppo'"),
    (["stage=sft", "data.template=fancy"], r"data.template: unknown template 'fancy'"),
    (["stage=sft", "data.batch_size=0"], r"data.batch_size: must be an integer in \[1, inf\]"),
    (["stage=sft", "data.max_prompt_tokens=0"], r"data.max_prompt_tokens: must be an integer in \[1, inf\]"),
    (["stage=sft", "data.train_limit=-1"], r"data.train_limit: must be an integer in \[0, inf\]"),
    (["stage=sft", "backbone.dtype=float64"], r"backbone.dtype: unknown dtype 'float64'"),
    (["stage=sft", "backbone.tiny.family=gpt"], r"backbone.tiny.family: 'gpt' is not one of"),
    (["stage=sft", "module.optimizer.lr=fast"], r"module.optimizer.lr: must be a number, got 'fast'"),
    (["stage=sft", "module.optimizer.weight_decay=-1"], r"module.optimizer: Invalid weight_decay value: -1"),
    (["stage=sft", "module.evaluation.k=-1"], r"module.evaluation.k: must be an integer >= 0"),
    (["stage=sft", "module.evaluation.temperature=0"], r"module.evaluation.temperature: must be > 0"),
    (["stage=sft", "module.evaluation.top_p=2"], r"module.evaluation.top_p: must lie in \(0, 1\]"),
    (["stage=sft", "rollout.engine=fastest"], r"rollout.engine: unknown engine 'fastest'"),
    (["stage=sft", "module.nonfinite=ignore"], r"module.nonfinite: 'ignore' is not one of stop, skip"),
    (["stage=sft", "data.source.max_operand=-5"], r"data.source.max_operand: must be an integer >= 1, got -5"),
    (["stage=sft", "data.source.difficulty=[3,1]"], r"data.source.difficulty: need 1 <= min <= max"),
    (["stage=sft", "+data.source.sizes.holdout=3"], r"data.source.sizes: unknown split\(s\) \['holdout'\]"),
    (["stage=sft", "+data.source.families.algebra=1.0"],
     r"data.source.families: unknown task family \['algebra'\]"),
    (["stage=sft", "data.source.solutions=long"], r"data.source.solutions: 'long' is not one of"),
    (["stage=sft", "data.source.zh_fraction=1.5"], r"data.source.zh_fraction: must lie in \[0, 1\]"),
    (["stage=grpo", "module.temperature=0"], r"module.temperature: must be > 0, got 0"),
    (["stage=grpo", "module.top_p=1.5"], r"module.top_p: must lie in \(0, 1\]"),
    (["stage=grpo", "module.max_new_tokens=0"], r"module.max_new_tokens: must be an integer >= 1"),
    (["stage=grpo", "module.kl_estimator=k4", "module.beta=0"],
     r"module.kl_estimator: 'k4' is not one of k1, k2, k3"),
    (["stage=grpo", "module.aggregation=mean"], r"module.aggregation: 'mean' is not one of"),
    (["stage=grpo", "module.advantage_scale=rank"], r"module.advantage_scale: 'rank' is not one of"),
    (["stage=grpo", "module.beta=-1"], r"module.beta: must be a number in \[0.0, inf\], got -1"),
    (["stage=grpo", "module.clip_low=1.5"], r"module.clip_low: must be a number in \[0.0, 1.0\], got 1.5"),
    (["stage=grpo", "module.group_size=1"], r"module.group_size: must be an integer in \[2, inf\]"),
    (["stage=grpo", "module.micro_batch_size=0"], r"module.micro_batch_size: must be an integer in \[1, inf\]"),
    (["stage=grpo", "module.rewards.functions.accuracy=no_such_reward"],
     r"module.rewards.functions.accuracy: unknown"),
    (["stage=grpo", "module.rewards.weights.accuracy=heavy"], r"module.rewards.weights.accuracy: not a number"),
    (["stage=rm", "module.kind=pairwise"], r"module.kind: 'pairwise' is not one of"),
    (["stage=distill", "module.alpha=2"], r"module.alpha: must lie in \[0, 1\]"),
    (["stage=sft_data", "job.sampling.temperature=0"], r"job.sampling.temperature: must be > 0"),
    (["stage=sft_data", "+job.filters.colour=1"], r"job.filters: .*colour"),
    (["stage=preferences", "job.mode=guess"], r"job.mode: 'guess' is not one of synthetic, sample"),
]


@pytest.mark.parametrize(("overrides", "message"), CONFIGS, ids=[" ".join(o) for o, _ in CONFIGS])
def test_bad_config_values_fail_first_naming_the_key(make_cfg, pipeline_root, tmp_path, overrides, message):
    cfg = make_cfg(*overrides, *FAST, f"paths.output_root={pipeline_root}")
    with pytest.raises((ConfigError, DataError, ValueError), match=f"^{message}"):
        run(cfg)
    assert not any((tmp_path / name).exists() for name in ("checkpoints", "hf", "metrics.json"))


def _jsonl(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


GOOD = {"prompt": "What is 3 + 4?", "answer": "7", "response": "<think> 3 plus 4 is 7. </think> <answer> 7 </answer>"}
# (file name, its bytes, the error's message): data files, each named with the line or row at fault
FILES = [
    ("train.jsonl", _jsonl([GOOD, "{not json"]), r"train.jsonl:2: not valid JSON"),
    ("train.jsonl", _jsonl([GOOD, "[1, 2]"]), r"train.jsonl:2: expected a JSON object, got list"),
    ("train.jsonl", _jsonl([GOOD, {"prompt": "x", "answer": "1"}]), r"train.jsonl:2: missing field 'response'"),
    ("train.jsonl", _jsonl([GOOD, {**GOOD, "prompt": "  "}]), r"train.jsonl:2: field 'prompt' is empty or not text"),
    ("train.jsonl", _jsonl([GOOD, {**GOOD, "prompt": {"a": 1}}]),
     r"train.jsonl:2: field 'prompt' is empty or not text"),
    ("train.jsonl", _jsonl([GOOD]).encode() + b"\xff\xfe\x00binary\n", r"train.jsonl:2: not UTF-8 text"),
    ("train.jsonl", json.dumps({**GOOD, "prompt": "Combien font 3 + 4 ? Réponds."}, ensure_ascii=False)
     .encode("latin-1") + b"\n", r"train.jsonl:1: not UTF-8 text"),
    ("train.parquet", b"prompt,answer\nx,1\n", r"train.parquet: cannot be read as parquet"),
    ("train.json", b"{\"prompt\": ", r"train.json: cannot be read as json"),
    ("train.txt", b"What is 3 + 4?\n", r"train.txt: unsupported file type '.txt'"),
    ("missing.jsonl", None, r"missing.jsonl: no such data file"),
]


@pytest.mark.parametrize(("name", "content", "message"), FILES,
                         ids=[m.split(":")[-1].strip()[:30] for *_, m in FILES])
def test_bad_data_files_name_the_file_and_line(make_cfg, tmp_path, name, content, message):
    path = tmp_path / "data" / name
    path.parent.mkdir()
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    cfg = make_cfg("stage=sft", *FAST, "data=jsonl", f"data.source.train={path}", f"data.source.test={path}",
                   "data.source.val_size=0", "data.num_workers=0", data=[])
    with pytest.raises(DataError, match=message):
        run(cfg)
    assert not any((tmp_path / name).exists() for name in ("checkpoints", "hf", "metrics.json"))


def test_checkpoints_that_cannot_be_resumed_are_named(make_cfg, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    run(make_cfg("stage=sft", *FAST, "trainer.max_steps=2"))
    truncated.write_bytes((tmp_path / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    foreign = tmp_path / "foreign.ckpt"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("notes.txt", "not a checkpoint")
    for path, message in ((tmp_path / "none.ckpt", "no checkpoint file"), (truncated, "is not a complete checkpoint"),
                          (foreign, "cannot be loaded")):
        with pytest.raises(ConfigError, match=f"^ckpt_path: .*{message}"):
            run(make_cfg("stage=sft", *FAST, f"ckpt_path={path}"))


def test_prompts_longer_than_the_limit_are_counted_and_reported_once(make_cfg, tmp_path):
    from r1lab.models import Backbone

    path = tmp_path / "long.jsonl"
    rows = [GOOD] * 6 + [{**GOOD, "prompt": "What is " + " + ".join(["1"] * 200) + "?"}] * 2
    path.write_text(_jsonl(rows))
    cfg = make_cfg("stage=sft", "data=jsonl", f"data.source.train={path}", "data.source.val_size=0",
                   "data.max_prompt_tokens=64", "data.num_workers=0", data=[])
    from r1lab.train import build

    data = build(cfg, "data")
    data.connect(Backbone(tiny=dict(cfg.backbone.tiny)).tokenizer)
    with pytest.warns(UserWarning, match=r"data: 2 of 8 train records have a prompt longer than "
                                         r"data.max_prompt_tokens=64 tokens; its start is cut"):
        data.setup("fit")
    assert data.cuts["train"] == {"prompt": 2, "response": 0}


def test_a_missing_or_empty_model_folder_is_named(make_cfg, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=f"^backbone.name_or_path: no model folder at {tmp_path}/nowhere"):
        run(make_cfg("stage=sft", *FAST, "backbone=hf", f"backbone.name_or_path={tmp_path}/nowhere"))
    with pytest.raises(FileNotFoundError, match="backbone.name_or_path: .* holds no config.json"):
        run(make_cfg("stage=sft", *FAST, "backbone=hf", f"backbone.name_or_path={tmp_path}/empty"))
