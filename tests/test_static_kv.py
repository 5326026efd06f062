import pytest
import torch

from r1lab.data.collate import Tokenized, left_pad
from r1lab.generation import sample, sequence_logprobs
from r1lab.generation.decoders import HFDecoder, make_decoder
from r1lab.generation.sampling import sample_categorical
from r1lab.generation.static_kv import StaticCacheDecoder
from r1lab.models import Backbone

ARCH = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=256, tie_word_embeddings=True)
CONFIGS = {
    "llama-gqa": dict(family="llama", num_key_value_heads=2),
    "llama-mha-bias": dict(family="llama", num_key_value_heads=4, attention_bias=True),
    "qwen2-mqa": dict(family="qwen2", num_key_value_heads=1),  # q/k/v biases
    "llama-all-biases": dict(family="llama", num_key_value_heads=2, attention_bias=True, mlp_bias=True),
}


def _model(name):
    backbone = Backbone(tiny={**ARCH, **CONFIGS[name]})
    model = backbone.build_model().eval()
    with torch.no_grad():  # non-zero biases, so that the fast path must add them
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.3)
    return model, backbone.tokenizer


def _prompts(tokenizer):
    """Left-padded prompts of different lengths, each repeated as GRPO does (shared prefill)."""
    tok = Tokenized(tokenizer, "r1_zero", 256, 64)
    texts = ["What is 3 + 4?", "Hi", "What is 13 + 24 - 7 + 100?"]
    ids, mask = left_pad([tok.prompt_ids(t) for t in texts], tokenizer.pad_token_id)
    assert (mask == 0).any()
    return ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)


def _both(model, ids, mask, **kw):
    out = []
    for fast in (True, False):
        g = torch.Generator().manual_seed(7)
        out.append(sample(model, ids, mask, generator=g, decoder="auto" if fast else "hf", **kw))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_path_applies_and_matches_the_generic_path(name):
    model, tokenizer = _model(name)
    assert StaticCacheDecoder.unsupported(model) is None
    assert isinstance(make_decoder(model, 8)[0], StaticCacheDecoder)
    ids, mask = _prompts(tokenizer)
    kw = dict(max_new_tokens=24, pad_id=tokenizer.pad_token_id)
    # greedy, with an "EOS" that some rows emit early: finished rows must stay padded
    probe = sample(model, ids, mask, eos_id=-1, greedy=True, decoder="hf", **kw)
    eos = int(probe.completion_ids[0, 3])
    for sampling in (dict(greedy=True), dict(temperature=0.7, top_p=0.9), dict(temperature=1.0)):
        fast, generic = _both(model, ids, mask, eos_id=eos, **kw, **sampling)
        assert torch.equal(fast.completion_ids, generic.completion_ids), sampling
        assert torch.equal(fast.completion_mask, generic.completion_mask)
        assert torch.equal(fast.truncated, generic.truncated)
        assert torch.allclose(fast.logprobs, generic.logprobs, atol=1e-5)
        temperature = sampling.get("temperature", 1.0)
        with torch.no_grad():
            full = sequence_logprobs(model, ids, mask, fast.completion_ids, fast.completion_mask, temperature)
        assert torch.allclose(full, fast.logprobs, atol=1e-4)
        off = fast.completion_mask == 0
        assert (fast.completion_ids[off] == tokenizer.pad_token_id).all() and (fast.logprobs[off] == 0).all()
        if sampling.get("greedy"):
            assert not fast.truncated[0] and fast.completion_mask[0].sum() <= 4  # row 0 ends by its 4th token
            assert torch.equal(fast.completion_ids[0], fast.completion_ids[1])  # same prompt, same greedy output


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode_step_logits_equal_the_generic_forward(name):
    """The fused per-token step (q/k/v/rot projection, baddbmm scores, addmm residuals) = the HF forward."""
    model, tokenizer = _model(name)
    ids, mask = _prompts(tokenizer)
    tokens = torch.randint(0, model.config.vocab_size, (ids.shape[0], 10), generator=torch.Generator().manual_seed(0))
    fast, generic = StaticCacheDecoder(model, 10), HFDecoder(model)
    with torch.no_grad():
        assert torch.allclose(fast.prefill(ids, mask), generic.prefill(ids, mask), atol=1e-5)
        for t in range(tokens.shape[1]):
            a, b = fast.step(tokens[:, t]), generic.step(tokens[:, t])
            assert torch.allclose(a, b, atol=1e-5), (t, (a - b).abs().max())


def test_fast_path_stops_when_every_row_ended():
    model, tokenizer = _model("llama-gqa")
    with torch.no_grad():
        model.model.norm.weight.zero_()  # all logits 0: greedy picks token 0 everywhere
    ids, mask = _prompts(tokenizer)
    r = sample(model, ids, mask, max_new_tokens=20, eos_id=0, pad_id=tokenizer.pad_token_id, greedy=True)
    assert r.completion_ids.shape == (ids.shape[0], 1) and not r.truncated.any()


def test_unsupported_models_fall_back():
    model, tokenizer = _model("llama-gqa")
    handle = model.lm_head.register_forward_hook(lambda m, i, o: o)
    assert "hooks" in StaticCacheDecoder.unsupported(model)
    assert isinstance(make_decoder(model, 8)[0], HFDecoder)
    handle.remove()
    assert StaticCacheDecoder.unsupported(model) is None

    sliding = Backbone(tiny={**ARCH, **CONFIGS["qwen2-mqa"], "use_sliding_window": True, "sliding_window": 8,
                             "max_window_layers": 0}).build_model()
    assert "sliding" in StaticCacheDecoder.unsupported(sliding)

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).eval()
    assert "GPT2LMHeadModel" in StaticCacheDecoder.unsupported(gpt2)
    ids, mask = _prompts(tokenizer)
    r = sample(gpt2, ids, mask, max_new_tokens=5, eos_id=-1, pad_id=tokenizer.pad_token_id)  # generic path
    with torch.no_grad():
        full = sequence_logprobs(gpt2, ids, mask, r.completion_ids, r.completion_mask)
    assert torch.allclose(full, r.logprobs, atol=1e-4)


def test_categorical_sampling_matches_the_probabilities():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    n = 100_000
    draws = sample_categorical(probs.expand(n, -1), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).float() / n
    assert freq[1] == 0 and freq[4] == 0  # zero-probability tokens, also the last one, are never drawn
    assert torch.allclose(freq, probs, atol=0.01)  # ~6 standard errors
