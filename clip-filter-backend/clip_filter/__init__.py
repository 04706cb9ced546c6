"""clip-filter: image-text matching, embeddings and collection search on OpenCLIP."""

__version__ = "0.2.0"
