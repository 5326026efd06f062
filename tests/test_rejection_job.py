"""Rejection sampling: the filters on hand-written completions, and the resumable, versioned job."""

import json

import pytest
import torch

from conftest import compose_cfg
from r1lab.data.sources import DataError, FileSource, MixedSource
from r1lab.data.tinyworld import TinyWorld
from r1lab.generation import TorchEngine
from r1lab.jobs.durable import JobError
from r1lab.jobs.rejection import (
    PromptFormat,
    SamplingConfig,
    SelectionConfig,
    run_rejection,
    select_completions,
)
from r1lab.models.tokenizer import save_tokenizer
from r1lab.rewards.filters import RejectionFilters, count_words, has_code_block, has_long_paragraph
from r1lab.train import run

reasons = RejectionFilters().reasons  # R1's filters: the names of the ones a completion fails ([] = keep)
REF = {"prompt": "What is 12 + 7 - 5?", "answer": "14", "task": "arith", "language": "en"}
GOOD = "<think> 12 plus 7 is 19. 19 minus 5 is 14. </think> <answer> 14 </answer>"


# -- the filters -------------------------------------------------------------------------------
def test_a_correct_well_formed_english_completion_is_kept():
    assert reasons(REF["prompt"], GOOD, REF) == []
    assert reasons(REF["prompt"], "  " + GOOD + "\n", REF) == []  # surrounding whitespace is fine


@pytest.mark.parametrize("completion, reason", [
    ("<think> 12 plus 7 is 19. 19 minus 5 is 15. </think> <answer> 15 </answer>", "incorrect"),
    ("<think> 12 plus 7 is 19. 19 minus 5 is 14. </think> The answer is <answer> 14 </answer>", "malformed"),
    ("12 plus 7 is 19. 19 minus 5 is 14. <answer> 14 </answer>", "malformed"),
    ("<think> 12 plus 7 is 19. 19减5得14。 </think> <answer> 14 </answer>", "mixed_language"),
    ("<think> 12 plus 7 is 19.\n\n```python\nprint(12 + 7 - 5)\n```\n</think> <answer> 14 </answer>",
     "code_block"),
    ("<think> " + "19 plus 0 is 19. " * 60 + "19 minus 5 is 14. </think> <answer> 14 </answer>",
     "long_paragraph"),
])
def test_each_filter_rejects_its_case(completion, reason):
    assert reasons(REF["prompt"], completion, REF) == [reason]


def test_filter_knobs_and_helpers():
    wrong_and_mixed = "<think> 12加7得19。19 minus 5 is 15. </think> <answer> 15 </answer>"
    assert reasons(REF["prompt"], wrong_and_mixed, REF) == ["incorrect", "mixed_language"]

    def verdict(**knobs):
        return RejectionFilters(correct=False, **knobs).reasons(REF["prompt"], wrong_and_mixed, REF)

    # consistency 2/4: en "minus", "is" against zh "加", "得"
    assert verdict(min_language=0.6) == ["mixed_language"]
    assert verdict(min_language=0.5) == [] and verdict(min_language=None) == []
    # a Chinese chain of thought is consistent when Chinese is the target language
    zh = "<think> 12加7得19。19减5得14。 </think> <answer> 14 </answer>"
    assert reasons(REF["prompt"], zh, REF | {"language": "zh"}) == []
    # paragraphs are split at blank lines; words are whitespace words and single CJK ideographs
    # two paragraphs of ~125 words and ~300 characters each (~250 words, ~600 characters together)
    two = "<think> " + "a b c. " * 40 + "\n\n" + "d e f. " * 40 + "</think> <answer> 14 </answer>"
    assert has_long_paragraph(two, max_words=100) and not has_long_paragraph(two, max_words=150)
    assert has_long_paragraph(two, max_chars=250) and not has_long_paragraph(two, max_chars=400)
    assert count_words("12 plus 7 得19。") == 5  # 12, plus, 7, 得, 19。
    assert has_code_block("~~~\nx\n~~~") and not has_code_block("use `x` inline")


def test_valid_steps_drops_lucky_guesses_after_wrong_steps():
    lucky = "<think> 12 plus 7 is 18. 18 minus 5 is 14. </think> <answer> 14 </answer>"  # a wrong step, right answer
    assert reasons(REF["prompt"], lucky, REF) == []  # R1's rules look at the final answer only
    steps = RejectionFilters(valid_steps=True)
    assert steps.reasons(REF["prompt"], lucky, REF) == ["invalid_step"]
    assert steps.reasons(REF["prompt"], GOOD, REF) == []
    zh = "<think> 12加7得19。19减5得14。 </think> <answer> 14 </answer>"
    assert steps.reasons(REF["prompt"], zh, REF | {"language": "zh"}) == []
    assert steps.reasons(REF["prompt"], zh.replace("得14", "得15"), REF | {"language": "zh"}) == ["invalid_step"]


