"""Loading a model: open_clip names and tags, `hf-hub:`/`local-dir:` folders, checkpoints, `tiny`, timm backbones."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import open_clip
import torch

from utils.errors import Missing, UserError
from utils.models import DEFAULT_MODEL, DEFAULT_PRETRAINED
from utils.models.checkpoint import Checkpoint, read_checkpoint
from utils.models.folders import check_name, folder_model_config, folder_tokenizer, is_folder_name, resolve
from utils.models.weights import (
    check_fits,
    ensure_can_download,
    fingerprint,
    hub_cached_file,
    load_into,
    quiet_root_logger,
    read_state_dict,
)

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)  # registers `tiny` (and any other config shipped here)

NO_WEIGHTS = ("none", "")
HF_DEFAULT_FILE = "open_clip_pytorch_model.bin"
TIMM_PREFIX = "timm:"
LIST_MODELS_HINT = "see the valid names with `python eval_ood_detection.py --list-models`"


@dataclass
class ModelBundle:
    """A loaded model with what the rest of the toolkit needs to use it."""

    model: torch.nn.Module  # has encode_image(images); CLIP models also encode_text(tokens)
    preprocess: Callable  # PIL image -> tensor: the model's own eval transform
    tokenizer: Callable | None  # None for image-only backbones
    name: str
    weights: str  # where the weights came from: tag, checkpoint path, or "random"
    fingerprint: str  # hash of the loaded weights' bytes: the feature cache keys on it
    device: torch.device
    embed_dim: int
    architecture: str = ""  # hash of the module tree (layers, activations): same weights, other net, other key
    train_preprocess: Callable | None = None  # the model's training transform (random crops etc.), for fine-tuning
    precision: str = "auto"  # image-feature extraction's autocast on CUDA (utils/device.py PRECISIONS)
    pipeline: str = "auto"  # image decoding and preprocessing: pil, tensor or auto (utils/features/images.py)

    @property
    def has_text(self) -> bool:
        return self.tokenizer is not None


def list_models_with_tags() -> list[str]:
    """One line per architecture: its name and the pretrained tags open_clip knows for it."""
    lines = []
    for name in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(name)
        lines.append(f"{name}: {', '.join(tags) if tags else '(no pretrained tags; --pretrained none or --ckpt)'}")
    lines.append(
        f"{TIMM_PREFIX}NAME: any timm image backbone (image-only: no zero-shot scores), e.g. "
        f"{TIMM_PREFIX}vit_base_patch16_224; list them with python -c 'import timm; print(timm.list_models())'"
    )
    lines.append("hf-hub:ORG/REPO: an open_clip repo on Hugging Face (config + weights; cached after one download)")
    lines.append("local-dir:FOLDER: a folder holding open_clip_config.json and weights, e.g. a copy of such a repo")
    return lines


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
        found = hub_cached_file(*_hf_candidates(cfg["hf_hub"]), cache_dir)
        if found:
            return found
    if cfg.get("url"):
        path = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if path.is_file():
            return str(path)
    return None


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
    host = "huggingface.co" if cfg.get("hf_hub") else (urlparse(cfg.get("url", "")).hostname or "huggingface.co")
    ensure_can_download(f"'{name}' / '{tag}'", host, cache_dir)
    try:
        return open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as err:
        raise Missing(f"downloading weights for {name}/{tag} failed: {err}") from err


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


def model_config(name: str, cache_dir: str | None = None) -> dict[str, Any] | None:
    """open_clip's model config (embed_dim, vision_cfg, text_cfg) of a built-in name, a `local-dir:` folder or an
    `hf-hub:` repo in the hub cache; None otherwise (timm, unknown, a repo not downloaded). Never touches the network,
    where open_clip.get_model_config would fetch an hf-hub repo's config."""
    if is_folder_name(name):
        return folder_model_config(name, cache_dir)
    return None if name.startswith(TIMM_PREFIX) else open_clip.get_model_config(name)


def has_text_encoder(name: str) -> bool:
    """Whether the architecture `name` encodes text (CLIP models, from open_clip or a folder, do; image-only timm
    backbones do not)."""
    return not name.startswith(TIMM_PREFIX)


def has_patch_tokens(name: str, cache_dir: str | None = None) -> bool:
    """Whether `name` is an open_clip ViT (class-token pooling), whose patch tokens the `local` view reads. An hf-hub
    repo whose config is not on this machine yet is taken to have them: the local view checks the loaded tower."""
    config = model_config(name, cache_dir)
    if config is None and is_folder_name(name):
        return True
    vision = (config or {}).get("vision_cfg", {})
    return isinstance(vision.get("layers"), int) and not vision.get("timm_model_name") and \
        not vision.get("attentional_pool") and vision.get("pool_type", "tok") == "tok"  # fmt: skip


def check_model_name(name: str) -> None:
    """Fail early, before any data is fetched and without the network, on an architecture neither open_clip nor timm
    knows, a `local-dir:` folder without open_clip_config.json, or an `hf-hub:` name that is no repo id."""
    if is_folder_name(name):
        check_name(name)
    elif name.startswith(TIMM_PREFIX):
        import timm

        if not timm.is_model(name[len(TIMM_PREFIX) :]):
            raise UserError(f"unknown timm model '{name[len(TIMM_PREFIX) :]}'; list them with "
                            f"python -c 'import timm; print(timm.list_models())'")  # fmt: skip
    elif name not in open_clip.list_models():
        raise UserError(f"unknown model '{name}'; {LIST_MODELS_HINT}")


