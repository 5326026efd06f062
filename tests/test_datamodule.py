import json

import pytest

from r1lab.data import R1DataModule
from r1lab.data.collate import IGNORE, Collator, Tokenized
from r1lab.data.sources import DataError, FileSource
from r1lab.data.tinyworld import TinyWorld

RECORDS = [
    {"prompt": "What is 1 + 2?", "response": "<think> 1 plus 2 is 3. </think> <answer> 3 </answer>", "answer": "3"},
    {"prompt": "What is 10 + 20 - 4?", "response": "<answer> 26 </answer>", "answer": "26"},
]


def _tok(tokenizer, template="plain"):
    return Tokenized(tokenizer, template, max_prompt_tokens=128, max_response_tokens=64)


def test_sft_labels_cover_exactly_the_response_and_eos(tokenizer):
    tok = _tok(tokenizer)
    batch = Collator(tok, "sft")(RECORDS)
    for i, r in enumerate(RECORDS):
        p = tok.prompt_ids(r["prompt"])
        resp = tokenizer(r["response"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        n = len(p) + len(resp)
        assert batch["input_ids"][i, :n].tolist() == p + resp
        assert batch["labels"][i, : len(p)].eq(IGNORE).all()
        assert batch["labels"][i, len(p) : n].tolist() == resp
        # right padding: pad ids, no attention, no loss
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert batch["labels"][i, n:].eq(IGNORE).all()
        assert batch["input_ids"][i, n:].eq(tokenizer.pad_token_id).all()


def test_prompts_are_left_padded_for_generation(tokenizer):
    tok = _tok(tokenizer, "r1_zero")
    batch = Collator(tok, "rl")(RECORDS)
    lengths = [len(tok.prompt_ids(r["prompt"])) for r in RECORDS]
    width = max(lengths)
    assert batch["prompt_ids"].shape == (2, width)
    for i, n in enumerate(lengths):
        assert batch["prompt_mask"][i].tolist() == [0] * (width - n) + [1] * n
        assert batch["prompt_ids"][i, width - n :].tolist() == tok.prompt_ids(RECORDS[i]["prompt"])
    assert batch["records"] == RECORDS
    assert tokenizer.decode(batch["prompt_ids"][0, -3:]).endswith("Assistant:")


def test_preference_mode_builds_both_sides(tokenizer):
    pairs = [{"prompt": "q", "chosen": "<answer> 1 </answer>", "rejected": "no", "margin": 0.5}]
    batch = Collator(_tok(tokenizer), "preference")(pairs)
    assert {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_attention_mask"} <= set(batch)
    assert batch["margin"].tolist() == [0.5]


def test_truncation_limits(tokenizer):
    tok = Tokenized(tokenizer, "r1_zero", max_prompt_tokens=10, max_response_tokens=5)
    batch = Collator(tok, "sft")(RECORDS)
    assert batch["input_ids"].shape[1] == 15
    assert (batch["labels"] != IGNORE).sum(1).tolist() == [5, 5]


def test_datamodule_modes_and_loaders(tokenizer):
    dm = R1DataModule(TinyWorld(sizes={"train": 64, "val": 8, "test": 8}), mode="sft", template="chat",
                      system_prompt="", batch_size=16, eval_batch_size=8)
    with pytest.raises(RuntimeError, match="connect"):
        dm.setup("fit")
    dm.connect(tokenizer)
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train["input_ids"].shape[0] == 16 and "prompt_ids" not in train
    val = next(iter(dm.val_dataloader()))
    assert {"input_ids", "labels", "prompt_ids", "prompt_mask", "records"} <= set(val)
    rl = R1DataModule(TinyWorld(sizes={"train": 64, "val": 8, "test": 8}), mode="rl", batch_size=4)
    rl.connect(tokenizer)
    rl.setup("fit")
    batch = next(iter(rl.train_dataloader()))
    assert set(batch) == {"prompt_ids", "prompt_mask", "records"} and len(batch["records"]) == 4
    assert all("answer" in r for r in batch["records"])


def test_bad_mode_and_template_name_the_key():
    with pytest.raises(ValueError, match="data.mode"):
        R1DataModule(TinyWorld(), mode="ppo")
    with pytest.raises(ValueError, match="data.template"):
        R1DataModule(TinyWorld(), template="alpaca")


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_source_with_field_mapping_and_chat_messages(tmp_path):
    f = _write(tmp_path / "d.jsonl", [
        {"question": "What is 2+2?", "final": 4, "solution": "<answer> 4 </answer>"},
        {"question": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi?"}], "final": "x",
         "solution": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello"}]},
    ])
    src = FileSource(train=str(f), fields={"prompt": "question", "answer": "final", "response": "solution"})
    rows = src.load("train", required=("prompt", "response"))
    assert rows[0]["prompt"] == "What is 2+2?" and rows[0]["answer"] == "4"
    assert rows[1]["prompt"] == "Hi?" and rows[1]["response"] == "Hello"


def test_bad_rows_name_file_and_line(tmp_path):
    f = _write(tmp_path / "bad.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field 'answer'"):
        FileSource(train=str(f)).load("train", required=("prompt", "answer"))
    f = _write(tmp_path / "broken.jsonl", [{"prompt": "a", "answer": "1"}, "", '{"prompt": "b",'])
    with pytest.raises(DataError, match=r"broken\.jsonl:3: not valid JSON"):
        FileSource(train=str(f)).load("train")
    f = _write(tmp_path / "empty.jsonl", [{"prompt": "  ", "answer": "1"}])
    with pytest.raises(DataError, match=r"empty\.jsonl:1: field 'prompt' is empty"):
        FileSource(train=str(f)).load("train", required=("prompt", "answer"))
    with pytest.raises(DataError, match="no such data file"):
        FileSource(train=str(tmp_path / "missing.jsonl")).load("train")


def test_parquet_and_split_carving(tmp_path):
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame({"prompt": [f"q{i}" for i in range(10)], "answer": [str(i) for i in range(10)]}).to_parquet(path)
    src = FileSource(train=str(path), val_size=2, test_size=3)
    assert [r["prompt"] for r in src.load("test")] == ["q7", "q8", "q9"]
    assert [r["prompt"] for r in src.load("val")] == ["q5", "q6"]
    assert len(src.load("train")) == 5