def test_code_blocks_are_allowed_in_code_tasks():
    ref = {"prompt": "Write a Python function f(x) that returns x plus 2.", "answer": "def f(x): return x+2",
           "task": "code", "tests": [[[1], 3], [[4], 6]], "language": "en"}
    fenced = "<think> add 2 to x\n\n```\nx+2\n```\n</think> <answer> def f(x): return x+2 </answer>"
    assert reasons(ref["prompt"], fenced, ref) == []
    assert reasons(ref["prompt"], fenced.replace("x+2 </", "x+3 </"), ref) == ["incorrect"]


def test_selection_dedupes_caps_and_counts():
    texts = [GOOD, GOOD.replace(" 14 </answer>", "  14 </answer>"), GOOD.replace("14", "15"),
             GOOD.replace("19. 19", "19.  19"), "no format at all"]
    written, stats = select_completions(REF, texts, RejectionFilters(), SelectionConfig(dedupe=True))
    assert written == [GOOD]  # the other two correct ones differ only in whitespace
    assert stats == {"k": 5, "correct": 3, "pass_rate": 0.6, "kept": 3, "unique": 1, "written": 1,
                     "reasons": {"incorrect": 2, "malformed": 1}}
    written, stats = select_completions(REF, texts, RejectionFilters(), SelectionConfig(False, 2))
    assert written == texts[:2] and stats["unique"] == 3 and stats["written"] == 2


# -- the job -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy(tmp_path_factory, tiny_backbone):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("policy") / "hf"
    model = tiny_backbone.build_model()
    model.save_pretrained(path)
    save_tokenizer(tiny_backbone.tokenizer, path)
    return str(path), model.eval(), tiny_backbone.tokenizer


RECORDS = TinyWorld(sizes={"train": 10, "val": 0, "test": 0}).load("train")
# Everything off: a random policy's samples all pass, so the files have rows to compare.
KEEP_ALL = RejectionFilters(correct=False, well_formed=False, min_language=None, max_paragraph_chars=None,
                            max_paragraph_words=None, code_blocks_for=None)
JOB = {"sampling": SamplingConfig(k=3, batch_size=3, max_new_tokens=6, temperature=1.0, top_p=1.0, seed=1),
       "selection": SelectionConfig(dedupe=True, max_per_prompt=2), "filters": KEEP_ALL,
       "prompt_format": PromptFormat("chat", "", 64), "progress": False, "data": "tiny world [train]"}


class Interrupt(Exception):
    pass


def _stop_after(n):
    def hook(batch):
        if batch + 1 >= n:
            raise Interrupt

    return hook


def test_an_interrupted_job_resumes_to_the_same_files(policy, tmp_path):
    path, model, tokenizer = policy
    engine = TorchEngine(model, tokenizer)
    full = run_rejection(engine, RECORDS, tmp_path / "a", policy=path, **JOB)
    a = tmp_path / "a" / "v1"
    rows = [json.loads(line) for line in (a / "data.jsonl").read_text().splitlines()]
    assert len(rows) == full["overall"]["written"] > 10 and len({r["id"] for r in rows}) == len(rows)
    assert full["overall"]["prompts"] == 10 and full["overall"]["samples"] == 30 and full["complete"]
    assert full["source_checkpoint"] == path and full["source_checkpoint_sha256"]

    with pytest.raises(Interrupt):
        run_rejection(engine, RECORDS, tmp_path / "b", policy=path, on_batch_end=_stop_after(2),
                      **JOB)
    b = tmp_path / "b" / "v1"
    assert not (b / "manifest.json").exists()
    assert len((b / "prompts.jsonl").read_text().splitlines()) == 6  # two batches of three prompts
    # a crash in the middle of the third batch: its rows on disk, a torn progress line, no newline
    stray = {**rows[-1], "prompt_index": 7, "id": "stray"}
    with (b / "data.jsonl").open("a") as f:
        f.write(json.dumps(stray) + "\n")
    with (b / "prompts.jsonl").open("a") as f:
        f.write('{"prompt_index": 6, "batch": 2, "k"')
    with pytest.raises(JobError, match="sampling differ"):
        run_rejection(engine, RECORDS, tmp_path / "b", policy=path,
                      **(JOB | {"sampling": SamplingConfig(k=4, batch_size=3, max_new_tokens=6)}))
    resumed = run_rejection(engine, RECORDS, tmp_path / "b", policy=path, **JOB)
    for name in ("data.jsonl", "prompts.jsonl", "stats.json", "run.json"):
        assert (b / name).read_bytes() == (a / name).read_bytes(), name
    drop = ("finished", "seconds_last_session", "data")
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in full.items() if k not in drop}
    # finished: a new run without --version starts v2; asking for v1 again is refused
    with pytest.raises(JobError, match="finished data set"):
        run_rejection(engine, RECORDS, tmp_path / "b", policy=path, version="v1", **JOB)
    again = run_rejection(engine, RECORDS[:3], tmp_path / "b", policy=path, **JOB)
    assert again["version"] == "v2" and (b / "data.jsonl").read_bytes() == (a / "data.jsonl").read_bytes()


