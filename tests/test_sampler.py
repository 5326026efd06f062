import pytest
import torch

from r1lab.data.collate import Tokenized, left_pad
from r1lab.generation import decode_texts, sample, sequence_logprobs
from r1lab.generation import logprobs as logprob_pass
from r1lab.tensors import token_logprobs


def _prompts(tokenizer, texts):
    tok = Tokenized(tokenizer, "r1_zero", 256, 64)
    return left_pad([tok.prompt_ids(t) for t in texts], tokenizer.pad_token_id)


def test_token_logprobs_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    # log softmax at index 2 = 2 - log(1 + e + e^2) = 2 - 2.40761 = -0.40761
    assert torch.allclose(token_logprobs(logits, torch.tensor([2])), torch.tensor([-0.407606]), atol=1e-5)
    # temperature 2: logits/2 = [0, .5, 1] -> 1 - log(1 + 1.64872 + 2.71828) = 1 - 1.68027 = -0.68027
    assert torch.allclose(token_logprobs(logits, torch.tensor([2]), 2.0), torch.tensor([-0.680269]), atol=1e-5)


def test_sampled_logprobs_match_a_full_forward(tiny_backbone, tokenizer):
    torch.manual_seed(0)
    model = tiny_backbone.build_model().eval()
    ids, mask = _prompts(tokenizer, ["What is 3 + 4?", "What is 13 + 24 - 7?", "Hi"])
    for temperature in (1.0, 0.7):
        g = torch.Generator().manual_seed(1)
        r = sample(model, ids, mask, max_new_tokens=24, eos_id=tokenizer.eos_token_id,
                   pad_id=tokenizer.pad_token_id, temperature=temperature, top_p=0.9, generator=g)
        with torch.no_grad():
            full = sequence_logprobs(model, ids, mask, r.completion_ids, r.completion_mask, temperature)
        assert r.completion_mask.sum() > 10
        assert torch.allclose(full, r.logprobs, atol=1e-4)
        assert (r.logprobs[r.completion_mask == 0] == 0).all()


def test_greedy_is_deterministic_and_padding_does_not_change_it(tiny_backbone, tokenizer):
    model = tiny_backbone.build_model().eval()
    kw = dict(max_new_tokens=12, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, greedy=True)
    alone = sample(model, *_prompts(tokenizer, ["What is 3 + 4?"]), **kw)
    batched = sample(model, *_prompts(tokenizer, ["What is 3 + 4?", "What is 13 + 24 - 7 + 1 + 2?"]), **kw)
    n = int(alone.completion_mask.sum())
    assert batched.completion_ids[0, :n].tolist() == alone.completion_ids[0, :n].tolist()


def test_stops_when_every_row_ended(tiny_backbone, tokenizer):
    model = tiny_backbone.build_model().eval()
    with torch.no_grad():  # make EOS the argmax everywhere: every row ends after one token
        model.lm_head.weight.data.zero_()
        if model.lm_head.bias is not None:
            model.lm_head.bias.data.zero_()
        model.model.embed_tokens.weight.data[tokenizer.eos_token_id] = 0  # tied weights
        model.lm_head.weight.data[tokenizer.eos_token_id] = 0
    ids, mask = _prompts(tokenizer, ["a", "b c"])
    model.lm_head.register_forward_hook(lambda m, i, o: o.index_fill(-1, torch.tensor([tokenizer.eos_token_id]), 50.0))
    r = sample(model, ids, mask, max_new_tokens=20, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    assert r.completion_ids.shape == (2, 1)
    assert r.truncated.tolist() == [False, False]
    assert decode_texts(tokenizer, r.completion_ids, r.completion_mask) == ["", ""]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_logprob_and_entropy_equal_autograd(temperature):
    """One pass for log-prob and entropy (custom backward) = token_logprobs + entropy_from_logits."""
    from r1lab.generation.logprobs import _LogprobEntropy
    from r1lab.rl import entropy_from_logits

    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 5, 50, generator=gen)).requires_grad_(True)
    tokens = torch.randint(0, 50, (3, 5), generator=gen)
    weights = torch.randn(3, 5, generator=gen)
    logp, entropy = _LogprobEntropy.apply(logits, tokens, temperature)
    (logp * weights).sum().backward()
    fused_grad, logits.grad = logits.grad, None
    expected = token_logprobs(logits, tokens, temperature)
    (expected * weights).sum().backward()
    assert torch.equal(logp, expected.detach())  # the same logsumexp, the same value
    assert torch.allclose(entropy, entropy_from_logits(logits.detach() / temperature), atol=1e-5)
    assert not entropy.requires_grad
    assert torch.allclose(fused_grad, logits.grad, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_head_logprobs_equal_the_logits_path(temperature):
    """lm_head fused with the log-softmax in row chunks (recomputed in backward) = lm_head, then autograd."""
    from r1lab.generation.logprobs import _LinearLogprob
    from r1lab.rl import entropy_from_logits

    gen = torch.Generator().manual_seed(0)
    n, hidden_size, vocab = 600, 16, 512  # 256-row chunks: two full ones and a partial one
    hidden = torch.randn(n, hidden_size, generator=gen).requires_grad_(True)
    weight = torch.randn(vocab, hidden_size, generator=gen).requires_grad_(True)
    tokens = torch.randint(0, vocab, (n,), generator=gen)
    weights = torch.randn(n, generator=gen)
    logp, entropy = _LinearLogprob.apply(hidden, weight, tokens, temperature, True)
    (logp * weights).sum().backward()
    fused = hidden.grad, weight.grad
    hidden.grad = weight.grad = None
    logits = hidden @ weight.t()
    expected = token_logprobs(logits, tokens, temperature)
    (expected * weights).sum().backward()
    assert torch.allclose(logp, expected.detach(), atol=1e-5)
    assert torch.allclose(entropy, entropy_from_logits(logits.detach() / temperature), atol=1e-5)
    assert torch.allclose(fused[0], hidden.grad, atol=1e-5) and torch.allclose(fused[1], weight.grad, atol=1e-4)
    assert _LinearLogprob.apply(hidden, weight, tokens, temperature, False)[1].numel() == 0  # no entropy asked


def test_sequence_logprobs_head_split_equals_the_logits_path(tiny_backbone, tokenizer, monkeypatch):
    model = tiny_backbone.build_model().train()
    assert logprob_pass._head_split(model)
    ids, mask = _prompts(tokenizer, ["What is 3 + 4?", "Hi", "What is 13 + 24?"])
    ids, mask = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
    with torch.no_grad():
        r = sample(model.eval(), ids, mask, max_new_tokens=8, eos_id=-1, pad_id=tokenizer.pad_token_id,
                   generator=torch.Generator().manual_seed(0))
    model.train()
    weights = torch.randn(r.completion_ids.shape, generator=torch.Generator().manual_seed(1))

    def run():
        model.zero_grad()
        logp, entropy = sequence_logprobs(model, ids, mask, r.completion_ids, r.completion_mask, 0.8,
                                          return_entropy=True)
        (logp * weights).sum().backward()
        return logp.detach(), entropy, [p.grad.clone() for p in model.parameters()]

    split = run()
    monkeypatch.setattr(logprob_pass, "_head_split", lambda m: False)
    full = run()
    assert torch.allclose(split[0], full[0], atol=1e-5) and torch.allclose(split[1], full[1], atol=1e-5)
    for a, b in zip(split[2], full[2]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
