"""Shared fixtures: the real Hydra configs composed at tiny scale, writing into tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write

CONF = Path(__file__).resolve().parents[1] / "conf"
# Tiny models run fastest on one thread, and the DDP tests' two processes get a core each.
torch.set_num_threads(1)

# A tiny world small enough for tests: every split fills in milliseconds.
TINY_DATA = [
    "data.source.sizes={train:256,val:16,test:16}",
    "data.batch_size=8",
    "data.eval_batch_size=16",
]


def compose_cfg(tmp_path: Path, overrides: list[str]):
    """Compose conf/train.yaml with overrides, as the CLI would, with outputs under tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str, data: list[str] | None = None):
        return compose_cfg(tmp_path, [*(TINY_DATA if data is None else data), *overrides])

    return _make


@pytest.fixture(scope="session")
def tiny_backbone():
    from r1lab.models import Backbone

    return Backbone(
        tiny=dict(family="llama", vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                  tie_word_embeddings=True),
    )


@pytest.fixture(scope="session")
def tokenizer(tiny_backbone):
    return tiny_backbone.tokenizer


def arith_records(n: int, seed: int = 0) -> list[dict]:
    """The first n train tasks of an arithmetic-only tiny world (operands up to 10)."""
    from r1lab.data.tinyworld import TinyWorld

    return TinyWorld(seed=seed, sizes={"train": n, "val": 64, "test": 200}, max_operand=10).load("train")


POLICY_STAGES = ("base", "r1_zero", "sft", "grpo", "sft2", "grpo_rm")


@pytest.fixture(scope="session")
def pipeline_root(tmp_path_factory, tiny_backbone):
    """An outputs/ root whose pipeline/tiny/<stage>/hf folders hold tiny exports, so that stage
    configs that read the previous stage's export by name compose and instantiate in tests."""
    from r1lab.data.tinyworld.export import export_jsonl
    from r1lab.modules.base import export_hf

    root = tmp_path_factory.mktemp("outputs")
    model = tiny_backbone.build_model()
    for stage in POLICY_STAGES:
        export_hf(model, tiny_backbone.tokenizer, root / "pipeline" / "tiny" / stage / "hf")
    # the rejection-sampled sets that sft2 and distill read (the tiny world's reference solutions stand in)
    for stage in ("sft_data", "distill_data"):
        data = export_jsonl(root / "pipeline" / "tiny" / stage / "v1", {"train": 32}, layout="r1lab")
        data["train"].rename(data["train"].with_name("data.jsonl"))
    # preference pairs (rm reads them) and a reward-model export (grpo_rm scores with it)
    from r1lab.jobs.preferences import write_synthetic
    from r1lab.modules.reward_model import RewardModel

    write_synthetic(arith_records(48), root / "pipeline" / "tiny" / "preferences" / "pairs.jsonl")
    reward_model = RewardModel(tiny_backbone)
    reward_model.configure_model()
    reward_model.export_hf(root / "pipeline" / "tiny" / "rm" / "hf")
    return root


def preference_pairs(n: int = 8) -> list[dict]:
    """n preference pairs of the tiny world: each task's reference against one of its corruptions."""
    from r1lab.data.tinyworld import TinyWorld
    from r1lab.jobs.synthetic_pairs import synthetic_candidates

    rng = __import__("random").Random(0)
    records = TinyWorld(seed=3, sizes={"train": n, "val": 0, "test": 0}).load("train")
    out = []
    for i, record in enumerate(records):
        candidates = synthetic_candidates(record, rng)  # the reference first, then its corruptions
        _, rejected = candidates[1 + i % (len(candidates) - 1)]
        out.append({"prompt": record["prompt"], "chosen": candidates[0][1], "rejected": rejected, "margin": 1.0})
    return out


@pytest.fixture
def one_thread():
    """Matrices this small gain nothing from a second thread; on a busy, shared CPU its spin-waits
    made this 30-step loop ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



class KillAt:
    """A callback that kills its own process with SIGKILL once ``step`` optimizer steps are done (tests of
    resuming: a real kill, at a known point between two checkpoints)."""

    def __new__(cls, step: int):
        import os
        import signal

        import lightning as L

        class _Kill(L.Callback):
            def on_train_batch_end(self, trainer, *args) -> None:
                if trainer.global_step >= step:
                    os.kill(os.getpid(), signal.SIGKILL)

        return _Kill()