def test_extra_non_reasoning_data_is_appended_and_checked_first(policy, tmp_path):
    path, model, tokenizer = policy
    engine = TorchEngine(model, tokenizer)
    extra = tmp_path / "chat.jsonl"
    extra.write_text(json.dumps({"prompt": "Say hi.", "response": "Hi!"}) + "\n")
    strict = JOB | {"filters": RejectionFilters(),
                    "sampling": SamplingConfig(k=2, batch_size=5, max_new_tokens=4)}
    manifest = run_rejection(engine, RECORDS[:5], tmp_path / "d", policy=path, extra=[str(extra)],
                             **strict)
    rows = [json.loads(line) for line in (tmp_path / "d" / "v1" / "data.jsonl").read_text().splitlines()]
    o = manifest["overall"]
    assert o["written"] == 0 and o["rows"] == 1 and o["extra_rows"] == 1  # a random policy is never right
    assert o["rejected_by"]["incorrect"] == 10 and rows[0]["response"] == "Hi!"
    assert rows[0]["source"] == "extra:chat.jsonl"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: missing field 'response'"):
        run_rejection(engine, RECORDS[:5], tmp_path / "e", policy=path, extra=[str(bad)], **strict)
    assert not (tmp_path / "e").exists()  # refused before sampling anything


def test_the_sft_data_stage_and_sft2_on_its_output(policy, tmp_path, make_cfg):
    """`python -m r1lab.train stage=sft_data` on the tiny world, then stage=sft2 trains on the set it wrote."""
    path, _, _ = policy
    pipeline = tmp_path / "pipeline" / "tiny"
    cfg = make_cfg("stage=sft_data", f"paths.output_root={tmp_path}", f"job.policy={path}", "job.limit=6",
                   "job.sampling.k=2", "job.sampling.batch_size=3", "job.sampling.max_new_tokens=6",
                   "job.filters.correct=false", "job.filters.well_formed=false", "job.filters.min_language=null",
                   f"job.out={pipeline / 'sft_data'}", "job.device=cpu", "data.source.sizes.train=50")
    world = cfg.data.source  # the prompts: the data config's world (the tests' small one)
    metrics = run(cfg)
    manifest = json.loads((pipeline / "sft_data" / "v1" / "manifest.json").read_text())
    assert manifest["version"] == "v1" and manifest["overall"]["prompts"] == 6 == metrics["rejection/prompts"]
    assert metrics["rejection/written"] == manifest["overall"]["written"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics  # the stage's marker, written last
    assert manifest["settings"]["prompt_format"] == {"template": "chat", "system_prompt": "",
                                                     "max_prompt_tokens": 256}
    assert "tiny world" in manifest["settings"]["data"]
    data = pipeline / "sft_data" / "v1" / "data.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    train = TinyWorld(**{k: v for k, v in world.items() if k != "_target_"}).load("train")
    assert {r["prompt"] for r in rows} <= {r["prompt"] for r in train[:6]}
    # the eval split of data=sft_file is the tiny world's own
    world = compose_cfg(tmp_path / "cfg", ["data=tiny"]).data.source
    sft_file = compose_cfg(tmp_path / "cfg", ["data=sft_file"]).data.source.eval
    assert {k: v for k, v in sft_file.items() if k != "sizes"} == {
        k: v for k, v in world.items() if k in sft_file and k != "sizes"}
    assert sft_file.sizes.val == world.sizes.val and sft_file.sizes.test == world.sizes.test
    # SFT round 2 reads <pipeline>/sft_data/v1/data.jsonl and fine-tunes <pipeline>/base/hf
    (pipeline / "base").mkdir()
    (pipeline / "base" / "hf").symlink_to(path)
    cfg = make_cfg("stage=sft2", "debug=fast", "callbacks.progress_bar=null", f"paths.output_root={tmp_path}",
                   "data.batch_size=4")
    metrics = run(cfg)
    assert "train/loss" in metrics and 0.0 <= metrics["test/accuracy"] <= 1.0


def test_job_settings_are_checked_before_any_model_is_loaded(make_cfg, tmp_path):
    from r1lab.train import ConfigError

    for override, key in (("job.sampling.temperature=0", "job.sampling.temperature"),
                          ("job.sampling.top_p=1.5", "job.sampling.top_p"),
                          ("+job.filters.colour=1", "job.filters"),
                          (f"job.policy={tmp_path / 'none'}", "job.policy")):
        with pytest.raises(ConfigError, match=key):
            run(make_cfg("stage=sft_data", f"paths.output_root={tmp_path}", override))


def test_mixed_source_takes_train_from_one_source_and_eval_from_another(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n" for i in range(5)))
    world = TinyWorld(sizes={"train": 0, "val": 4, "test": 6})
    source = MixedSource(FileSource(train=str(data)), world, sizes={"train": 3, "test": None})
    assert [r["prompt"] for r in source.load("train", ("prompt", "response"))] == ["p0", "p1", "p2"]
    assert source.load("test") == world.load("test") and len(source.load("val")) == 4
