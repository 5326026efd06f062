"""Write tiny-world splits as JSONL in an external layout: ``python -m r1lab.data.tinyworld.export``.

The files exercise the external-data path (``data=jsonl``) end to end without a download, and are the
fixture the tests train on. ``--layout gsm8k`` writes GSM8K's column names (question, answer, plus the
worked solution), ``--layout chat`` writes chat messages, ``--layout r1lab`` the record schema as is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from r1lab.data.tinyworld.world import TinyWorld

LAYOUTS = ("gsm8k", "chat", "r1lab")


def to_layout(record: dict, layout: str) -> dict:
    if layout == "gsm8k":
        return {"question": record["prompt"], "answer": record["answer"], "solution": record["response"]}
    if layout == "chat":
        return {"messages": [{"role": "user", "content": record["prompt"]},
                             {"role": "assistant", "content": record["response"]}], "answer": record["answer"]}
    if layout == "r1lab":
        return {k: record[k] for k in ("prompt", "response", "answer", "task", "language") if k in record}
    raise ValueError(f"--layout: unknown layout {layout!r} (use one of {LAYOUTS})")


def export_jsonl(out_dir: str | Path, sizes: dict[str, int], layout: str = "gsm8k", seed: int = 0) -> dict[str, Path]:
    """Write ``<out_dir>/<split>.jsonl`` for each split of ``sizes``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = TinyWorld(seed=seed, sizes={"train": 0, "val": 0, "test": 0} | sizes)
    paths = {}
    for split, n in sizes.items():
        path = out_dir / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for record in world.load(split)[:n]:
                f.write(json.dumps(to_layout(record, layout), ensure_ascii=False) + "\n")
        paths[split] = path
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/tinyworld_jsonl")
    parser.add_argument("--layout", choices=LAYOUTS, default="gsm8k")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for split, path in export_jsonl(args.out, {"train": args.train, "test": args.test}, args.layout, args.seed).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
