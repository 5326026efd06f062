"""DeepSeekMath's replay for iterative RL (arXiv 2402.03300 §4.2, Algorithm 1), as a job.

After each RL round the reward model continues training on fresh pairs sampled from the new policy
plus a random 10% of all older pairs. This job writes both files of a round into its folder:
``pairs.jsonl`` (what the reward model trains on: the replayed old pairs first, then the fresh ones,
so the held-out pairs cut from the file's end are fresh) and ``history.jsonl`` (all pairs so far,
the next round's "old" pairs). ``conf/pipeline/iterative.yaml`` runs it between the rounds' stages.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from r1lab.checks import check_number
from r1lab.jobs.durable import JobError, jsonl_text, read_jsonl, write_atomic


def replay_mix(new: list[dict], old: list[dict], fraction: float = 0.1, seed: int = 0) -> list[dict]:
    """The fresh pairs plus a random ``fraction`` of the old ones, the replayed ones first."""
    check_number("job.fraction", fraction, 0.0, 1.0)
    k = round(fraction * len(old))
    replay = random.Random(seed).sample(old, k)
    return [dict(r, replay=True) for r in replay] + [dict(r, replay=False) for r in new]


class ReplayMixJob:
    """Args:
        fresh: the pairs sampled from the round's new policy.
        old: every earlier pair (the previous round's ``history.jsonl``, or the first reward model's pairs).
        fraction: share of the old pairs replayed (DeepSeekMath: 10%).
        seed: which old pairs are drawn.
    """

    def __init__(self, fresh: str, old: str, fraction: float = 0.1, seed: int = 0) -> None:
        check_number("job.fraction", fraction, 0.0, 1.0)
        self.fresh, self.old, self.fraction, self.seed = Path(fresh), Path(old), fraction, seed

    def run(self, output_dir: str | Path) -> dict[str, float]:
        for key, path in (("job.fresh", self.fresh), ("job.old", self.old)):
            if not path.is_file():
                raise JobError(f"{key}: no pairs file at {path}")
        fresh, old = read_jsonl(self.fresh), read_jsonl(self.old)
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        mixed = replay_mix(fresh, old, self.fraction, self.seed)
        write_atomic(out / "history.jsonl", jsonl_text(old + fresh))
        write_atomic(out / "pairs.jsonl", jsonl_text(mixed))
        (out / "replay.json").write_text(json.dumps({"fresh": len(fresh), "old": len(old), "mixed": len(mixed)}))
        return {"replay/fresh": float(len(fresh)), "replay/replayed": float(len(mixed) - len(fresh)),
                "replay/history": float(len(old) + len(fresh))}
