"""A trained reward model as one term of GRPO's reward (R1 §2.3.4: "RL for all scenarios").

R1 sums rule rewards (reasoning prompts) with neural rewards (general prompts): helpfulness judged
on the final summary only, harmlessness on the whole response. ``NeuralReward`` loads a folder that
``RewardModel.export_hf`` wrote and scores a whole batch with one padded forward, without grad, in
eval mode, on the policy's device. It joins a ``RewardSet`` like any rule reward: ``RewardSet`` calls
``score_batch`` once per batch for objects that have it. Both kinds of export load: a scalar head
(``*ForSequenceClassification``) and a likelihood reward model (a causal LM scored by β·log π of the
response, minus its recorded reference's when it has one).

Its raw scale is arbitrary (Bradley–Terry fixes only differences), so it is normalised before it is
weighted next to 0/1 rule rewards: ``running`` (z-score by a running mean/std over every reward
seen, Welford/Chan), ``batch`` (z-score within the batch) or ``none``. Group-normalised advantages
remove a constant offset anyway; the scale is what sets its weight against the rules.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from r1lab.data.collate import Tokenized, sequences
from r1lab.rewards.format import final_answer_view
from r1lab.rm.model import build_reward_model, export_settings, likelihood_rewards, reward_kind, sequence_rewards

VIEWS = ("response", "answer")
NORMALIZATIONS = ("running", "batch", "none")


class RunningMoments:
    """Running mean and variance of a stream of batches (Chan et al.'s parallel form of Welford)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: torch.Tensor) -> None:
        n = values.numel()
        if n == 0:
            return
        batch_mean = values.double().mean().item()
        batch_m2 = ((values.double() - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / self.count) ** 0.5 if self.count else 0.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


def _auto_device() -> torch.device:
    # Lightning sets each rank's current CUDA device, so this is the policy's device under DDP too.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class NeuralReward:
    """A reward model export as a batch reward: ``score_batch(prompts, completions, references) -> (N,)``.

    Args:
        path: the reward model's export (``<rm run>/hf``).
        view: ``response`` (the whole completion: R1's harmlessness) or ``answer`` (only what follows
            the chain of thought: R1's helpfulness); match how the reward model's pairs were written.
        normalize: ``running`` | ``batch`` | ``none`` (see the module docstring).
        template, system_prompt, max_prompt_tokens, max_response_tokens: how prompts and completions
            are tokenized; None takes what the export recorded (its training data's settings).
        device: ``auto`` (the current CUDA device when training on GPU, else CPU) or a device name.
        dtype: the reward model's weights' dtype (``float32``, ``bfloat16``).
        batch_size: sequences per forward (None: the whole batch in one forward).
        eps: added to the std before dividing.
    """

    def __init__(self, path: str, view: str = "response", normalize: str = "running", template: str | None = None,
                 system_prompt: str | None = None, max_prompt_tokens: int | None = None,
                 max_response_tokens: int | None = None, device: str = "auto", dtype: str = "float32",
                 batch_size: int | None = None, eps: float = 1e-6) -> None:
        if view not in VIEWS:
            raise ValueError(f"reward: view {view!r} is not one of {VIEWS}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"reward: normalize {normalize!r} is not one of {NORMALIZATIONS}")
        self.path = Path(path)
        self.kind = reward_kind(self.path)
        if self.kind is None:
            raise FileNotFoundError(
                f"reward: {self.path} holds no reward-model export (a *ForSequenceClassification config.json, or "
                "a causal LM whose r1lab_reward.json has kind: likelihood); train one with "
                "`python -m r1lab.train stage=rm`"
            )
        recorded = export_settings(self.path)
        self.beta, self.reduction = float(recorded.get("beta", 1.0)), recorded.get("reduction", "sum")
        self.reference_path = recorded.get("reference")
        self.template = template or recorded.get("template", "chat")
        self.system_prompt = system_prompt if system_prompt is not None else recorded.get("system_prompt", "")
        self.max_prompt_tokens = max_prompt_tokens or recorded.get("max_prompt_tokens", 256)
        self.max_response_tokens = max_response_tokens or recorded.get("max_response_tokens", 256)
        self.view, self.normalize, self.eps = view, normalize, eps
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.moments = RunningMoments()
        self.last_raw: torch.Tensor | None = None  # the raw scores of the last batch
        self._model = self._tok = self._reference = None  # loaded on first use (never pickled, see __getstate__)

    def _load(self) -> None:
        from r1lab.models.backbone import Backbone

        backbone = Backbone(name_or_path=str(self.path), dtype=self.dtype)
        device = _auto_device() if self.device == "auto" else torch.device(self.device)
        model = build_reward_model(backbone) if self.kind == "scalar" else backbone.build_model()
        self._model = model.to(device).eval().requires_grad_(False)
        if self.kind == "likelihood" and self.reference_path:
            reference = Backbone(name_or_path=self.reference_path, dtype=self.dtype).build_model()
            self._reference = reference.to(device).eval().requires_grad_(False)
        self._tok = Tokenized(backbone.tokenizer, self.template, self.max_prompt_tokens, self.max_response_tokens,
                              self.system_prompt)

    @torch.no_grad()
    def raw_scores(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """(N,) unnormalised rewards on CPU."""
        if self._model is None:
            self._load()
        if self.view == "answer":
            completions = [final_answer_view(c) for c in completions]
        device = next(self._model.parameters()).device
        step = self.batch_size or max(1, len(completions))
        out = []
        for i in range(0, len(completions), step):
            batch = sequences(self._tok, prompts[i : i + step], completions[i : i + step])
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            if self.kind == "scalar":
                out.append(sequence_rewards(self._model, ids, mask).cpu())
            else:
                out.append(likelihood_rewards(self._model, ids, mask, batch["labels"].to(device), self.beta,
                                              self.reduction, self._reference).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def score_batch(self, prompts: list[str], completions: list[str], references: list[dict]) -> torch.Tensor:
        """(N,) normalised rewards of the completions, float32 on CPU."""
        raw = self.raw_scores(prompts, completions)
        self.last_raw = raw  # GRPO logs its mean (train/reward/<name>_raw): normalised scores hide a rise
        if self.normalize == "none" or raw.numel() == 0:
            return raw
        if self.normalize == "batch":
            return (raw - raw.mean()) / (raw.std(unbiased=False) + self.eps)
        self.moments.update(raw)
        return ((raw - self.moments.mean) / (self.moments.std + self.eps)).float()

    def __call__(self, prompt: str, completion: str, reference: dict) -> float:
        """The raw reward of one completion (the per-sample reward protocol; no normalisation)."""
        return float(self.raw_scores([prompt], [completion])[0])

    def __getstate__(self) -> dict:
        # GRPO's hyperparameters (saved in every checkpoint) hold the RewardSet: keep the weights out.
        dropped = ("_model", "_tok", "_reference", "last_raw")
        return {k: v for k, v in self.__dict__.items() if k not in dropped} | dict.fromkeys(dropped)

    def state_dict(self) -> dict:
        return {"moments": self.moments.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.moments.load_state_dict(state["moments"])

    def __repr__(self) -> str:
        return f"NeuralReward({self.path}, kind={self.kind}, view={self.view}, normalize={self.normalize})"


class RewardStateCheckpoint(L.Callback):
    """Saves and restores the state of stateful rewards (``NeuralReward``'s running moments) in the
    Lightning checkpoint, so a resumed GRPO run normalises as the interrupted one did."""

    KEY = "r1lab_reward_state"

    @staticmethod
    def _stateful(pl_module) -> dict:
        functions = getattr(getattr(pl_module, "rewards", None), "functions", [])
        return {f.name: f.fn for f in functions if hasattr(f.fn, "state_dict")}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[self.KEY] = {name: fn.state_dict() for name, fn in self._stateful(pl_module).items()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        for name, fn in self._stateful(pl_module).items():
            if name in checkpoint.get(self.KEY, {}):
                fn.load_state_dict(checkpoint[self.KEY][name])
