"""The vLLM rollout engine against r1lab's own: log-probs, padding, greedy output, weight pushes, seeds,
shutting down. fp32 on the CPU. Log-prob tolerances per token: 1e-4 nats on the tiny model (measured
2e-7 mean, 1e-6 max), 5e-4 on SmolLM2-135M (measured 1.7e-5 mean, 1.0e-4 max over 3,000 tokens)."""

from __future__ import annotations

import os
import random

import psutil
import pytest
import torch

from conftest import prompts
from r1lab.generation import SamplingParams, make_engine, sequence_logprobs

TEXTS = ["1 + 2 = ", "the cat sat on", "7 * 3 =", "x"]
TOLERANCE = 1e-4  # nats, |log π_vllm − log π_train| per token, fp32 on the CPU, tiny model
SMOLLM2_TOLERANCE = 5e-4  # 30 layers of fp32 kernels that differ in summation order


@pytest.fixture
def eos_likely(policy, backbone):
    """The tiny policy with EOS made likely (~1 in 7 per token): rollouts then hold both completions that
    stop and ones that run to max_new_tokens. Its tied embedding row becomes the mean final hidden state,
    scaled to a logit of ~4.5 nats over the (near-uniform) others."""
    tok = backbone.tokenizer
    ids, mask = prompts(tok, TEXTS)
    with torch.no_grad():
        hidden = policy.model(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()].mean(0)
        policy.model.embed_tokens.weight[tok.eos_token_id] = 4.5 * hidden / hidden.square().sum()
    return policy