class _Source(NamedTuple):
    """What open_clip builds a model from."""

    name: str  # open_clip's name for it: the built-in name, or `local-dir:` of the folder holding its config
    overrides: dict[str, Any]  # create_model_and_transforms settings a pretrained tag implies
    weights: str | None  # the file to load, None: random init
    tokenizer: Callable[[], Any]
    config: dict[str, Any]  # open_clip's model config (embed_dim, vision_cfg, text_cfg)


def _open_clip_source(name: str, tag: str | None, ckpt: str | None, cache_dir: str | None) -> _Source:
    """Where the model's config, preprocessing, weights and tokenizer come from.

    A built-in name takes its weights from `ckpt`, else the tag. A folder name (`hf-hub:`, `local-dir:`) is built
    from the folder's own config and preprocessing, as open_clip does, with weights from `ckpt`, else the folder's;
    its --pretrained only says whether to load them (none: seeded random init), as open_clip ignores tags there.
    """
    if is_folder_name(name):
        found = resolve(name, want_weights=bool(tag) and not ckpt, cache_dir=cache_dir)
        weights_file = ckpt or (found.weights if tag else None)
        tokenizer = partial(folder_tokenizer, name, found, cache_dir)
        # an hf-hub repo is built from its cached snapshot, so open_clip never asks the hub again
        return _Source(f"local-dir:{found.folder}", {}, weights_file, tokenizer, found.config["model_cfg"])
    if ckpt and tag and not open_clip.get_pretrained_cfg(name, tag):
        tag = None  # the weights come from the checkpoint; an inapplicable (e.g. default) tag adds nothing
    if tag and not open_clip.get_pretrained_cfg(name, tag):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise UserError(
            f"unknown pretrained tag '{tag}' for {name}; known tags: {', '.join(tags) or 'none'} (or --pretrained none)"
        )
    weights_file = ckpt or (fetch_pretrained(name, tag, cache_dir) if tag else None)
    tokenizer = partial(open_clip.get_tokenizer, name)
    return _Source(name, _tag_overrides(name, tag), weights_file, tokenizer, open_clip.get_model_config(name))


def load_open_clip_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """open_clip.load_checkpoint's conversions and strict load, on weights already read (it would read the file
    again): third-party layouts, the old text-tower layout, scalar logit scale and bias, positional embeddings."""
    from open_clip.factory import (
        convert_state_dict,
        convert_to_custom_text_state_dict,
        resize_pos_embed,
        resize_text_pos_embed,
    )

    state = convert_state_dict(model, dict(state))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in state and own is not None and own.ndim != state[key].ndim:
            state[key] = state[key].reshape(own.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state and not hasattr(model, position_ids):
        del state[position_ids]
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    model.load_state_dict(state, strict=True)


def _load_open_clip(name: str, tag: str | None, ckpt: Checkpoint | None, cache_dir: str | None) -> dict[str, Any]:
    source = _open_clip_source(name, tag, ckpt and ckpt.path, cache_dir)
    try:
        with quiet_root_logger():  # open_clip warns "initialized randomly"; the weights are loaded just below
            # pretrained_text=False: never fetch a Hugging Face text tower's base weights behind the user's back;
            # load_weights=False: a folder's weights are loaded below, checked like any checkpoint
            model, train_preprocess, preprocess = open_clip.create_model_and_transforms(
                source.name, pretrained=None, load_weights=False, pretrained_text=False, **source.overrides
            )
            tokenizer = source.tokenizer()
    except ImportError as err:
        raise UserError(f"{name} needs the package '{err.name}' (pip install {err.name})") from err
    except OSError as err:  # Hugging Face tokenizers and configs fetched from the hub
        raise UserError(f"{name} needs files from the Hugging Face hub that are not cached here: {err}") from err
    except (KeyError, TypeError, ValueError) as err:
        if not is_folder_name(name):
            raise
        raise UserError(f"open_clip cannot build {name} from its open_clip_config.json: {err}") from err
    if path := source.weights:
        # readable, nothing but tensors, and of this architecture's shapes, before open_clip's conversions load it
        state = ckpt.state_dict if ckpt else read_state_dict(path)
        check_fits(state, model, path, name)
        load_into(lambda: load_open_clip_state(model, state), path, name)
    weights = (ckpt and ckpt.path) or (path if is_folder_name(name) else tag) or "random"
    return {"model": model, "preprocess": preprocess, "tokenizer": tokenizer, "weights": weights,
            "embed_dim": source.config["embed_dim"], "train_preprocess": train_preprocess}  # fmt: skip


def load_model(
    name: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    ckpt: str | Checkpoint | None = None,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
    seed: int = 0,
) -> ModelBundle:
    """An open_clip model (a built-in name, `hf-hub:org/repo` or `local-dir:FOLDER`) or `timm:NAME` backbone, with
    weights from `ckpt` (a path, or a Checkpoint already read), else the tag (a folder's own weights), else seeded
    random init."""
    check_model_name(name)
    if isinstance(ckpt, str):
        ckpt = read_checkpoint(ckpt, contract=False)
    tag = None if (pretrained or "").lower() in NO_WEIGHTS else pretrained
    # Seeded random init (--pretrained none) is reproducible, so its features cache too; the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name.startswith(TIMM_PREFIX):
            from utils.models.timm_backbones import load_timm

            parts = load_timm(name[len(TIMM_PREFIX) :], tag, ckpt, cache_dir)
        else:
            parts = _load_open_clip(name, tag, ckpt, cache_dir)
    model = parts.pop("model").eval()
    return ModelBundle(
        model=model.to(torch.device(device)),
        name=name,
        fingerprint=fingerprint(model),
        architecture=hashlib.blake2b(repr(model).encode(), digest_size=16).hexdigest(),
        device=torch.device(device),
        **parts,
    )
