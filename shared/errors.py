"""The farm's small error hierarchy. Routes and tasks raise these; one place maps them to HTTP."""

from __future__ import annotations


class ImgfarmError(Exception):
    """Base class of every error the farm raises on purpose."""


class ConfigError(ImgfarmError):
    """Settings or the model registry are wrong; the process cannot start."""


class InvalidRequest(ImgfarmError):
    """A client sent something we will not render; names the field at fault."""

    status_code = 422

    def __init__(self, field: str, message: str, status_code: int | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class NotFound(ImgfarmError):
    """The thing does not exist, or belongs to another team (we do not say which)."""


class TransientError(ImgfarmError):
    """Worth retrying: a storage 5xx, a dropped connection, a broker hiccup."""


class StorageError(ImgfarmError):
    """Object storage refused or failed an operation."""


class StorageConfigError(StorageError):
    """Storage is misconfigured (no credentials, no bucket, access denied): retrying is futile."""


class ModelLoadError(ImgfarmError):
    """A model's weights could not be loaded."""


class PermanentRenderError(ImgfarmError):
    """Rendering this job can never succeed (bad source, bad params): fail it at once."""
