"""Image-only backbones from timm (the notes' "pre-trained ViT without text encoder" baseline)."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_data_config

from utils.errors import UserError
from utils.models.checkpoint import Checkpoint
from utils.models.weights import ensure_can_download, hub_cached_file, load_into, quiet_root_logger

HUB_FILES = ("model.safetensors", "pytorch_model.bin")


class ImageOnly(torch.nn.Module):
    """A timm network with the pooled pre-logits features as its embedding."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.net(images)
        return F.normalize(features, dim=-1) if normalize else features


def _pretrained_file(arch: str, cache_dir: str | None) -> str | None:
    """A cached weights file for the arch's default pretrained tag, after the offline check if it is missing."""
    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
    if not hub_id:
        return None  # timm downloads it from a URL itself; let it
    found = hub_cached_file(hub_id, HUB_FILES, cache_dir)
    if not found:
        ensure_can_download(f"timm '{arch}'", "huggingface.co", cache_dir)
    return found


def load_timm(arch: str, tag: str | None, ckpt: Checkpoint | None, cache_dir: str | None) -> dict:
    """The ModelBundle fields of a timm backbone; any tag other than none means timm's pretrained weights."""
    if not timm.is_model(arch):
        raise UserError(
            f"unknown timm model '{arch}'; list them with python -c 'import timm; print(timm.list_models())'"
        )
    pretrained = bool(tag) and not ckpt
    overlay = {}
    if pretrained:
        found = _pretrained_file(arch, cache_dir)
        overlay = {"file": found} if found else {}
    try:
        with quiet_root_logger():
            net = timm.create_model(arch, pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay or None)
    except Exception as err:
        raise UserError(f"could not build timm model '{arch}' with pretrained={pretrained}: {err}") from err
    if ckpt:
        state = {k: v for k, v in ckpt.state_dict.items() if not k.startswith(("head.", "fc.", "classifier."))}
        state = {k.removeprefix("net."): v for k, v in state.items()}
        load_into(lambda: net.load_state_dict(state, strict=True), ckpt.path, arch)
    config = resolve_data_config({}, model=net)
    return {
        "model": ImageOnly(net),
        "preprocess": create_transform(**config),
        "train_preprocess": create_transform(**config, is_training=True),
        "tokenizer": None,
        "weights": ckpt.path if ckpt else f"timm:{arch} pretrained" if pretrained else "random",
        "embed_dim": net.num_features,
    }
