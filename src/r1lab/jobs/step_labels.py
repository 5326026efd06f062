"""Step-labelled rows for the process reward model, as a data source (``data=step_labels``).

From a task source (the tiny world), each arithmetic task gives its reference solution, every step
right, and ``slips`` arithmetic slips of it: one step computed wrong and carried on, so the steps
from the slip on are wrong (``r1lab.jobs.synthetic_pairs.arithmetic_slip``). The rule verifier
labels every step (``r1lab.rewards.steps.arithmetic_step_labels``). Math-Shepherd's labels (the
success rate of Monte Carlo continuations from each step's prefix, arXiv 2312.08935) would serve
tasks no rule checks; they are not built yet. Code tasks are left out: no rule checks their steps.
"""

from __future__ import annotations

import random

from r1lab.jobs.synthetic_pairs import arithmetic_slip, compose_solution
from r1lab.rm.process import step_label_rows


class StepLabels:
    """Args:
        tasks: a source of task records with reference solutions (``TinyWorld``).
        slips: wrong solutions per task (0: references only, every label 1).
        rule: the step rule (``line`` | ``sentence`` | a regex), the one the PRM will score with.
        seed: the slips' seed (per split).
    """

    def __init__(self, tasks, slips: int = 1, rule: str = "sentence", seed: int = 0) -> None:
        if isinstance(slips, bool) or not isinstance(slips, int) or slips < 0:
            raise ValueError(f"data.source.slips: must be an integer >= 0, got {slips!r}")
        self.tasks, self.slips, self.rule, self.seed = tasks, slips, rule, seed
        self._rows: dict[str, list[dict]] = {}

    def load(self, split: str, required: tuple[str, ...] = ()) -> list[dict]:
        if split not in self._rows:
            rng = random.Random(f"step-labels/{self.seed}/{split}")
            records, completions = [], []
            for record in self.tasks.load(split):
                if record.get("task", "arith") != "arith":
                    continue
                records.append(record)
                completions.append(record["response"])
                for _ in range(self.slips):
                    slip = arithmetic_slip(record, rng)
                    if slip is not None:
                        records.append(record)
                        completions.append(compose_solution(*slip))
            self._rows[split] = step_label_rows(records, completions, self.rule)
        return self._rows[split]

    def describe(self) -> str:
        return f"step labels ({self.slips} slip(s) per task, rule {self.rule!r}) of {self.tasks.describe()}"
