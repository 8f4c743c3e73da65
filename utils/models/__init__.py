"""Models: loading open_clip CLIP models and timm backbones (loading.py), weights on disk (weights.py), image-only
timm backbones (timm_backbones.py) and the shipped configs (configs/). Import those modules directly: this package
stays light, so that scores can use its constant without importing open_clip."""

CLIP_LOGIT_SCALE = 100.0  # CLIP's logit scale: exp(its learned temperature), capped at 100 in training
