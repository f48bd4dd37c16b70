"""Settings from the environment (prefix CLIPMEM_), shared by `clipmem ingest`, `clipmem serve` and the API."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scoring.images import MAX_PIXELS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPMEM_", extra="ignore")

    database_url: str = Field("sqlite:///clipmem.db",
                              description="SQLAlchemy URL; a relative SQLite path is taken from the working "
                                          "directory. PostgreSQL: postgresql+psycopg://user@host:5432/db")
    api_token: SecretStr | None = Field(None, description="When set, every endpoint but /health requires "
                                                          "'Authorization: Bearer <token>'.")
    map_method: Literal["pca", "umap"] = Field("pca", description="2-D map method used at ingest; umap needs "
                                                                  "the umap-learn package.")
    # in-memory caches of the API process (per-run score columns and embedding matrices)
    score_cache_mb: int = Field(1024, description="Budget for cached score columns (about 160 MB per million "
                                                   "scored pairs).")
    embedding_cache_mb: int = Field(1024, description="Budget for cached embedding matrices (16 x D bytes per "
                                                       "embedded pair).")
    # images inside WebDataset shards are stored at ingest with this longest side
    stored_thumbnail_px: int = Field(256, description="Longest side of the thumbnails stored at ingest for "
                                                      "images inside WebDataset shards.")
    max_image_pixels: int = Field(MAX_PIXELS, ge=1, description="Largest image (width x height) the API "
                                                                "decodes for a thumbnail, and the most pixels "
                                                                "it decodes at once; larger ones answer 404.")

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value):
        return None if value in ("", None) else value
