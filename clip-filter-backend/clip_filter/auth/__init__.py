"""API keys: creation, storage (hash only) and lookup. The HTTP side lives in `api/security.py`."""
