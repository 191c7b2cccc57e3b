"""Getting a model: which files a variant needs (``plan``), what a models folder already holds of
them (``state``) and one request that fetches the rest through huggingface_hub (``request``)."""

from .request import MARKER, STAGING_PREFIX, WEIGHT_CHOICES, download_model, is_downloaded, manual_steps, parse_repo_id

__all__ = ["MARKER", "STAGING_PREFIX", "WEIGHT_CHOICES", "download_model", "is_downloaded", "manual_steps",
           "parse_repo_id"]
