"""Token-level distillation: the frozen teacher, the loss on response tokens, and the distill stage."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from r1lab.data.collate import IGNORE, Collator, Tokenized
from r1lab.data.tinyworld import TinyWorld
from r1lab.models import Backbone, count_parameters
from r1lab.models.tokenizer import save_tokenizer
from r1lab.modules.distill import (
    Distillation,
    TokenizerMismatchError,
    check_same_tokenizer,
    prompts_from_sequences,
)
from r1lab.train import run

FAST = ["debug=fast", "callbacks.progress_bar=null"]
SMALL = {"family": "llama", "vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64,
         "max_position_embeddings": 256, "tie_word_embeddings": True}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_backbone):
    """A tiny teacher exported as a Hugging Face folder, as a stage's hf/ export would be."""
    path = tmp_path_factory.mktemp("teacher") / "hf"
    tiny_backbone.build_model().save_pretrained(path)
    save_tokenizer(tiny_backbone.tokenizer, path)
    return str(path)


def _batch(tokenizer, n=4):
    records = [{"prompt": f"What is {i} + {i + 2}?",
                "response": f"<think> {i} plus {i + 2} is {2 * i + 2}. </think> "
                            f"<answer> {2 * i + 2} </answer>"}
               for i in range(n)]
    return Collator(Tokenized(tokenizer, "chat", 64, 64, ""), "distill")(records)


def _module(student: Backbone, teacher_dir: str, **kwargs) -> Distillation:
    module = Distillation(student, Backbone(name_or_path=teacher_dir),
                          optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2), **kwargs)
    module.configure_model()
    module.configure_teacher()
    return module


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_loss_is_zero_when_the_student_is_the_teacher(teacher_dir, tokenizer, kind):
    module = _module(Backbone(name_or_path=teacher_dir), teacher_dir, alpha=0.0, loss=kind, temperature=2.0)
    batch = _batch(tokenizer)
    loss, metrics = module.distill_loss(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert abs(loss.item()) < 1e-5 and metrics["kd"].abs().item() < 1e-5
    # the labelled tokens are the responses (+ EOS) only: one fewer than the labels, per the causal shift
    assert metrics["tokens"].item() == (batch["labels"][:, 1:] != IGNORE).sum().item() > 0
    # with alpha > 0 the hard-label CE of the (random) model shows up: alpha · CE exactly
    module.alpha = 0.3
    loss, metrics = module.distill_loss(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert loss.item() == pytest.approx(0.3 * metrics["ce"].item(), abs=1e-5) and metrics["ce"] > 1.0


def test_gradients_reach_only_the_student(teacher_dir, tokenizer):
    module = _module(Backbone(tiny=SMALL), teacher_dir, alpha=0.5)
    teacher = module.teacher
    assert count_parameters(module.policy) < count_parameters(teacher) / 2
    batch = _batch(tokenizer)
    loss, _ = module.distill_loss(batch["input_ids"], batch["attention_mask"], batch["labels"])
    loss.backward()
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in module.policy.parameters())
    optimizer = module.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.policy.parameters()}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    # not in the module tree: neither in checkpoints nor in .parameters() / the export
    assert all(not k.startswith("teacher") for k in module.state_dict())
    assert count_parameters(module) == count_parameters(module.policy)


def test_a_tokenizer_mismatch_fails_before_training(teacher_dir, tmp_path):
    import lightning as L

    other = Backbone(tiny={**SMALL, "vocab_size": 400})  # another vocabulary: ids do not line up
    module = Distillation(other, Backbone(name_or_path=teacher_dir),
                          optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))
    from r1lab.data import R1DataModule

    dm = R1DataModule(TinyWorld(sizes={"train": 8, "val": 2, "test": 2}), mode="distill", batch_size=4)
    dm.connect(other.tokenizer)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, accelerator="cpu")
    with pytest.raises(TokenizerMismatchError) as info:
        trainer.fit(module, datamodule=dm)
    message = str(info.value)
    assert teacher_dir in message and "tiny llama" in message and "vocabulary size" in message
    assert trainer.global_step == 0 and module.teacher is None  # no step taken, the teacher never loaded


class _Vocab:
    """Just what check_same_tokenizer reads."""

    def __init__(self, vocab, eos=0, pad=1):
        self.vocab, self.eos_token_id, self.pad_token_id = vocab, eos, pad

    def __len__(self):
        return len(self.vocab)

    def get_vocab(self):
        return dict(self.vocab)


def test_same_size_but_different_ids_is_a_mismatch():
    a = _Vocab({"<eos>": 0, "<pad>": 1, "x": 2, "y": 3})
    check_same_tokenizer(a, _Vocab(dict(a.vocab)))
    with pytest.raises(TokenizerMismatchError, match=r"2 tokens have different ids \(e.g. 'x': 2 vs 3"):
        check_same_tokenizer(a, _Vocab({"<eos>": 0, "<pad>": 1, "x": 3, "y": 2}), "small", "big")
    with pytest.raises(TokenizerMismatchError, match="pad_token_id 1 vs 0"):
        check_same_tokenizer(a, _Vocab(dict(a.vocab), pad=0))


