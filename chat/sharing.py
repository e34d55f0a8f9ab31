"""Share links: a read-only snapshot of a conversation at an unguessable URL (/s/<token>/).

The snapshot is a copy of the messages as they were when shared, so later turns stay private;
sharing the same conversation again refreshes the copy behind the same link. A viewer sees the
messages, the title and the display name the owner chose, nothing else of the owner's. A revoked
link, or one whose conversation was deleted (its links go with it), is `not_found`.
"""

import secrets

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from chat import branches
from chat.actions import get_conversation
from chat.errors import ChatError
from chat.models import Conversation, SharedConversation, User

TOKEN_BYTES = 24  # 192 random bits: not guessable, not enumerable
DISPLAY_NAME_CHARS = SharedConversation._meta.get_field("display_name").max_length


def check_display_name(display_name: object) -> str:
    if display_name is None:
        return ""
    if not isinstance(display_name, str):
        raise ChatError("bad_frame", "A display name must be text.")
    display_name = " ".join(display_name.split())
    if len(display_name) > DISPLAY_NAME_CHARS:
        raise ChatError("too_large", f"A display name can be at most {DISPLAY_NAME_CHARS} characters.")
    return display_name


def snapshot(conversation: Conversation) -> list[dict]:
    """The branch on screen (chat/branches.py), its finished messages with text: a reply still
    being written is not shared, nor are the other versions."""
    return [
        {"role": m.role, "content": m.content}
        for m in branches.shown_path(conversation)
        if m.content and not m.is_active
    ]


@transaction.atomic
def do_share(user: User, conversation_id: int, display_name: object = "") -> SharedConversation:
    """The conversation's live link with a fresh snapshot: a new link the first time."""
    display_name = check_display_name(display_name)
    conversation = get_conversation(user, conversation_id, lock=True)
    messages = snapshot(conversation)
    if not messages:
        raise ChatError("conflict", "There is nothing to share yet.")
    share = conversation.shares.filter(revoked_at=None).first() or SharedConversation(
        conversation=conversation, token=secrets.token_urlsafe(TOKEN_BYTES)
    )
    share.title, share.display_name, share.messages = conversation.title, display_name, messages
    share.save()
    return share


def shares_of(user: User) -> QuerySet[SharedConversation]:
    """The user's live links, newest first."""
    return SharedConversation.objects.filter(conversation__owner=user, revoked_at=None)


def do_revoke_share(user: User, share_id: int) -> None:
    """The link stops working at once; the conversation itself is untouched."""
    revoked = shares_of(user).filter(pk=share_id).update(revoked_at=timezone.now())
    if not revoked:
        raise ChatError("not_found", "No such share link.")


def get_share(token: str) -> SharedConversation:
    share = SharedConversation.objects.filter(token=token, revoked_at=None).first()
    if share is None:
        raise ChatError("not_found", "This link was revoked, or never existed.")
    return share
