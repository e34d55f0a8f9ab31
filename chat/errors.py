"""Every refusal of the web tier, in one place (as Zulip's `zerver/lib/exceptions.py`).

`ChatError` is a broken domain rule, raised by `check_*` / `do_*` functions and turned into an
`error` frame by the websocket (codes of docs/protocol.md) or a JSON error by the views.
`ApiError` is the OpenAI-compatible API's refusal (docs/api.md); `api_error` translates the
first into the second.
"""

from __future__ import annotations

import datetime as dt
import math

from django.utils import timezone

CONCURRENCY_RETRY_AFTER = 2  # seconds: a reply at once is a short wait, not a day's
BUSY_RETRY_AFTER = 5


class ChatError(Exception):
    """A refused request: `code` for programs, `message` for people, `extra` for the frame."""

    def __init__(self, code: str, message: str, **extra) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class ApiError(Exception):
    """A refused API request, answered with `status` and the OpenAI error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict:
        return {
            "error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}
        }


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def api_error(error: ChatError, *, param: str | None = None) -> ApiError:
    """The API's answer to a refusal of the domain rules (codes of docs/protocol.md)."""
    if error.code == "quota":
        resets_at = error.extra.get("resets_at")
        if resets_at is None:  # too many replies at once: one ends soon
            return ApiError(
                429, error.message, type="rate_limit_error", code="rate_limit_exceeded",
                retry_after=CONCURRENCY_RETRY_AFTER,
            )
        wait = (dt.datetime.fromisoformat(resets_at) - timezone.now()).total_seconds()
        return ApiError(
            429, error.message, type="rate_limit_error", code="daily_limit_exceeded",
            retry_after=max(1, math.ceil(wait)),
        )
    if error.code in {"busy", "unavailable"}:
        return ApiError(
            503, error.message, type="server_error",
            code="server_busy" if error.code == "busy" else "service_unavailable",
            retry_after=BUSY_RETRY_AFTER,
        )
    if error.code == "too_long":
        return bad_request(error.message, "messages", code="context_length_exceeded")
    if error.code in {"bad_frame", "bad_json", "too_large"}:
        return bad_request(error.message, param)
    if error.code == "bad_text":
        return bad_request(error.message, error.extra["field"])
    if error.code == "not_found":
        return ApiError(404, error.message, code="not_found", param=param)
    if error.code == "key_revoked":
        return ApiError(401, error.message, code="invalid_api_key")
    return ApiError(500, error.message, type="server_error", code=error.code)
