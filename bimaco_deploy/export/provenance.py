"""What an artifact was made from, and whether it fits what a command was given.

Every ONNX graph the exporter writes carries, in its metadata: the op contract
version, the config (its YAML text and where it came from) and where its weights
came from (a checkpoint's name and SHA-256, or the seed of a random init). Commands
that use an artifact compare these with their own options and refuse a mismatch,
naming both sides: a graph run with another config fails in ONNX Runtime with
"Gather indices out of bounds", or worse, runs and gives a wrong answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..errors import ArtifactError
from ..plugins import contract

PathLike = Union[str, Path]

#: Metadata keys (besides those in exporter._metadata) that say where the weights came from.
WEIGHTS_KEY = "weights"  # "checkpoint" or "random_init"
CKPT_NAME_KEY = "checkpoint"
CKPT_SHA_KEY = "checkpoint_sha256"
SEED_KEY = "random_init_seed"


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def weights_metadata(ckpt: Optional[PathLike], seed: Optional[int]) -> Dict[str, str]:
    """Metadata entries naming the weights a graph was written from."""
    if ckpt is None:
        return {WEIGHTS_KEY: "random_init", SEED_KEY: str(0 if seed is None else seed)}
    return {WEIGHTS_KEY: "checkpoint", CKPT_NAME_KEY: Path(ckpt).name, CKPT_SHA_KEY: file_sha256(ckpt)}


def describe_weights(meta: Dict[str, str]) -> Optional[str]:
    """"checkpoint X (sha256 abcd1234...)" / "seeded random weights (seed 0)"; None if the graph does not say."""
    kind = meta.get(WEIGHTS_KEY)
    if kind == "checkpoint":
        return f"checkpoint {meta.get(CKPT_NAME_KEY)} (sha256 {meta.get(CKPT_SHA_KEY, '?')[:12]})"
    if kind == "random_init":
        return f"seeded random weights (seed {meta.get(SEED_KEY)})"
    return None


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The metadata of an ONNX file (weights are not loaded into memory twice: the file is parsed once)."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: ONNX file not found")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise ArtifactError(f"{p}: not a readable ONNX model ({type(e).__name__})") from None
    return {q.key: q.value for q in model.metadata_props}


def artifact_config(meta: Dict[str, str], where: PathLike) -> Any:
    """The config an artifact was exported with (a ModelConfig), from its metadata."""
    from ..models.config import load_config_text

    text = meta.get("config_yaml")
    if not text:
        raise ArtifactError(f"{where}: carries no config in its metadata (exported by an older version?); "
                            "re-export it, or give --config")
    return load_config_text(text, f"{where} (exported with {meta.get('config_source', 'an unnamed config')})")


def _differences(a: Any, b: Any, prefix: str) -> List[str]:
    if is_dataclass(a) and is_dataclass(b) and type(a) is type(b):
        out: List[str] = []
        for f in fields(a):
            out += _differences(getattr(a, f.name), getattr(b, f.name), f"{prefix}.{f.name}")
        return out
    return [] if a == b else [f"{prefix} {a!r} vs {b!r}"]


def check_contract(meta: Dict[str, str], where: PathLike) -> None:
    """Refuse a graph written for another op contract version."""
    have = meta.get("bimaco_contract_version")
    if have is not None and have != str(contract.CONTRACT_VERSION):
        raise ArtifactError(f"{where}: written for op contract v{have}; this bimaco-deploy implements "
                            f"v{contract.CONTRACT_VERSION}: re-export it with this version")


def check_config(meta: Dict[str, str], where: PathLike, config: Any, *, parts: tuple = ("unet", "diffusion")) -> None:
    """Refuse an artifact exported with another config than ``config`` (compared section by section:
    ``parts`` of the ModelConfig), naming both configs and the first fields that differ."""
    if not meta.get("config_yaml"):
        return  # an older export: nothing to compare with
    theirs = artifact_config(meta, where)
    diffs: List[str] = []
    for part in parts:
        a, b = getattr(theirs, part, None), getattr(config, part, None)
        if a is None or b is None:
            continue
        diffs += _differences(a, b, part)
    if diffs:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise ArtifactError(
            f"{where} was exported with config {meta.get('config_source')}, but the command was given --config "
            f"{config.source}: they differ ({shown}). Give the config it was exported with, or re-export"
        )


def check_weights(meta: Dict[str, str], where: PathLike, ckpt: Optional[PathLike], seed: Optional[int]) -> None:
    """Refuse an artifact whose weights are not the ones the command compares it with:
    checkpoint ``ckpt`` (by SHA-256), or seeded random weights (``ckpt`` None, ``seed``)."""
    kind = meta.get(WEIGHTS_KEY)
    if kind is None:
        return  # an older export: nothing to compare with
    theirs = describe_weights(meta)
    if ckpt is None:
        mine = f"no --ckpt (seeded random weights, seed {0 if seed is None else seed})"
        if kind == "random_init" and meta.get(SEED_KEY) == str(0 if seed is None else seed):
            return
    else:
        from ..models.checkpoint import check_checkpoint_file

        check_checkpoint_file(ckpt)
        mine = f"--ckpt {ckpt}"
        if kind == "checkpoint" and meta.get(CKPT_SHA_KEY) == file_sha256(ckpt):
            return
    raise ArtifactError(f"{where} was exported from {theirs}, but the command was given {mine}: "
                        "they are different weights. Give the checkpoint it was exported from, or re-export")
