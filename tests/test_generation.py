"""The generation API: rollout engines, sampling parameters, seeds, and an engine plugged in by name."""

import pytest
import torch

from r1lab.data.collate import Tokenized, left_pad
from r1lab.generation import (
    ENGINES,
    Rollout,
    RolloutConfig,
    RolloutEngine,
    SamplingParams,
    TorchEngine,
    generate_for_records,
    make_engine,
    mix_seed,
    register_engine,
    sample,
)


def _prompts(tokenizer, texts):
    tok = Tokenized(tokenizer, "chat", 64, 16, "")
    return left_pad([tok.prompt_ids(t) for t in texts], tokenizer.pad_token_id)


def test_generate_repeats_prompts_and_equals_the_sampling_loop(tiny_backbone, tokenizer):
    model = tiny_backbone.build_model().train()
    ids, mask = _prompts(tokenizer, ["What is 3 + 4?", "Hi"])
    params = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9)
    rollout = TorchEngine(model, tokenizer).generate(ids, mask, params, n=3, seed=mix_seed(5, 2, 1))
    assert model.training  # the engine samples in eval mode and restores the mode
    assert rollout.completion_ids.shape[0] == 6 and len(rollout.texts) == 6
    assert torch.equal(rollout.prompt_ids, ids.repeat_interleave(3, 0))  # prompt-major: p0 p0 p0 p1 p1 p1
    model.eval()
    expected = sample(model, ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), max_new_tokens=12,
                      eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, temperature=0.8, top_p=0.9,
                      generator=torch.Generator().manual_seed(5 * 1_000_003 + 2 * 7919 + 1))
    assert torch.equal(rollout.completion_ids, expected.completion_ids)
    assert torch.equal(rollout.logprobs, expected.logprobs) and rollout.decoder == "static_kv"
    again = TorchEngine(model, tokenizer).generate(ids, mask, params, n=3, seed=mix_seed(5, 2, 1))
    other = TorchEngine(model, tokenizer).generate(ids, mask, params, n=3, seed=mix_seed(5, 3, 1))
    assert torch.equal(again.completion_ids, rollout.completion_ids)
    assert not torch.equal(other.completion_ids, rollout.completion_ids)
    # records: texts per record, truncation counts per record
    tok = Tokenized(tokenizer, "chat", 64, 16, "")
    records = [{"prompt": "What is 3 + 4?"}, {"prompt": "Hi"}]
    texts, truncated = generate_for_records(TorchEngine(model, tokenizer), tok, records, params, 3, mix_seed(5, 2, 1))
    assert texts == [rollout.texts[:3], rollout.texts[3:]]
    assert truncated == rollout.truncated.view(2, 3).sum(-1).tolist()


def test_engines_by_name_and_their_errors(tiny_backbone, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = tiny_backbone.build_model().eval()
    ids, mask = _prompts(tokenizer, ["What is 3 + 4?"])
    greedy = SamplingParams(max_new_tokens=8, greedy=True)
    fast = make_engine("static_kv", model, tokenizer).generate(ids, mask, greedy)
    generic = make_engine({"engine": "hf"}, model, tokenizer).generate(ids, mask, greedy)
    assert torch.equal(fast.completion_ids, generic.completion_ids) and generic.decoder == "hf"
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).eval()
    assert make_engine(None, gpt2, tokenizer).generate(ids, mask, greedy).decoder.startswith("hf (GPT2LMHeadModel")
    with pytest.raises(ValueError, match="rollout.engine=static_kv: this model cannot use the static-KV decoder"):
        make_engine("static_kv", gpt2, tokenizer).generate(ids, mask, greedy)
    with pytest.raises(ValueError, match="rollout.engine: unknown engine 'fastest'"):
        RolloutConfig.of("fastest")
    with pytest.raises(ValueError, match=r"rollout: unknown key\(s\) \['engnie'\]"):
        RolloutConfig.of({"engnie": "hf"})
    with pytest.raises(ValueError, match="rollout.options: the auto engine takes no options"):
        make_engine({"engine": "auto", "options": {"gpu_memory_utilization": 0.5}}, model, tokenizer)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": 0.0}, "sampling.temperature: must be > 0"),
    ({"temperature": float("nan")}, "sampling.temperature: must be a finite number"),
    ({"top_p": 1.5}, r"sampling.top_p: must lie in \(0, 1\]"),
    ({"top_p": 0.0}, r"sampling.top_p: must lie in \(0, 1\]"),
    ({"max_new_tokens": 0}, "sampling.max_new_tokens: must be an integer >= 1"),
    ({"max_new_tokens": 2.5}, "sampling.max_new_tokens: must be an integer >= 1"),
])
def test_sampling_params_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**({"max_new_tokens": 8} | kwargs))


