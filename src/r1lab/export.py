"""Export any checkpoint of a run in Hugging Face format: ``python -m r1lab.export CKPT [--out DIR]``.

Training exports the final weights to ``<run>/hf`` already; this turns another checkpoint (the best
one, or ``last.ckpt`` of an interrupted run) into a folder that transformers or the next stage loads.
The module is rebuilt from the run's own ``.hydra/config.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf


def export_checkpoint(ckpt: str | Path, out: str | Path | None = None) -> Path:
    ckpt = Path(ckpt)
    run_dir = ckpt.parent.parent
    config_file = run_dir / ".hydra" / "config.yaml"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no such checkpoint")
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: the run's config is missing (expected <run>/checkpoints/<ckpt>)")
    cfg = OmegaConf.load(config_file)
    backbone = hydra.utils.instantiate(cfg.backbone)
    module = hydra.utils.instantiate(cfg.module, backbone=backbone)
    module.configure_model()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state, strict=False)
    return module.export_hf(Path(out) if out else run_dir / f"hf-{ckpt.stem}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a checkpoint under <run>/checkpoints/")
    parser.add_argument("--out", help="output folder (default: <run>/hf-<checkpoint name>)")
    args = parser.parse_args(argv)
    print(export_checkpoint(args.ckpt, args.out))


if __name__ == "__main__":
    main()
