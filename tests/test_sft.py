import math

import torch

from r1lab.data.collate import IGNORE, Collator, Tokenized
from r1lab.modules.schedules import warmup_cosine
from r1lab.modules.sft import ColdStartSFT, response_cross_entropy


def test_response_cross_entropy_by_hand():
    # vocab 2, logits all zero -> every token costs log 2; position 0 predicts label 1, etc.
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[IGNORE, IGNORE, 1, 0]])  # two labelled tokens, predicted by positions 1 and 2
    loss, n = response_cross_entropy(logits, labels)
    assert n.item() == 2 and math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    # make position 1 confident in token 1: logit 2 vs 0 -> -log(e^2/(1+e^2)) = 0.126928
    logits[0, 1, 1] = 2.0
    loss, _ = response_cross_entropy(logits, labels)
    assert math.isclose(loss.item(), (0.126928 + math.log(2)) / 2, rel_tol=1e-5)


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=12, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.5 and lrs[1] == 1.0  # warmup
    assert math.isclose(lrs[2], 1.0) and math.isclose(lrs[7], 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs == sorted(lrs[:2]) + sorted(lrs[2:], reverse=True)


def _batch(tokenizer, n=4):
    records = [{"prompt": f"What is {i} + {i + 2}?", "response": f"<think> {i} plus {i + 2} is {2 * i + 2}. "
                f"</think> <answer> {2 * i + 2} </answer>"} for i in range(n)]
    return Collator(Tokenized(tokenizer, "plain", 64, 64), "sft")(records)


def test_sft_overfits_a_tiny_batch(tiny_backbone, tokenizer):
    torch.manual_seed(0)
    module = ColdStartSFT(tiny_backbone, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))
    module.configure_model()
    opt = module.configure_optimizers()
    batch = _batch(tokenizer)
    losses = []
    for _ in range(100):
        logits = module.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, _ = response_cross_entropy(logits, batch["labels"])
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[0] > 5.0  # ~log(vocab) at random init
    assert losses[-1] < losses[0] / 6  # memorised: ~6.0 -> below 1.0


def test_full_sequence_loss_counts_prompt_tokens(tiny_backbone, tokenizer):
    module = ColdStartSFT(tiny_backbone, loss_on="all")
    batch = _batch(tokenizer, 2)
    labels = module._labels(batch)
    assert (labels != IGNORE).sum() == batch["attention_mask"].sum()
    assert (module.__class__(tiny_backbone)._labels(batch) != IGNORE).sum() < (labels != IGNORE).sum()
