import json

from transformers import AutoTokenizer, LlamaConfig

from r1lab.models.tokenizer import build_tiny_tokenizer, load_tokenizer, save_tokenizer

TEXTS = [
    "What is 12 + 7 - 5? <think> 12 plus 7 is 19. 19 minus 5 is 14. </think> <answer> 14 </answer>",
    "  two  spaces,\ttabs\nand newlines  ",
    "<think> 12加7得19。19减5得14。 </think> <answer> 14 </answer>",
    "def f(x): return x*3+1",
    "unseen words: quixotic zephyr",
]


def test_round_trip_in_memory(tokenizer):
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text


def test_digits_and_tags_are_single_tokens(tokenizer):
    ids = tokenizer("<think> 123 </think>", add_special_tokens=False).input_ids
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces[0] == "<think>" and pieces[-1] == "</think>"
    assert {"1", "2", "3"} <= set(pieces)


def test_build_is_deterministic(tokenizer):
    again = build_tiny_tokenizer(512)
    assert again.get_vocab() == tokenizer.get_vocab()


def test_saved_next_to_a_llama_config_round_trips_through_autotokenizer(tokenizer, tmp_path):
    # The trap: a Llama config.json in the folder makes AutoTokenizer pick the Llama tokenizer class,
    # which rebuilds the tokenizer and drops spaces. save_tokenizer pins the class.
    LlamaConfig(vocab_size=len(tokenizer)).save_pretrained(tmp_path)
    save_tokenizer(tokenizer, tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    for loaded in (AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(str(tmp_path))):
        assert loaded.eos_token == tokenizer.eos_token and loaded.pad_token == tokenizer.pad_token
        for text in TEXTS:
            ids = loaded(text, add_special_tokens=False).input_ids
            assert ids == tokenizer(text, add_special_tokens=False).input_ids
            assert loaded.decode(ids) == text
        assert loaded.chat_template == tokenizer.chat_template
