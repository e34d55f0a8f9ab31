"""API keys: created and revoked on the settings page (chat/api/views.py) or with
`manage.py create_api_key`, checked on every API request. Only a key's SHA-256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.db.models import QuerySet
from django.utils import timezone

from chat.errors import ApiError, ChatError
from chat.inputs import check_text
from chat.models import ApiKey, User
from chat.sessions import announce

KEY_PREFIX = "gw-"
KEY_DISPLAY_CHARS = 10  # "gw-" and 7 characters of the secret: enough to tell keys apart

def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def do_create_api_key(user: User, name: str) -> tuple[ApiKey, str]:
    """A new key for `user`: (its row, the key itself). The key is not stored, only its hash:
    show it now or never."""
    name = check_text(" ".join(str(name).split()), "name")
    max_length = ApiKey._meta.get_field("name").max_length
    if not name or len(name) > max_length:
        raise ChatError("bad_frame", f"A key's name needs 1 to {max_length} characters.")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey.objects.create(
        user=user, name=name, prefix=key[:KEY_DISPLAY_CHARS], hashed=_digest(key)
    )
    return row, key


def key_group(key_id: int) -> str:
    """The channel group of the streams that key `key_id` is following (chat/api/follow.py)."""
    return f"api-key.{key_id}"


def live_keys() -> QuerySet[ApiKey]:
    """Keys that may still be used: not revoked, of an active user."""
    return ApiKey.objects.filter(revoked_at__isnull=True, user__is_active=True)


def do_revoke_api_key(user: User, key_id: int) -> ApiKey:
    """Revoke one of the user's keys, ending the streams it is following; revoking it again
    changes nothing."""
    key = ApiKey.objects.filter(user=user, pk=key_id).first()
    if key is None:
        raise ChatError("not_found", "No such API key.")
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        announce(key_group(key.pk), {"type": "key.revoked"})
    return key


def check_api_key(authorization: str | None) -> ApiKey:
    """The key (with its user) of an `Authorization: Bearer <key>` header, or a 401 ApiError.

    Keys are found by their SHA-256, so the lookup compares hashes of a secret, not the secret
    a byte at a time; the final comparison is constant-time anyway."""
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(
            401, "Missing API key: send `Authorization: Bearer <key>`.", code="invalid_api_key"
        )
    digest = _digest(key)
    row = live_keys().select_related("user").filter(hashed=digest).first()
    if row is None or not hmac.compare_digest(row.hashed, digest):
        raise ApiError(401, "Incorrect or revoked API key.", code="invalid_api_key")
    ApiKey.objects.filter(pk=row.pk).update(last_used_at=timezone.now())
    return row

