"""Features: the on-disk cache, its resumable writer, image features by view, and the one text encoder."""

from utils.features.images import DEFAULT_VIEW, VIEWS, image_features
from utils.features.store import CachedFeatures, FeatureCache
from utils.features.text import encode_texts, text_embeddings

__all__ = ["DEFAULT_VIEW", "VIEWS", "CachedFeatures", "FeatureCache", "encode_texts", "image_features",
           "text_embeddings"]  # fmt: skip
