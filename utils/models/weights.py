"""Weights on disk, for any model source: the hub cache, the offline check, safe reading, fingerprints."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from utils.errors import Missing, UserError

NETWORK_PROBE_TIMEOUT_S = 3.0


def default_cache_dir() -> str:
    """Where huggingface_hub keeps downloaded weights (HF_HUB_CACHE or HF_HOME respected)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_cached_file(repo: str, filenames: Sequence[str], cache_dir: str | None) -> str | None:
    """The first of `filenames` that an earlier download left in the hub cache; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(found, str):
            return found
    return None


def network_reachable(host: str) -> bool:
    """A direct TCP connection to `host`:443 within seconds; behind a proxy, assume yes and let the download try."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((host, 443), timeout=NETWORK_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def download_blocked(host: str) -> str | None:
    """Why nothing can be downloaded from `host` now (HF_HUB_OFFLINE set, or unreachable), within seconds; None: go."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    return None if network_reachable(host) else f"{host} cannot be reached"


def ensure_can_download(what: str, host: str, cache_dir: str | None) -> None:
    """Fail in seconds, with what to do, when weights are not cached and cannot be downloaded."""
    if reason := download_blocked(host):
        raise Missing(
            f"pretrained weights {what} are not in the local cache ({cache_dir or default_cache_dir()}) and {reason}. "
            f"Either run once with network access to download them, copy the cache folder from a machine that has "
            f"them, or pass a local weights file with --ckpt PATH. (HF_HUB_OFFLINE=1 makes this check skip the "
            f"network; unset it to allow the download.)"
        )


def _plain(err: BaseException) -> str:
    """What a reader said when a file could not be read, without the names of Python's exception types."""
    text = " ".join(str(err).strip().splitlines()[:2])[:200]
    return f"the reader said: {text}" if text and len(text) > 20 else "its contents could not be parsed"


def _first_lines(err: BaseException) -> str:
    text = " ".join(str(err).strip().splitlines()[:3])[:400]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def read_file(path: str) -> object:
    """What a weights file holds: a .safetensors file's tensors, or a torch file read with weights_only=True (nothing
    is unpickled). A missing or unreadable file is one UserError."""
    if os.path.isdir(path):
        candidates = sorted(p for p in os.listdir(path) if p.endswith((".pt", ".pth", ".bin", ".safetensors")))
        hint = f" (it holds {', '.join(candidates[:3])})" if candidates else ""
        raise UserError(f"checkpoint {path} is a folder; pass the weights file inside it{hint}")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{path} is not a plain weights file (it holds pickled Python objects, which are never unpickled "
            f"here); save a state dict of tensors, or a .safetensors file"
        ) from err
    except Exception as err:  # torch's and safetensors' own exceptions name their internals (IndexError, KeyError)
        raise UserError(
            f"{path} cannot be read as a weights file: it is damaged (cut short or overwritten) or not a "
            f"PyTorch or safetensors file ({_plain(err)})"
        ) from err


def state_dict_of(saved: object, path: str) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping in what a weights file held: a dict's `state_dict` entry (this project's
    checkpoints) or the dict itself; a `module.` prefix is dropped."""
    state = saved
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} cannot be read as a weights file: it holds no name -> tensor mapping")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (read_file, then state_dict_of)."""
    return state_dict_of(read_file(path), path)


def check_fits(state: dict[str, torch.Tensor], model: torch.nn.Module, path: str, name: str) -> None:
    """Refuse weights whose tensors have other shapes than the model's, naming the first few.

    Positional embeddings may differ in their number of positions (open_clip interpolates those); any other
    difference (widths, embedding dimension, patch size) means another architecture. Missing or extra tensors
    (another depth) are refused by the strict load itself.
    """
    own = model.state_dict()
    differ = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in sorted(state.keys() & own.keys())
        if state[key].shape != own[key].shape
        and not (key.endswith("positional_embedding") and state[key].shape[-1:] == own[key].shape[-1:])
    ]
    if differ:
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise UserError(f"checkpoint {path} does not fit architecture {name}: tensor shapes differ "
                        f"(checkpoint vs model): {'; '.join(differ[:3])}{more}")  # fmt: skip


def load_into(load: Callable[[], object], path: str, name: str) -> None:
    """Run `load()`, which fills a model from `path`, turning any mismatch into one message."""
    try:
        load()
    except (RuntimeError, KeyError, ValueError, StopIteration, AttributeError, AssertionError, IndexError) as err:
        # AssertionError: open_clip asserts equal widths while resizing positional embeddings
        raise UserError(f"checkpoint {path} does not fit architecture {name}: {_first_lines(err)}") from err


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    """Silence libraries that log through the root logger (open_clip's 'initialized randomly')."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def fingerprint(model: torch.nn.Module) -> str:
    """A hash of every weight's name, dtype, shape and bytes: equal weights, equal fingerprint."""
    return fingerprint_tensors(model.state_dict())


def fingerprint_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """The fingerprint of named tensors (a state dict or part of one)."""
    digest = hashlib.blake2b(digest_size=16)
    for key, tensor in sorted(tensors.items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
