"""Settings from the environment (prefix CLIPMEM_), shared by `clipmem ingest`, `clipmem serve` and the API."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.images import MAX_PIXELS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPMEM_", extra="ignore")

    database_url: str = Field("sqlite:///clipmem.db",
                              description="SQLAlchemy URL; a relative SQLite path is taken from the working "
                                          "directory. PostgreSQL: postgresql+psycopg://user@host:5432/db")
    # two scopes: a read token browses, the write token also changes the database (delete a run, tags)
    api_token: SecretStr | None = Field(None, description="The read token. When it or the write token is set, "
                                                          "every endpoint but /health and /access requires "
                                                          "'Authorization: Bearer <token>'.")
    api_write_token: SecretStr | None = Field(None, description="The write token: reads too, and is the only "
                                                                "token that may change the database (delete a "
                                                                "run, add or remove tags).")
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

    @field_validator("api_token", "api_write_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value):
        return None if value in ("", None) else value

    @model_validator(mode="after")
    def _tokens_differ(self):
        if self.api_token is not None and self.api_token == self.api_write_token:
            raise ValueError("CLIPMEM_API_TOKEN and CLIPMEM_API_WRITE_TOKEN are the same: every reader could "
                             "write; give the write token another value")
        return self

    @property
    def token_required(self) -> bool:
        """Whether requests need a bearer token (either token is set)."""
        return self.api_token is not None or self.api_write_token is not None


def load_settings() -> Settings:
    """Settings from the environment; a bad value is a ClipmemError naming its variable (not a traceback)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            where = f"CLIPMEM_{str(error['loc'][0]).upper()}" if error["loc"] else ""
            problems.append(f"{where}: {message}" if where else message)
        raise ClipmemError("bad setting: " + "; ".join(problems)) from None