def test_a_few_steps_lower_the_kd_loss(teacher_dir, tokenizer):
    torch.manual_seed(0)
    module = _module(Backbone(tiny=SMALL), teacher_dir, alpha=0.0, loss="forward_kl")
    optimizer = module.configure_optimizers()
    batch = _batch(tokenizer)
    kd = []
    for _ in range(15):
        loss, metrics = module.distill_loss(batch["input_ids"], batch["attention_mask"], batch["labels"])
        kd.append(metrics["kd"].item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert kd[-1] < 0.5 * kd[0], kd


def test_on_policy_distillation_scores_the_students_samples(teacher_dir, tokenizer):
    torch.manual_seed(0)
    module = _module(Backbone(tiny=SMALL), teacher_dir, alpha=0.0, loss="reverse_kl", on_policy=True,
                     max_new_tokens=8)
    optimizer = module.configure_optimizers()
    batch = _batch(tokenizer)
    # the prompts cut back out of the sft sequences are exactly the collated prompts
    pad = tokenizer.pad_token_id
    prompt_ids, prompt_mask = prompts_from_sequences(batch["input_ids"], batch["labels"], pad)
    tok = Tokenized(tokenizer, "chat", 64, 64, "")
    assert [ids[m.bool()].tolist() for ids, m in zip(prompt_ids, prompt_mask)] == [
        tok.prompt_ids(f"What is {i} + {i + 2}?") for i in range(4)]
    samples = module.student_samples(batch)
    width = prompt_ids.shape[1]
    assert (samples["labels"][:, :width] == IGNORE).all() and (samples["labels"][:, width:] != IGNORE).any()
    fixed = {k: samples[k] for k in ("input_ids", "attention_mask", "labels")}
    before = module.distill_loss(**fixed)[1]["kd"].item()
    for _ in range(10):
        sampled = module.student_samples(batch)
        loss, _ = module.distill_loss(sampled["input_ids"], sampled["attention_mask"], sampled["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert module.distill_loss(**fixed)[1]["kd"].item() < before
    with pytest.raises(ValueError, match="module.alpha"):
        Distillation(Backbone(tiny=SMALL), Backbone(name_or_path=teacher_dir), on_policy=True, alpha=0.5)


def test_mixed_on_policy_fraction_draws_steps_and_drops_the_hard_labels_on_own_samples(teacher_dir, tokenizer):
    from types import SimpleNamespace

    module = _module(Backbone(tiny=SMALL), teacher_dir, alpha=0.5, on_policy=0.25, max_new_tokens=8)
    draws = []
    for step in range(400):  # the draw depends on (seed, step) only: every rank and a resume agree
        module._trainer = SimpleNamespace(global_step=step)
        draws.append(module.step_is_on_policy())
    assert 0.18 < sum(draws) / len(draws) < 0.32
    module._trainer = SimpleNamespace(global_step=7)
    assert [module.step_is_on_policy() for _ in range(3)] == [draws[7]] * 3
    # on the student's own samples only the KD term counts (alpha 0), on references alpha·CE + (1-alpha)·KD
    batch = _batch(tokenizer)
    loss, m = module.distill_loss(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert loss.item() == pytest.approx(0.5 * m["ce"].item() + 0.5 * m["kd"].item(), rel=1e-5)
    loss, m = module.distill_loss(batch["input_ids"], batch["attention_mask"], batch["labels"], alpha=0.0)
    assert loss.item() == pytest.approx(m["kd"].item(), rel=1e-5)
    with pytest.raises(ValueError, match="module.on_policy"):
        Distillation(Backbone(tiny=SMALL), Backbone(name_or_path=teacher_dir), on_policy=1.5, alpha=0.0)


def test_distill_stage_runs_and_exports_only_the_student(make_cfg, tmp_path, teacher_dir):
    # the stage trains on the teacher's samples (the pipeline's distill_data, a rejection-sampling set)
    samples = tmp_path / "teacher_samples.jsonl"
    records = TinyWorld(seed=5, sizes={"train": 40, "val": 0, "test": 0}).load("train")
    samples.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "answer", "response")}) + "\n"
                               for r in records))
    metrics = run(make_cfg("stage=distill", *FAST, f"module.teacher.name_or_path={teacher_dir}",
                           f"data.source.train.train={samples}"))
    for key in ("train/kd", "train/ce", "val/kd", "val/accuracy", "test/accuracy"):
        assert key in metrics, key
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["train/kd"] == pytest.approx(metrics["train/kd"])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert exported.config.hidden_size == 96  # backbone/tiny_small, not the teacher
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"] and all(k.startswith("policy.") for k in ckpt["state_dict"])
    assert "teacher" not in ckpt["hyper_parameters"]
    trained = ckpt["state_dict"]["policy.model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(exported.model.layers[0].mlp.up_proj.weight, trained)