def check_padding(rollout, tokenizer, max_new_tokens):
    """The in-process engines' layout: mask 1 up to and including EOS, pad after, truncated = no EOS."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert rollout.completion_ids.shape[1] <= max_new_tokens
    for ids, mask, truncated, logp in zip(rollout.completion_ids.tolist(), rollout.completion_mask.tolist(),
                                          rollout.truncated.tolist(), rollout.logprobs):
        length = sum(mask)
        assert mask == [1] * length + [0] * (len(mask) - length)
        assert all(t == pad for t in ids[length:]) and (logp[length:] == 0).all()
        assert eos not in ids[: length - 1]
        assert truncated == (ids[length - 1] != eos)
        assert not truncated or length == max_new_tokens


def test_log_probs_agree_with_the_training_pass(eos_likely, backbone, engine_factory):
    tok = backbone.tokenizer
    engine = engine_factory(eos_likely, tok)
    ids, mask = prompts(tok, TEXTS)
    rollout = engine.generate(ids, mask, SamplingParams(max_new_tokens=12, temperature=0.7), n=4, seed=3)
    assert rollout.engine_logprobs and rollout.decoder == "vllm"
    assert torch.equal(rollout.prompt_ids, ids.repeat_interleave(4, 0))  # prompt-major
    assert torch.equal(rollout.prompt_mask, mask.repeat_interleave(4, 0))
    check_padding(rollout, tok, 12)
    assert 0 < rollout.truncated.sum() < len(rollout.truncated)  # both kinds of completion are there
    with torch.no_grad():
        train = sequence_logprobs(eos_likely, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                                  rollout.completion_mask, 0.7)
    diff = (train - rollout.logprobs).abs()[rollout.completion_mask.bool()]
    assert diff.max() < TOLERANCE, (diff.mean(), diff.max())
    assert rollout.logprobs[rollout.completion_mask.bool()].lt(-1e-3).all()  # real log-probs, not zeros
    eos = tok.eos_token_id
    texts = [tok.decode([t for t, m in zip(r, k) if m and t != eos]) for r, k in
             zip(rollout.completion_ids.tolist(), rollout.completion_mask.tolist())]
    assert rollout.texts == texts


def test_top_p_log_probs_are_those_of_the_renormalised_nucleus(policy, backbone, engine_factory):
    """vLLM's processed log-probs under top-p are log softmax(z/T) − log(nucleus mass): never below r1lab's."""
    tok = backbone.tokenizer
    engine = engine_factory(policy, tok)
    ids, mask = prompts(tok, TEXTS[:2])
    rollout = engine.generate(ids, mask, SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.5), n=2, seed=0)
    with torch.no_grad():
        train = sequence_logprobs(policy, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                                  rollout.completion_mask)
    on = rollout.completion_mask.bool()
    gap = (rollout.logprobs - train)[on]
    assert gap.min() > 0.3  # a near-uniform tiny model: the nucleus holds about half the mass, log 2 ≈ 0.69


def test_greedy_equals_the_in_process_engines_greedy(eos_likely, backbone, engine_factory):
    tok = backbone.tokenizer
    ids, mask = prompts(tok, TEXTS)
    greedy = SamplingParams(max_new_tokens=16, greedy=True)
    ours = make_engine("auto", eos_likely, tok).generate(ids, mask, greedy, n=2)
    theirs = engine_factory(eos_likely, tok).generate(ids, mask, greedy, n=2)
    assert torch.equal(theirs.completion_ids, ours.completion_ids)
    assert torch.equal(theirs.completion_mask, ours.completion_mask)
    assert torch.equal(theirs.truncated, ours.truncated)


def check_agreement(engine, policy, ids, mask, temperature=1.0):
    rollout = engine.generate(ids, mask, SamplingParams(max_new_tokens=8, temperature=temperature), n=2, seed=1)
    with torch.no_grad():
        train = sequence_logprobs(policy, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                                  rollout.completion_mask, temperature)
    diff = (train - rollout.logprobs).abs()[rollout.completion_mask.bool()]
    assert diff.max() < TOLERANCE, (diff.mean(), diff.max())


def greedy_tokens(engine, ids, mask):
    out = engine.generate(ids, mask, SamplingParams(max_new_tokens=16, greedy=True))
    return [r[: int(m.sum())] for r, m in zip(out.completion_ids.tolist(), out.completion_mask)]


def train_a_little(policy, ids, steps=3):
    """A few AdamW steps on the prompts' next-token loss: the weights move as in a training run."""
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-2)
    for _ in range(steps):
        loss = policy(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_a_weight_push_brings_the_engine_to_the_updated_policy(policy, backbone, engine_factory):
    tok = backbone.tokenizer
    # one prompt fills a KV block (128 tokens on the CPU), which vLLM's prefix cache keeps: a push resets it
    ids, mask = prompts(tok, [*TEXTS, "3 + 4 = 7, 5 + 6 = 11, 8 + 1 = 9, 2 + 2 = 4, " * 4 + "6 + 1 ="])
    assert 128 < mask.sum(-1).max() < 256 - 16
    reference = make_engine("auto", policy, tok)
    engine = engine_factory(policy, tok, sync_every=2)
    engine.sync_weights()  # builds the engine from the policy's weights
    before = greedy_tokens(reference, ids, mask)
    assert engine.pushes == 1 and greedy_tokens(engine, ids, mask) == before
    train_a_little(policy, ids)
    after = greedy_tokens(reference, ids, mask)
    assert after != before  # the policy's greedy output changed

    engine.sync_weights()  # the first of sync_every = 2 calls: no push, the engine lags
    assert engine.pushes == 1 and greedy_tokens(engine, ids, mask) == before
    engine.sync_weights()  # the second: push
    assert engine.pushes == 2 and engine.push_seconds < 5
    assert greedy_tokens(engine, ids, mask) == after
    check_agreement(engine, policy, ids, mask)  # the cached prompt blocks were not reused either
    engine.sync_weights()
    engine.sync_weights()  # nothing changed since the last push: nothing pushed
    assert engine.pushes == 2

    train_a_little(policy, ids)
    latest = greedy_tokens(reference, ids, mask)
    assert latest != after
    # a generate that no sync_weights preceded (evaluation) samples from the current weights
    assert greedy_tokens(engine, ids, mask) == latest and engine.pushes == 3


def test_a_lora_policy_is_pushed_with_its_adapters_folded_in(backbone, engine_factory):
    pytest.importorskip("peft")
    from r1lab.models import Backbone

    lora = Backbone(tiny=dict(backbone.tiny), lora={"r": 4})
    policy, tok = lora.build_model(), lora.tokenizer
    ids, mask = prompts(tok, TEXTS)
    reference = make_engine("auto", policy, tok)
    engine = engine_factory(policy, tok)
    before = greedy_tokens(reference, ids, mask)
    assert greedy_tokens(engine, ids, mask) == before  # B = 0 at the start: the base model
    train_a_little(policy, ids)  # moves only the adapters
    after = greedy_tokens(reference, ids, mask)
    assert after != before
    engine.sync_weights()
    assert greedy_tokens(engine, ids, mask) == after
    check_agreement(engine, policy, ids, mask, temperature=0.8)


def test_a_seed_gives_the_same_tokens_and_each_prompt_its_own_stream(policy, backbone, engine_factory):
    tok = backbone.tokenizer
    engine = engine_factory(policy, tok)
    ids, mask = prompts(tok, ["1 + 2 = ", "1 + 2 = "])  # the same prompt twice
    params = SamplingParams(max_new_tokens=8)
    first = engine.generate(ids, mask, params, n=2, seed=5)
    again = engine.generate(ids, mask, params, n=2, seed=5)
    other = engine.generate(ids, mask, params, n=2, seed=6)
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert not torch.equal(first.completion_ids, other.completion_ids)
    rows = first.completion_ids.tolist()
    assert len({tuple(r) for r in rows}) == 4  # the two copies of the prompt drew different completions


def test_bad_options_and_temperatures_fail_naming_the_key(policy, backbone, engine_factory):
    tok = backbone.tokenizer
    with pytest.raises(ValueError, match=r"rollout.options: unknown option\(s\) \['gpu_util'\]"):
        make_engine({"engine": "vllm", "options": {"gpu_util": 0.5}}, policy, tok)
    with pytest.raises(ValueError, match="rollout.options.sync_every"):
        make_engine({"engine": "vllm", "options": {"sync_every": 0}}, policy, tok)
    engine = engine_factory(policy, tok)
    ids, mask = prompts(tok, TEXTS[:1])
    with pytest.raises(ValueError, match=r"module.temperature: rollout.engine=vllm samples with T in \[0.01, 2.0\]"):
        engine.generate(ids, mask, SamplingParams(max_new_tokens=4, temperature=3.0, key="module"))
    with pytest.raises(ValueError, match="rollout.options.max_model_len"):
        engine.generate(ids, mask, SamplingParams(max_new_tokens=400))


def test_building_keeps_the_callers_random_state_and_threads(policy, backbone, engine_factory):
    import numpy as np

    tok = backbone.tokenizer
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    set_num_threads = torch.set_num_threads
    engine_factory(policy, tok).sync_weights()
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert (np.random.get_state()[1] == states[2]).all()
    assert torch.set_num_threads is set_num_threads  # vLLM's CPU worker replaces it with a no-op


def test_close_leaves_no_process_no_folder_and_no_process_group(policy, backbone):
    tok = backbone.tokenizer
    me = psutil.Process(os.getpid())
    children = {p.pid for p in me.children(recursive=True)}
    engine = make_engine({"engine": "vllm", "options": {"kv_cache_memory_bytes": 64 << 20, "max_model_len": 256}},
                         policy, tok)
    ids, mask = prompts(tok, TEXTS[:2])
    engine.generate(ids, mask, SamplingParams(max_new_tokens=4), n=2, seed=0)
    folder = engine.folder
    assert os.path.isdir(folder) and torch.distributed.is_initialized()  # vLLM's single-process group
    engine.close()
    assert engine.llm is None and not os.path.exists(folder)
    assert not torch.distributed.is_initialized()
    left = [p for p in me.children(recursive=True) if p.pid not in children and p.is_running()]
    assert not left, left
    engine.close()  # closing twice is harmless


def test_smollm2_log_probs_and_eos(smollm2, engine_factory):
    """A real chat model, which ends its answers with EOS: the same agreement and layout."""
    tok = smollm2.tokenizer
    model = smollm2.build_model().eval()
    chats = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
             for q in ("What is 7 + 5?", "Say hi.", "Name a colour.")]
    ids, mask = prompts(tok, chats)
    engine = engine_factory(model, tok, max_model_len=512)
    rollout = engine.generate(ids, mask, SamplingParams(max_new_tokens=32, temperature=1.0), n=4, seed=0)
    check_padding(rollout, tok, 32)
    assert not rollout.truncated.all()
    with torch.no_grad():
        train = sequence_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                                  rollout.completion_mask)
    diff = (train - rollout.logprobs).abs()[rollout.completion_mask.bool()]
    assert diff.max() < SMOLLM2_TOLERANCE, (diff.mean(), diff.max())
