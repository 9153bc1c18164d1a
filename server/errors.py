"""Errors the HTTP layer answers in OpenAI's shape (shared by the app, the API and the state)."""

from __future__ import annotations

from litestar.exceptions import HTTPException


class APIError(HTTPException):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(detail=message, status_code=status, headers=headers)
        self.param = param


def not_found(model: str) -> APIError:
    """The one answer for unknown, unshared and refused adapters alike."""
    return APIError(
        404, f"model {model!r} does not exist or you do not have access to it", param="model"
    )


def storage_unavailable(reason: str) -> APIError:
    """503 for a storage failure (the adapter may be fine: retry later)."""
    return APIError(
        503,
        f"adapter storage is unavailable ({reason}); retry shortly",
        headers={"Retry-After": "5"},
    )
