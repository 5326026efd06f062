"""Knowledge distillation of a smaller student from a frozen teacher (the last stage of R1's pipeline).

Token level (Hinton et al. 2015, arXiv 1503.02531; GKD, Agarwal et al. 2024, arXiv 2306.13649): on the
response tokens of each sequence the student matches the teacher's whole next-token distribution,

    loss = α·CE(reference tokens) + (1 − α)·τ²·KD(P_T, P_S),  KD ∈ {forward KL, reverse KL, JSD_β}

with the math in ``r1lab.kd.distill_objective``. With ``on_policy`` the sequences are the student's own
samples (GKD's on-policy mode; MiniLLM, arXiv 2306.08543, argues for the reverse KL there): the student
samples, the teacher scores those tokens, and there are no reference tokens. ``on_policy`` may also be
a fraction λ in [0, 1], GKD's mixed mode (its Algorithm 1): each step draws, with probability λ, the
student's own samples (KD only) and otherwise the data's responses (α·CE + (1 − α)·τ²·KD). λ = 1 has
no reference tokens at all, so α must then be 0.

Sequence level, what DeepSeek-R1 actually did for its small models (arXiv 2501.12948, §2.4: "fine-tuned
… using the 800k samples curated with DeepSeek-R1"), is not this module: it is SFT of the student on
the teacher's filtered samples, i.e. rejection sampling of the teacher (``stage=distill_data``) followed by
``stage=student_sft`` with ``data=sft_file`` (see conf/stage/student_sft.yaml).

The teacher is a second ``Backbone``, built lazily like the student, frozen (eval mode, no grad) and
held outside the module tree on purpose: it is not in ``state_dict`` (so not in checkpoints), not in
the optimizer, not in the Hugging Face export, and not wrapped by DDP. It is moved to the student's
device and dtype when fit starts. Under FSDP/DeepSpeed it is therefore not sharded: every rank holds
a full copy. Its logits are computed per training step, i.e. per micro-batch (``trainer.
accumulate_grad_batches`` makes larger effective batches), under ``no_grad``, cut down to the response
positions at once and freed.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from r1lab.data.collate import IGNORE, left_pad
from r1lab.generation import SamplingParams, check_sampling, mix_seed
from r1lab.kd import KD_KINDS, distill_objective
from r1lab.models.backbone import Backbone, count_parameters
from r1lab.modules.base import PolicyModule
from r1lab.tensors import positions_from_mask

log = logging.getLogger(__name__)


class TokenizerMismatchError(ValueError):
    """Teacher and student do not share one vocabulary: token-level distillation is undefined."""


def check_same_tokenizer(student_tok, teacher_tok, student: str = "student", teacher: str = "teacher"):
    """Raise ``TokenizerMismatchError`` naming both models unless the two tokenizers map every
    token to the same id (``get_vocab()``) and agree on EOS and padding."""
    problems = []
    if len(student_tok) != len(teacher_tok):
        problems.append(f"vocabulary size {len(student_tok)} (student) vs {len(teacher_tok)} (teacher)")
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    differ = sorted(tok for tok in set(s_vocab) | set(t_vocab) if s_vocab.get(tok) != t_vocab.get(tok))
    if differ:
        examples = ", ".join(f"{tok!r}: {s_vocab.get(tok)} vs {t_vocab.get(tok)}" for tok in differ[:3])
        problems.append(f"{len(differ)} tokens have different ids (e.g. {examples})")
    for name in ("eos_token_id", "pad_token_id"):
        if getattr(student_tok, name) != getattr(teacher_tok, name):
            problems.append(f"{name} {getattr(student_tok, name)} vs {getattr(teacher_tok, name)}")
    if problems:
        raise TokenizerMismatchError(
            f"distillation: the teacher ({teacher}) and the student ({student}) use different tokenizers: "
            + "; ".join(problems)
            + ". Token-level KD compares next-token distributions id by id, so both must share one "
            "tokenizer; for different tokenizers distil at sequence level instead (rejection sampling of the "
            "teacher, then SFT of the student on its samples)."
        )


def prompts_from_sequences(input_ids: torch.Tensor, labels: torch.Tensor, pad_id: int):
    """Left-padded prompts (B, P) and their mask, cut from right-padded sft/distill sequences.

    A row's prompt is everything before its first labelled token (labels are IGNORE on the prompt).
    """
    labelled = labels != IGNORE  # (B, T)
    starts = torch.where(labelled.any(-1), labelled.float().argmax(-1), labels.new_tensor(labels.shape[1]))
    rows = [ids[:start].tolist() for ids, start in zip(input_ids, starts.tolist())]
    return left_pad(rows, pad_id)


class Distillation(PolicyModule):

    """Args (besides ``PolicyModule``'s; ``backbone`` is the student):
        teacher: the teacher ``Backbone`` (same tokenizer as the student; checked before training).
        loss: forward_kl (Hinton) | reverse_kl (MiniLLM) | jsd (GKD's JSD_β).
        alpha: weight of the hard-label cross-entropy on the reference tokens (1 = plain SFT).
        temperature: τ of both softmaxes; the KD term is scaled by τ² (Hinton).
        beta: β of JSD_β (0 = forward KL, 1 = reverse KL).
        top_k: compare the distributions on the teacher's top-k tokens only (None = the full vocabulary).
        on_policy: distil on the student's own samples (GKD / MiniLLM) instead of the data's responses:
            true (every step), false (never), or the fraction λ of steps that do (GKD's mixed mode).
        max_new_tokens, sample_temperature, top_p: the student's sampling when ``on_policy``.
        seed: base seed of the on-policy sampler.
    """

    not_hparams = (*PolicyModule.not_hparams, "teacher")  # a Backbone object, not a hyperparameter

    def __init__(
        self,
        backbone: Backbone,
        teacher: Backbone,
        optimizer=None,
        scheduler=None,
        evaluation: dict | None = None,
        loss: str = "forward_kl",
        alpha: float = 0.5,
        temperature: float = 1.0,
        beta: float = 0.5,
        top_k: int | None = None,
        on_policy: bool | float = False,
        max_new_tokens: int = 64,
        sample_temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        rollout: dict | None = None,
        nonfinite: str = "stop",
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, evaluation, rollout, nonfinite)
        if loss not in KD_KINDS:
            raise ValueError(f"module.loss: {loss!r} is not one of {KD_KINDS}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"module.alpha: must lie in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"module.temperature: must be > 0, got {temperature}")
        check_sampling(max_new_tokens, sample_temperature, top_p, "module",
                       names=("max_new_tokens", "sample_temperature", "top_p"))
        self.sampling = SamplingParams(max_new_tokens, sample_temperature, top_p, key="module")
        on_policy = float(on_policy)
        if not 0.0 <= on_policy <= 1.0:
            raise ValueError(f"module.on_policy: true, false or a fraction of steps in [0, 1], got {on_policy}")
        if on_policy == 1.0 and alpha > 0:
            raise ValueError("module.alpha: on-policy distillation has no reference tokens (the student's "
                             "own samples are the sequences); set module.alpha=0, or module.on_policy to a "
                             "fraction < 1 (GKD's mix: the other steps use the data's responses)")
        if top_k is not None and top_k < 1:
            raise ValueError(f"module.top_k: must be >= 1 or null, got {top_k}")
        self.teacher_backbone = teacher
        self.loss_kind, self.alpha, self.temperature = loss, alpha, temperature
        self.beta, self.top_k = beta, top_k
        self.on_policy, self.max_new_tokens = on_policy, max_new_tokens
        self.sample_temperature, self.top_p, self.seed = sample_temperature, top_p, seed
        self._teacher: list[torch.nn.Module] = []  # a list keeps the teacher out of the module tree
        self._vocab = None  # the logits' width both models share

    # -- the teacher ---------------------------------------------------------------------------
    @property
    def teacher(self) -> torch.nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def check_tokenizers(self) -> None:
        check_same_tokenizer(self.tokenizer, self.teacher_backbone.tokenizer,
                             self.backbone.describe(), self.teacher_backbone.describe())

    def configure_teacher(self) -> torch.nn.Module:
        """Check the tokenizers, then load the frozen teacher (once)."""
        if self.teacher is None:
            path = self.teacher_backbone.name_or_path
            looks_local = path is not None and (path.count("/") > 1 or path.startswith((".", "/")))
            if looks_local and not Path(path).exists():
                raise FileNotFoundError(f"module.teacher.name_or_path: no model folder at {path} (train and "
                                        "export the teacher stage first, or point the key at one)")
            self.check_tokenizers()
            self._teacher.append(self.teacher_backbone.build_model().eval().requires_grad_(False))
        return self.teacher

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.configure_teacher()  # fails here, before any step, when the tokenizers differ

    def on_fit_start(self) -> None:
        self._place_teacher()
        counts = self.parameter_counts()
        log.info(f"distillation: student {counts['student']:,} parameters, teacher {counts['teacher']:,} "
                 f"({counts['student'] / counts['teacher']:.2f}x); {self.loss_kind}, alpha {self.alpha}, "
                 f"temperature {self.temperature}, on-policy fraction {self.on_policy:g}")

    def _place_teacher(self) -> torch.nn.Module:
        """The teacher, on the student's device and dtype, in eval mode."""
        teacher = self.configure_teacher()
        if self._vocab is None:
            # Checkpoints may pad their output rows past the tokenizer (Qwen2.5-0.5B has 151936, -7B 152064):
            # compare the rows both have, which must cover every real token.
            rows = min(self.policy.get_output_embeddings().weight.shape[0],
                       teacher.get_output_embeddings().weight.shape[0])
            if rows < len(self.tokenizer):
                raise TokenizerMismatchError(f"distillation: an output layer has {rows} rows, fewer than the "
                                             f"tokenizer's {len(self.tokenizer)} tokens")
            self._vocab = rows
        param = next(self.policy.parameters())
        first = next(teacher.parameters())
        if first.device != param.device or first.dtype != param.dtype:
            teacher.to(device=param.device, dtype=param.dtype)
        return teacher.eval()

    def parameter_counts(self) -> dict[str, int]:
        return {"student": count_parameters(self.policy), "teacher": count_parameters(self.teacher)}

    # -- the loss ------------------------------------------------------------------------------
    def _logits(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = positions_from_mask(attention_mask)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions)
        return out.logits[..., : self._vocab]  # (B, T, V)

    def distill_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                     alpha: float | None = None):
        """The objective on one micro-batch of sequences; labels (B, T) are IGNORE off the response.
        ``alpha`` overrides the module's weight of the hard labels (0 on the student's own samples)."""
        next_labels = labels[:, 1:]  # (B, T-1): position t predicts token t+1
        keep = next_labels != IGNORE  # (B, T-1)
        teacher = self._place_teacher()
        with torch.no_grad():
            teacher_logits = self._logits(teacher, input_ids, attention_mask)[:, :-1][keep]  # (N, V)
        student_logits = self._logits(self.policy, input_ids, attention_mask)[:, :-1][keep]  # (N, V)
        loss, metrics = distill_objective(
            student_logits[None], teacher_logits[None], next_labels[keep][None],  # (1, N, V), (1, N)
            alpha=self.alpha if alpha is None else alpha, temperature=self.temperature, kind=self.loss_kind,
            beta=self.beta, top_k=self.top_k,
        )
        del teacher_logits  # only the loss graph's own copies (the KD's saved tensors) live on to backward
        metrics["tokens"] = keep.sum().float()
        return loss, metrics

    @torch.no_grad()
    def student_samples(self, batch: dict) -> dict:
        """On-policy sequences: prompt + the student's sampled completion, labels on the completion."""
        if "prompt_ids" in batch:
            prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
        else:
            prompt_ids, prompt_mask = prompts_from_sequences(batch["input_ids"], batch["labels"],
                                                             self.tokenizer.pad_token_id)
            prompt_ids, prompt_mask = prompt_ids.to(self.device), prompt_mask.to(self.device)
        self.engine.sync_weights()
        out = self.engine.generate(prompt_ids, prompt_mask, self.sampling,
                                   seed=mix_seed(self.seed, self.global_step, self.global_rank))
        input_ids = torch.cat([prompt_ids, out.completion_ids], dim=1)  # (B, P+T)
        attention_mask = torch.cat([prompt_mask, out.completion_mask], dim=1)
        labels = torch.cat([torch.full_like(prompt_ids, IGNORE),
                            out.completion_ids.masked_fill(out.completion_mask == 0, IGNORE)], dim=1)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "completion_length": out.lengths.float().mean()}

    def step_is_on_policy(self) -> bool:
        """Whether this step distils on the student's samples: a draw with probability λ seeded by
        the step, so every DDP rank and a resumed run make the same choice."""
        if self.on_policy in (0.0, 1.0):
            return self.on_policy == 1.0
        return random.Random(mix_seed(self.seed, stream=self.global_step)).random() < self.on_policy

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        extra = {}
        on_policy = self.step_is_on_policy()
        if on_policy:
            batch = self.student_samples(batch)
            extra["train/completion_length"] = batch["completion_length"]
        if 0.0 < self.on_policy < 1.0:
            extra["train/on_policy"] = torch.tensor(float(on_policy))
        loss, metrics = self.distill_loss(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                          alpha=0.0 if on_policy else None)  # own samples: no references
        finite = self.finite_or_skip("train/loss", loss)
        self.log_skipped()
        if not finite:
            return None  # no backward, no optimiser step
        self.log_dict({"train/loss": loss.detach(), "train/ce": metrics["ce"], "train/kd": metrics["kd"],
                       "train/tokens": metrics["tokens"], **extra}, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if "labels" in batch and self.teacher is not None:
            loss, metrics = self.distill_loss(batch["input_ids"], batch["attention_mask"], batch["labels"])
            n = batch["input_ids"].shape[0]
            # val/ce is the student's held-out cross-entropy on the references: SFT's val/loss
            self.log_dict({"val/loss": loss, "val/ce": metrics["ce"], "val/kd": metrics["kd"]},
                          sync_dist=True, batch_size=n)
        super().validation_step(batch, batch_idx)
