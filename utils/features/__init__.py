"""Features: the on-disk cache (store), its resumable writer, image features by view (images), the one text encoder
(text).

Import the modules directly: this package stays light, so that the scripts' --help reads the cache's dtypes without
importing torch.
"""
