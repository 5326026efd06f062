"""GRPO with an engine that keeps its own weights: π_old recomputed by the policy, the train/inference
mismatch logged, truncated importance sampling (TIS). A fake engine stands in for vLLM: the in-process
sampler whose returned log-probs are shifted by a known amount, as a mismatched engine's would be."""

import copy

import lightning as L
import pytest
import torch

from r1lab.data import R1DataModule
from r1lab.data.tinyworld import TinyWorld
from r1lab.generation import ENGINES, TorchEngine
from r1lab.modules import grpo as grpo_mod
from r1lab.modules.grpo import GRPO
from r1lab.rewards import RewardSet


class ShiftedEngine(TorchEngine):
    """The in-process sampler, reporting log π − ``shift`` on every completion token as an engine's own."""

    def __init__(self, model, tokenizer, shift: float = 0.0, tis_cap: float | None = None):
        super().__init__(model, tokenizer, "auto")
        self.shift, self.tis_cap = shift, tis_cap

    def generate(self, *args, **kwargs):
        rollout = super().generate(*args, **kwargs)
        rollout.logprobs = rollout.logprobs - self.shift * rollout.completion_mask
        rollout.engine_logprobs = True
        return rollout


def digit_share(prompt: str, completion: str, reference: dict) -> float:
    return sum(ch.isdigit() for ch in completion) / max(1, len(completion))


@pytest.fixture
def shifted(monkeypatch):
    monkeypatch.setitem(ENGINES, "shifted", lambda model, tok, **options: ShiftedEngine(model, tok, **options))


@pytest.fixture
def losses(monkeypatch):
    """Every grpo_loss call's (logp, old_logp, advantages)."""
    calls, real = [], grpo_mod.grpo_loss

    def loss(logp, old_logp, advantages, *args, **kwargs):
        calls.append((logp.detach().clone(), old_logp.clone(), advantages.clone()))
        return real(logp, old_logp, advantages, *args, **kwargs)

    monkeypatch.setattr(grpo_mod, "grpo_loss", loss)
    return calls


def _run(backbone, rollout, steps=1, **kw):
    torch.manual_seed(0)
    module = GRPO(backbone, optimizer=lambda params: torch.optim.SGD(params, lr=kw.pop("lr", 0.5)),
                  rewards=RewardSet(functions={"digits": digit_share}), group_size=4, max_new_tokens=10,
                  beta=0.0, max_grad_norm=None, evaluation={"k": 0, "max_new_tokens": 4}, log_completions_every=0,
                  rollout=rollout, **kw)
    dm = R1DataModule(TinyWorld(sizes={"train": 32, "val": 4, "test": 4}), mode="rl", template="plain",
                      batch_size=2, eval_batch_size=4)
    dm.connect(backbone.tokenizer)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return module, trainer.logged_metrics


def test_in_process_engines_keep_their_log_probs_as_pi_old_and_log_no_mismatch(tiny_backbone, losses, one_thread):
    _, logged = _run(tiny_backbone, None)
    assert not any("engine_logprob" in k or "tis" in k for k in logged)
    (logp, old, advantages), = losses
    assert advantages.dim() == 1


def test_pi_old_is_recomputed_and_the_mismatch_is_logged(tiny_backbone, shifted, losses, one_thread):
    _, logged = _run(tiny_backbone, {"engine": "shifted", "options": {"shift": 0.3}})
    assert logged["train/engine_logprob_diff_mean"] == pytest.approx(0.3, abs=1e-4)
    assert logged["train/engine_logprob_diff_max"] == pytest.approx(0.3, abs=1e-4)
    assert "train/tis_weight_mean" not in logged
    (logp, old, advantages), = losses
    on = old != 0
    # π_old is the policy's recomputation, not the engine's shifted values: the first ratio is 1
    assert (logp[on] - old[on]).abs().max() < 1e-4
    assert advantages.dim() == 1


def test_tis_weights_each_token_by_the_capped_ratio(tiny_backbone, shifted, losses, one_thread):
    _run(tiny_backbone, {"engine": "shifted", "options": {"shift": 0.1}})
    _, logged = _run(tiny_backbone, {"engine": "shifted", "options": {"shift": 0.1, "tis_cap": 2.0}})
    (_, old, plain), (_, old_tis, weighted) = losses
    assert torch.equal(old, old_tis)  # the same rollout
    on = old != 0
    assert plain.dim() == 1 and weighted.shape == old.shape and plain.abs().sum() > 0
    # w = min(exp(0.1), 2) on every completion token, 0 off the completion
    expected = plain[:, None].expand_as(old) * torch.exp(torch.tensor(0.1))
    assert torch.allclose(weighted[on], expected[on], atol=1e-4)
    assert (weighted[~on] == 0).all()
    assert logged["train/tis_weight_mean"] == pytest.approx(float(torch.exp(torch.tensor(0.1))), abs=1e-4)
    assert logged["train/tis_clipped"] == 0


def test_a_capped_weight_scales_the_update_by_the_cap(tiny_backbone, shifted, one_thread):
    """exp(2) > C = 1.5 on every token: with SGD and no clipping the step is exactly 1.5 times the plain one."""
    init = copy.deepcopy(tiny_backbone.build_model().state_dict())
    plain, _ = _run(tiny_backbone, {"engine": "shifted", "options": {"shift": 2.0}})
    capped, logged = _run(tiny_backbone, {"engine": "shifted", "options": {"shift": 2.0, "tis_cap": 1.5}})
    assert logged["train/tis_clipped"] == 1
    moved = 0
    for name, w0 in init.items():
        step_plain = plain.policy.state_dict()[name] - w0
        step_capped = capped.policy.state_dict()[name] - w0
        assert torch.allclose(step_capped, 1.5 * step_plain, rtol=1e-3, atol=1e-6), name
        moved += int(step_plain.abs().max() > 0)
    assert moved > 0
