import pytest
import torch

from r1lab.data.collate import Tokenized, left_pad
from r1lab.generation import logprobs, sample, sequence_logprobs
from r1lab.models import Backbone

ARCH = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=256, tie_word_embeddings=True)


def _setup(family):
    backbone = Backbone(tiny={**ARCH, "family": family})
    model, tokenizer = backbone.build_model(), backbone.tokenizer
    tok = Tokenized(tokenizer, "r1_zero", 256, 64)
    ids, mask = left_pad([tok.prompt_ids(t) for t in ["What is 3 + 4?", "Hi", "What is 13 + 24 - 7?"]],
                         tokenizer.pad_token_id)
    ids, mask = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)  # G = 3 completions per prompt
    roll = sample(model.eval(), ids, mask, max_new_tokens=16, eos_id=-1, pad_id=tokenizer.pad_token_id,
                          generator=torch.Generator().manual_seed(0))
    completion_mask = roll.completion_mask.clone()
    completion_mask[0, 9:] = 0  # a row that ended early: padding after it
    completion_ids = roll.completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    return model.train(), ids, mask, completion_ids, completion_mask


def _logprobs_and_grads(model, *batch):
    model.zero_grad()
    logp, entropy = sequence_logprobs(model, *batch, temperature=0.8, return_entropy=True)
    weights = torch.randn(logp.shape, generator=torch.Generator().manual_seed(1))
    (logp * weights).sum().backward()
    return logp.detach(), entropy, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_shared_prompt_forward_equals_the_full_forward(family, monkeypatch):
    model, *batch = _setup(family)
    assert logprobs._can_share_prompts(model)
    shared = _logprobs_and_grads(model, *batch)
    monkeypatch.setattr(logprobs, "_can_share_prompts", lambda m: False)
    full = _logprobs_and_grads(model, *batch)
    assert torch.allclose(shared[0], full[0], atol=1e-5)
    assert torch.allclose(shared[1], full[1], atol=1e-4)
    for a, b in zip(shared[2], full[2]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert (shared[0][batch[3] == 0] == 0).all()


def test_no_shared_prompt_forward_under_activation_checkpointing():
    model, *_ = _setup("llama")
    assert logprobs._can_share_prompts(model)
    model = Backbone(tiny={**ARCH, "family": "llama"}, gradient_checkpointing=True).build_model()
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
    assert model.config.use_cache is False
    assert not logprobs._can_share_prompts(model)
