"""Models named by where their files are, open_clip's schemas: `local-dir:FOLDER` and `hf-hub:org/repo`.

Either holds open_clip_config.json ({"model_cfg": ..., "preprocess_cfg": ...}) and weights (open_clip_model.safetensors
or open_clip_pytorch_model.bin). An hf-hub repo is used from the hub cache's copy when there is one; the hub is asked
only for what is missing and only when a download can work, else one error says what to do instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

# open_clip's own parser, and its choice among a folder's weight files (private: the same file open_clip would load)
from open_clip.factory import _find_checkpoint_in_dir, parse_model_name

from utils.errors import UserError
from utils.models.weights import default_cache_dir, download_blocked, ensure_can_download, hub_cached_file

PREFIXES = ("hf-hub:", "local-dir:")
HUB_HOST = "huggingface.co"
HUB_WEIGHTS = (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)  # what open_clip fetches from a repo, safetensors first


@dataclass
class FolderModel:
    """A folder-named model's files on this machine."""

    folder: Path  # holds open_clip_config.json: the local-dir itself, or the repo's snapshot in the hub cache
    config: dict[str, Any]  # {"model_cfg": ..., "preprocess_cfg": ...}
    weights: str | None  # the folder's weights file, None if it has none (or, for hf-hub, none was wanted)


def is_folder_name(name: str) -> bool:
    return name.startswith(PREFIXES)


def split_name(name: str) -> tuple[str | None, str]:
    """open_clip's (schema, rest) of a model name: ("hf-hub", "org/repo"), ("local-dir", FOLDER) or (None, name)."""
    try:
        return parse_model_name(name)
    except ValueError as err:
        raise UserError(f"--model {name}: {err} (expected hf-hub:org/repo or local-dir:FOLDER)") from err


def read_config(folder: Path, name: str) -> dict[str, Any]:
    """The folder's open_clip_config.json, checked to hold a model_cfg."""
    path = folder / HF_CONFIG_NAME
    if not folder.is_dir():
        raise UserError(f"--model {name}: no folder {folder}")
    if not path.is_file():
        raise UserError(
            f"--model {name}: {folder} has no {HF_CONFIG_NAME}; a local-dir: folder holds what an open_clip repo on "
            f"Hugging Face does: {HF_CONFIG_NAME} and {' or '.join(HUB_WEIGHTS)}"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"--model {name}: {path} cannot be read as JSON: {err}") from err
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise UserError(f'--model {name}: {path} has no "model_cfg" (open_clip\'s format: '
                        f'{{"model_cfg": {{...}}, "preprocess_cfg": {{...}}}})')  # fmt: skip
    return config


def check_name(name: str) -> None:
    """Without the network: a local-dir: folder with a readable config; an hf-hub: name that is a repo id."""
    schema, rest = split_name(name)
    if schema == "local-dir":
        read_config(Path(rest).expanduser(), name)
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(rest)
    except HFValidationError as err:
        raise UserError(f"--model {name}: '{rest}' is not a Hugging Face repo id (org/repo): {err}") from err


def local_folder(name: str, cache_dir: str | None) -> Path | None:
    """Where a folder-named model's config is on this machine: the local-dir, or the hub cache's snapshot of the
    repo (None: never downloaded). Never touches the network."""
    schema, rest = split_name(name)
    if schema == "local-dir":
        return Path(rest).expanduser()
    found = hub_cached_file(rest, [HF_CONFIG_NAME], cache_dir)
    return Path(found).parent if found else None


def folder_model_config(name: str, cache_dir: str | None = None) -> dict[str, Any] | None:
    """The model_cfg of a local-dir: folder or of an hf-hub: repo in the hub cache; None for a repo not downloaded."""
    folder = local_folder(name, cache_dir)
    return read_config(folder, name)["model_cfg"] if folder else None


def _download(repo: str, filename: str | None, cache_dir: str | None, name: str) -> str:
    """A repo's file through open_clip (None: its weights, safetensors first), into the hub cache."""
    from open_clip.pretrained import download_pretrained_from_hf

    try:
        return download_pretrained_from_hf(repo, filename=filename, cache_dir=cache_dir)
    except Exception as err:  # open_clip wraps every hub error in FileNotFoundError; keep the hub's reason
        what = filename or " or ".join(HUB_WEIGHTS)
        raise UserError(f"--model {name}: downloading {what} from {HUB_HOST} failed: {err}") from err


def resolve(name: str, want_weights: bool, cache_dir: str | None) -> FolderModel:
    """A folder-named model's config and (if `want_weights`) weights: local first, else from the hub if reachable."""
    schema, rest = split_name(name)
    folder = local_folder(name, cache_dir)
    if folder is None:  # an hf-hub repo this machine never downloaded
        if reason := download_blocked(HUB_HOST):
            raise UserError(
                f"--model {name} needs the repo's files from {HUB_HOST} ({HF_CONFIG_NAME} and weights); they are not "
                f"in the hub cache ({cache_dir or default_cache_dir()}) and {reason}. Either run once with network "
                f"access to download them, or copy the repo's files into a folder and pass --model local-dir:FOLDER."
            )
        folder = Path(_download(rest, HF_CONFIG_NAME, cache_dir, name)).parent
    config = read_config(folder, name)
    if schema == "local-dir":
        weights = _find_checkpoint_in_dir(folder)
    else:
        weights = hub_cached_file(rest, HUB_WEIGHTS, cache_dir)
        if weights is None and want_weights:
            ensure_can_download(f"of {name}", HUB_HOST, cache_dir)
            weights = _download(rest, None, cache_dir, name)
    if want_weights and weights is None:
        raise UserError(
            f"--model {name}: {folder} holds no weights ({' or '.join(HUB_WEIGHTS)}, or any .safetensors, .bin or "
            f".pth file); pass --ckpt FILE, or --pretrained none for a seeded random init"
        )
    return FolderModel(folder, config, weights)


def folder_tokenizer(name: str, found: FolderModel, cache_dir: str | None) -> Any:
    """open_clip's tokenizer for the model, built from the local config; only an hf-hub repo whose config names a
    Hugging Face tokenizer that is not in the folder has open_clip fetch it by name (hub cache, else the hub)."""
    schema, rest = split_name(name)
    source = found.config["model_cfg"].get("text_cfg", {}).get("hf_tokenizer_name")
    if schema == "hf-hub" and source and not (source == rest and (found.folder / "tokenizer_config.json").is_file()):
        return open_clip.get_tokenizer(name, cache_dir=cache_dir)
    return open_clip.get_tokenizer(f"local-dir:{found.folder}", cache_dir=cache_dir)