def test_a_stage_samples_through_a_registered_engine(tiny_backbone, tokenizer):
    """A new engine plugs in by name, without touching the stage: GRPO's rollouts and its evaluation
    come from it, and it is told to sync the weights before every rollout."""
    from r1lab.modules.grpo import GRPO
    from r1lab.rewards import RewardSet

    calls = {"generate": 0, "sync": 0}

    class Echo(RolloutEngine):
        """Completes every prompt with the same three tokens and a fixed log-prob."""

        name = "echo"

        def generate(self, prompt_ids, prompt_mask, params, *, n=1, seed=None):
            calls["generate"] += 1
            ids, mask = prompt_ids.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0)
            tokens = torch.tensor(tokenizer("4 </answer>").input_ids + [tokenizer.eos_token_id])[:3]
            completion = tokens.expand(ids.shape[0], -1).clone()
            return Rollout(ids, mask, completion, torch.ones_like(completion), torch.full(completion.shape, -1.0),
                           torch.zeros(ids.shape[0], dtype=torch.bool), texts=["echo"] * ids.shape[0], decoder="echo")

        def sync_weights(self):
            calls["sync"] += 1

    register_engine("echo", lambda model, tok, **options: Echo(model, tok))
    try:
        module = GRPO(tiny_backbone, rewards=RewardSet({"accuracy": "accuracy"}), group_size=2,
                      rollout={"engine": "echo"}, beta=0.0)
        module.configure_model()
        batch = _prompts(tokenizer, ["What is 3 + 4?", "Hi"])
        records = [{"prompt": "What is 3 + 4?", "answer": "7"}, {"prompt": "Hi", "answer": "1"}]
        roll = module.rollout({"prompt_ids": batch[0], "prompt_mask": batch[1], "records": records})
        assert roll["texts"] == ["echo"] * 4 and (roll["old_logp"] == -1.0).all()
        assert calls == {"generate": 1, "sync": 1} and module.engine.name == "echo"
    finally:
        ENGINES.pop("echo")


def test_mix_seed_keeps_streams_apart():
    assert mix_seed(0) == 0 and mix_seed(1) == 1_000_003 and mix_seed(2, 3, 4) == 2 * 1_000_003 + 3 * 7919 + 4
    seeds = {mix_seed(7, counter, stream) for counter in range(100) for stream in range(50)}
    assert len(seeds) == 5000


@pytest.fixture
def counted_engines():
    """rollout.engine=counted: the in-process engine, recording each one built and each close."""
    built = []

    class Counted(TorchEngine):
        closes = 0

        def close(self):
            self.closes += 1

    def factory(model, tok, **options):
        built.append(Counted(model, tok, **options))
        return built[-1]

    register_engine("counted", factory)
    yield built
    ENGINES.pop("counted")


def test_stages_and_jobs_close_every_engine_they_build(counted_engines, make_cfg, pipeline_root, tmp_path):
    """An engine with its own weights (vLLM) holds memory until closed: a training stage closes its
    module's engine when it ends, a job each policy's engine once it has sampled."""
    from r1lab.train import run

    metrics = run(make_cfg("stage=sft", "debug=fast", "callbacks.progress_bar=null", "rollout.engine=counted"))
    assert "test/accuracy" in metrics and len(counted_engines) >= 1
    assert [e.closes for e in counted_engines] == [1] * len(counted_engines)
    counted_engines.clear()
    metrics = run(make_cfg("stage=sft_data", f"paths.output_root={pipeline_root}", "job.limit=2", "job.sampling.k=1",
                           "job.sampling.max_new_tokens=4", "job.filters.correct=false", f"job.out={tmp_path / 'rs'}",
                           "job.device=cpu", "rollout.engine=counted"))
    assert metrics["rejection/samples"] == 2 and [e.closes for e in counted_engines] == [1]
    counted_engines.clear()
    run(make_cfg("stage=preferences", f"paths.output_root={pipeline_root}", "job.limit=2", "job.k=2",
                 "job.max_new_tokens=4", f"job.out={tmp_path / 'prefs'}", "job.device=cpu", "rollout.engine=counted"))
    assert len(counted_engines) == 3 and [e.closes for e in counted_engines] == [1, 1, 1]  # three policies
