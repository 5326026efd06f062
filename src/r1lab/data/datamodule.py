"""The one LightningDataModule of every stage.

It is built from config without a tokenizer and told it later (``connect``), once the backbone is
known, as litgpt does. ``mode`` picks the dataset fields and the collator:

- ``sft``: prompt + response, loss on the response (cold-start SFT, SFT round 2, base pretraining);
- ``rl``: prompts with their reference answers and metadata (GRPO rollouts);
- ``preference``: prompt + chosen + rejected (reward-model training);
- ``distill``: prompt + response sequences scored by a teacher (knowledge distillation);
- ``steps``: prompt + completion + one 0/1 label per reasoning step (process reward model); the
  batches are the records, which the module tokenizes with its step rule (``r1lab.rm.process``).

Validation and test batches of the policy stages always carry left-padded prompts and the records,
so every stage is evaluated the same way (generation + answer checking).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from r1lab.checks import check_number
from r1lab.data.collate import Collator, Tokenized
from r1lab.data.resumable import ResumableLoader
from r1lab.data.sources import REQUIRED
from r1lab.data.templates import TEMPLATES

MODES = ("sft", "rl", "preference", "distill", "steps")


class R1DataModule(L.LightningDataModule):
    """Args:
        source: a data source with ``load(split, required)`` (``TinyWorld``, ``FileSource``, ``HubSource``).
        mode: one of ``MODES``; set by the stage config.
        template: ``r1_zero``, ``chat`` or ``plain`` (see ``r1lab.data.templates``).
        batch_size: training batch size per device (for ``rl``: prompts per step per device).
        eval_batch_size: prompts per validation/test batch.
        max_prompt_tokens, max_response_tokens: truncation limits.
        train_limit: use only the first N training records (a cold start on "a few hundred").
        val_limit, test_limit: likewise for evaluation.
    """

    def __init__(
        self,
        source,
        mode: str = "sft",
        template: str = "r1_zero",
        system_prompt: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        max_prompt_tokens: int = 256,
        max_response_tokens: int = 256,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"data.mode: unknown mode {mode!r} (use one of {MODES})")
        if template not in TEMPLATES:
            raise ValueError(f"data.template: unknown template {template!r} (use one of {TEMPLATES})")
        for key, value, low in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                ("max_prompt_tokens", max_prompt_tokens, 1),
                                ("max_response_tokens", max_response_tokens, 1), ("num_workers", num_workers, 0)):
            check_number(f"data.{key}", value, low, integer=True)
        for key, value in (("train_limit", train_limit), ("val_limit", val_limit), ("test_limit", test_limit)):
            check_number(f"data.{key}", value, 0, integer=True, allow_none=True)
        self.source = source
        self.mode, self.template, self.system_prompt = mode, template, system_prompt
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.max_prompt_tokens, self.max_response_tokens = max_prompt_tokens, max_response_tokens
        self.limits = {"train": train_limit, "val": val_limit, "test": test_limit}
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer = None
        self.splits: dict[str, list[dict]] = {}
        self.cuts: dict[str, dict[str, int]] = {}  # per split: records cut to the token limits

    def connect(self, tokenizer) -> None:
        """Tell the DataModule the tokenizer of the backbone being trained."""
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one before connecting the DataModule")
        self.tokenizer = tokenizer

    def _required(self, split: str) -> tuple[str, ...]:
        if split == "train":
            return REQUIRED[self.mode]
        return REQUIRED[self.mode] if self.mode in ("preference", "steps") else REQUIRED["eval"]

    def load_split(self, split: str) -> list[dict]:
        if split not in self.splits:
            records = self.source.load(split, required=self._required(split))
            self.splits[split] = records[: self.limits[split]]
        return self.splits[split]

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("R1DataModule.connect(tokenizer) must be called before setup")
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ("train", "val", "test"))
        for split in wanted:
            self.load_split(split)
            self.report_cuts(split)
        if stage == "fit" and not self.splits["train"]:
            raise ValueError(f"data: the train split of {self.source.describe()} is empty")
        world = self.trainer.world_size if self.trainer is not None else 1
        if stage == "fit" and len(self.splits["train"]) < self.batch_size * world:
            raise ValueError(
                f"data: {len(self.splits['train'])} train records cannot fill one batch of "
                f"data.batch_size={self.batch_size} on {world} device(s)"
            )

    def report_cuts(self, split: str) -> dict[str, int]:
        """Warn once per split about records longer than the token limits: a prompt loses its start, a
        response its end (and its EOS), silently otherwise."""
        if split in self.cuts:
            return self.cuts[split]
        fields = {"sft": ("response",), "distill": ("response",), "preference": ("chosen", "rejected")}
        records = self.splits[split]
        counts = self._tokenized().cut_counts(records, fields.get(self.mode, ()) if split == "train" else ())
        self.cuts[split] = counts
        for name, n in counts.items():
            if n:
                limit = "max_prompt_tokens" if name == "prompt" else "max_response_tokens"
                where = "start is" if name == "prompt" else "end is"
                rank_zero_warn(f"data: {n} of {len(records)} {split} records have a {name} longer than "
                               f"data.{limit}={getattr(self, limit)} tokens; its {where} cut")
        return counts

    def tokenized(self) -> Tokenized:
        """How this DataModule tokenizes (template, system prompt, limits): for a module that builds
        its own tensors from the records (the process reward model)."""
        return self._tokenized()

    def _tokenized(self) -> Tokenized:
        return Tokenized(self.tokenizer, self.template, self.max_prompt_tokens, self.max_response_tokens,
                         self.system_prompt)

    def _loader(self, split: str, collator: Collator, batch_size: int) -> DataLoader:
        return DataLoader(self.load_split(split), batch_size=batch_size, shuffle=False, collate_fn=collator,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled whole batches, resumable mid-epoch (``ResumableLoader``): this rank's share of each
        global batch under data parallelism."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        collator = Collator(self._tokenized(), self.mode)
        return ResumableLoader(self.load_split("train"), self.batch_size, self.seed, collator, self.num_workers,
                               rank, world)

    def _eval_collator(self) -> Collator:
        if self.mode in ("preference", "steps"):
            return Collator(self._tokenized(), self.mode)
        return Collator(self._tokenized(), self.mode, with_prompts=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self._eval_collator(), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self._eval_collator(), self.eval_batch_size)
