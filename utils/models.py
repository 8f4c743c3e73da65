"""CLIP models through open_clip: architectures, pretrained tags, local checkpoints, the offline `tiny` model."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.factory import load_state_dict

from utils.errors import UserError

CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)  # registers `tiny` (and any other config shipped here)

DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-B-16", "openai"  # the MCM paper's backbone
NO_WEIGHTS = ("none", "")
HF_DEFAULT_FILE = "open_clip_pytorch_model.bin"
NETWORK_PROBE_TIMEOUT_S = 3.0
LIST_MODELS_HINT = "see the valid names with `python eval_ood_detection.py --list-models`"


@dataclass
class ClipBundle:
    """A loaded CLIP model with what the rest of the toolkit needs to use it."""

    model: torch.nn.Module
    preprocess: Callable  # PIL image -> tensor, open_clip's eval transform for this model
    tokenizer: Callable
    name: str
    weights: str  # where the weights came from: tag, checkpoint path, or "random"
    fingerprint: str  # hash of the loaded weights' bytes: the feature cache keys on it
    device: torch.device
    embed_dim: int


def list_models_with_tags() -> list[str]:
    """One line per architecture: its name and the pretrained tags open_clip knows for it."""
    lines = []
    for name in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(name)
        lines.append(f"{name}: {', '.join(tags) if tags else '(no pretrained tags; --pretrained none or --ckpt)'}")
    return lines


def default_cache_dir() -> str:
    """Where open_clip/huggingface_hub keep downloaded weights (HF_HUB_CACHE or HF_HOME respected)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """The repo and the file names open_clip would fetch for an `org/repo/[file]` entry, safetensors first."""
    repo, filename = os.path.split(hf_hub)
    filename = filename or HF_DEFAULT_FILE
    if filename == HF_DEFAULT_FILE:
        return repo, ["open_clip_model.safetensors", filename]
    if filename.endswith((".bin", ".pth")):
        return repo, [filename[:-4] + ".safetensors", filename]
    return repo, [filename]


def cached_weights(cfg: dict, cache_dir: str | None) -> str | None:
    """The local file holding a pretrained tag's weights, if a previous download left it; never touches the network."""
    if "file" in cfg:
        return cfg["file"]
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, names = _hf_candidates(cfg["hf_hub"])
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
    if cfg.get("url"):
        path = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if path.is_file():
            return str(path)
    return None


def _download_host(cfg: dict) -> str:
    return "huggingface.co" if cfg.get("hf_hub") else (urlparse(cfg.get("url", "")).hostname or "huggingface.co")


def _network_reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=NETWORK_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _offline_message(name: str, tag: str, reason: str, cache_dir: str | None) -> str:
    return (
        f"pretrained weights '{name}' / '{tag}' are not in the local cache ({cache_dir or default_cache_dir()}) "
        f"and {reason}. Either run once with network access to download them, copy the "
        f"cache folder from a machine that has them, or pass a local weights file with --ckpt PATH. "
        f"(HF_HUB_OFFLINE=1 makes this check skip the network; unset it to allow the download.)"
    )


def fetch_pretrained(name: str, tag: str, cache_dir: str | None = None) -> str:
    """Return a local file with the weights of (architecture, tag): the cache first, else a download.

    Offline, a missing file fails in seconds with one message instead of open_clip's minute of retries.
    """
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise UserError(f"unknown pretrained tag '{tag}' for {name}; known tags: {', '.join(tags) or 'none'}")
    path = cached_weights(cfg, cache_dir)
    if path:
        return path
    host = _download_host(cfg)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        raise UserError(_offline_message(name, tag, "HF_HUB_OFFLINE is set", cache_dir))
    if not _network_reachable(host):
        raise UserError(_offline_message(name, tag, f"{host} cannot be reached", cache_dir))
    try:
        return open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as err:
        raise UserError(f"downloading weights for {name}/{tag} failed: {err}") from err


def _tag_overrides(name: str, tag: str | None) -> dict[str, Any]:
    """Settings a pretrained tag implies beyond its weights (activation, normalisation), applied without download."""
    cfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    overrides: dict[str, Any] = {"force_quick_gelu": bool(cfg.get("quick_gelu", False))}
    for key, arg in (
        ("mean", "image_mean"),
        ("std", "image_std"),
        ("interpolation", "image_interpolation"),
        ("resize_mode", "image_resize_mode"),
    ):
        if key in cfg:
            overrides[arg] = cfg[key]
    return overrides


def _load_weights(model: torch.nn.Module, path: str, name: str) -> None:
    """Load a state dict file into `model`: readable first (never unpickling objects), then fitting."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path}")
    try:
        load_state_dict(path, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{path} is not a plain weights file (it holds pickled Python objects, which are never unpickled "
            f"here); save a state dict of tensors, or a .safetensors file"
        ) from err
    except Exception as err:
        raise UserError(f"{path} cannot be read as a weights file: {_first_lines(err)}") from err
    try:
        open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
    except (RuntimeError, KeyError, ValueError, StopIteration, AttributeError) as err:
        raise UserError(f"checkpoint {path} does not fit architecture {name}: {_first_lines(err)}") from err


def _first_lines(err: BaseException) -> str:
    text = " ".join(str(err).strip().splitlines()[:3])[:400]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def fingerprint(model: torch.nn.Module) -> str:
    """A hash of every weight's name, dtype, shape and bytes: equal weights, equal fingerprint."""
    digest = hashlib.blake2b(digest_size=16)
    for key, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_clip(
    name: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    ckpt: str | None = None,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
    seed: int = 0,
) -> ClipBundle:
    """Build an open_clip model with weights from `ckpt`, else the `pretrained` tag, else seeded random init."""
    if name not in open_clip.list_models():
        raise UserError(f"unknown model '{name}'; {LIST_MODELS_HINT}")
    tag = None if (pretrained or "").lower() in NO_WEIGHTS else pretrained
    if ckpt and tag and not open_clip.get_pretrained_cfg(name, tag):
        tag = None  # the weights come from the checkpoint; an inapplicable (e.g. default) tag adds nothing
    if tag and not open_clip.get_pretrained_cfg(name, tag):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise UserError(
            f"unknown pretrained tag '{tag}' for {name}; known tags: {', '.join(tags) or 'none'} (or --pretrained none)"
        )
    weights_file = ckpt or (fetch_pretrained(name, tag, cache_dir) if tag else None)
    # Seeded random init (--pretrained none) is reproducible, so its features cache too; the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]), _quiet_root_logger():  # open_clip warns "initialized randomly"
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, **_tag_overrides(name, tag))
    if weights_file:
        _load_weights(model, weights_file, name)
    model.eval()
    fp = fingerprint(model)
    device = torch.device(device)
    model.to(device)
    return ClipBundle(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(name),
        name=name,
        weights=ckpt or tag or "random",
        fingerprint=fp,
        device=device,
        embed_dim=open_clip.get_model_config(name)["embed_dim"],
    )
