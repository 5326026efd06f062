"""LoRA adapters (peft) in the rollout engines and the training pass: the static-KV decoder samples the
adapted policy (its weights plus the adapters' deltas) exactly as the Hugging Face forward does."""

import pytest
import torch

from r1lab.data.collate import Tokenized, left_pad
from r1lab.generation import sample, sequence_logprobs
from r1lab.generation.adapters import effective_weight, unwrap

peft = pytest.importorskip("peft")  # the `real` extra


@pytest.fixture
def lora_model(tiny_backbone):
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = peft.get_peft_model(tiny_backbone.build_model(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapters an effect
                p.normal_(std=0.2, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


def test_the_static_kv_decoder_samples_the_adapted_policy(lora_model, tokenizer):
    tok = Tokenized(tokenizer, "chat", 64, 16, "")
    ids, mask = left_pad([tok.prompt_ids(x) for x in ["What is 3 + 4?", "Hi"]], tokenizer.pad_token_id)
    kw = dict(max_new_tokens=12, eos_id=-1, pad_id=tokenizer.pad_token_id, temperature=0.9)
    fast = sample(lora_model, ids, mask, generator=torch.Generator().manual_seed(0), **kw)
    generic = sample(lora_model, ids, mask, generator=torch.Generator().manual_seed(0), decoder="hf", **kw)
    assert fast.decoder == "static_kv" and torch.equal(fast.completion_ids, generic.completion_ids)
    assert torch.allclose(fast.logprobs, generic.logprobs, atol=1e-5)
    logp = sequence_logprobs(lora_model, ids, mask, fast.completion_ids, fast.completion_mask, 0.9)
    assert torch.allclose(logp, fast.logprobs, atol=1e-5)  # the training pass agrees with the sampler
    with lora_model.disable_adapter():  # without the adapters: another policy
        plain = sample(lora_model, ids, mask, generator=torch.Generator().manual_seed(0), **kw)
    assert not torch.equal(plain.completion_ids, fast.completion_ids)


def test_effective_weights_are_the_merged_ones(lora_model):
    q = unwrap(lora_model).model.layers[0].self_attn.q_proj
    expected = q.base_layer.weight + q.get_delta_weight("default")
    assert torch.allclose(effective_weight(q), expected)
    merged = lora_model.merge_and_unload()
    assert torch.allclose(merged.model.layers[0].self_attn.q_proj.weight, expected, atol=1e-6)


def test_a_lora_backbone_trains_only_its_adapters_and_exports_a_merged_model(tiny_backbone, tmp_path):
    from transformers import AutoModelForCausalLM

    from r1lab.models import Backbone
    from r1lab.modules.base import export_hf

    backbone = Backbone(tiny=tiny_backbone.tiny, lora={"r": 4, "target_modules": ["q_proj", "v_proj"]})
    model = backbone.build_model()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained) and backbone.lora["alpha"] == 8
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    export_hf(model, backbone.tokenizer, tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())  # loads without peft
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-5)
    assert any("lora_" in n for n, _ in model.named_parameters())  # the training model keeps its adapters
    with pytest.raises(ValueError, match=r"backbone.lora: unknown key\(s\) \['rank'\]"):
        Backbone(tiny=tiny_backbone.tiny, lora={"r": 4, "rank": 8})
