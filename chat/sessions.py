"""Ending a user's open websockets when their session ends: logout, a password change, the
account set inactive, in every Daphne process.

A socket checks its session (`session_user`) whenever one of its user's sessions may have
ended, on a `session.check` event sent to the channel group of that user (`user_group`): after
a logout (the event names the session that ended, since Django deletes it only after the
signal) and after any save of the user but a login's, which covers a new password (its hash no
longer matches the session's) and `is_active` turned off. The event goes through the channel
layer, so sockets on every Daphne process hear it. A frame checks too, unless the socket looked
less than GROKWEB_SESSION_RECHECK_SECONDS ago and is in its user's group: if Redis drops an
event, or a session expires, the socket finds out within that time.
"""

from __future__ import annotations

import logging
from importlib import import_module

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.http import HttpRequest

from chat.models import User

log = logging.getLogger(__name__)


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def session_user(session_key: str | None) -> User | None:
    """The user session `session_key` still logs in, as Django decides it for a request: the
    session exists, it holds the user's current password hash, the user is active."""
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = auth.get_user(request)
    return user if user.is_authenticated else None


def announce(group: str, event: dict) -> None:
    """Send `event` to `group` once the change that prompts it is committed. Best effort: when
    Redis is away the listeners find out by their own checks."""

    def send() -> None:
        try:
            async_to_sync(get_channel_layer().group_send)(group, event)
        except (redis.RedisError, OSError) as exc:
            log.warning("sending %s to %s failed: %s", event["type"], group, exc)

    transaction.on_commit(send)


@receiver(user_logged_out)
def _logged_out(sender, request: HttpRequest, user: User | None, **kwargs) -> None:
    if user is not None:
        announce(user_group(user.pk), {"type": "session.check", "ended": request.session.session_key})


@receiver(post_save, sender=User)
def _user_saved(sender, instance: User, created: bool, update_fields, **kwargs) -> None:
    if not created and update_fields != frozenset({"last_login"}):
        announce(user_group(instance.pk), {"type": "session.check", "ended": None})
