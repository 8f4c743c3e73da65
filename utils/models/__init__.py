"""Models: loading CLIP and timm backbones, checkpoints read once, weights on disk, shipped configs; the constants.

Import the modules directly (utils.models.loading, ...): this package stays light, so that scores can use its
constant and the scripts' --help the default model without importing open_clip.
"""

CLIP_LOGIT_SCALE = 100.0  # CLIP's logit scale: exp(its learned temperature), capped at 100 in training
DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-B-16", "openai"  # the MCM paper's backbone
