"""Review: users' feedback on replies, and the staff's work on conversations (flags, review
marks, the JSONL export of docs/review.md)."""

import json
from collections.abc import Iterator

from django.db.models import QuerySet
from django.utils import timezone

from chat.actions import get_message
from chat.errors import ChatError
from chat.inputs import check_text
from chat.models import Conversation, ConversationView, Feedback, Message, User

COMMENT_CHARS = 2000


def do_give_feedback(user: User, message_id: int, rating: object, comment: object = "") -> Feedback:
    """The user's thumbs up or down (and optional comment) on one of their replies; giving it
    again replaces it."""
    message = get_message(user, message_id)
    if message.role != Message.Role.ASSISTANT:
        raise ChatError("not_found", "No such reply.")
    if rating not in Feedback.Rating.values:
        raise ChatError("bad_frame", 'The rating is "up" or "down".')
    comment = check_text(comment.strip(), "comment") if isinstance(comment, str) else ""
    if len(comment) > COMMENT_CHARS:
        raise ChatError("too_large", f"A comment can be at most {COMMENT_CHARS} characters long.")
    feedback, _ = Feedback.objects.update_or_create(
        user=user, message=message, defaults={"rating": rating, "comment": comment}
    )
    return feedback


def do_record_views(viewer: User, conversation_ids) -> None:
    """Record that `viewer` saw what was said in these conversations (the audit of
    docs/review.md): every admin page or export that shows message text calls this."""
    ids = sorted({pk for pk in conversation_ids if pk is not None})
    ConversationView.objects.bulk_create(
        ConversationView(conversation_id=pk, viewer=viewer) for pk in ids
    )


def do_set_flag(conversations: QuerySet[Conversation], flagged: bool) -> int:
    return conversations.update(flagged=flagged)


def do_mark_reviewed(conversations: QuerySet[Conversation], reviewer: User) -> int:
    return conversations.update(reviewed_at=timezone.now(), reviewed_by=reviewer)


def _time(value) -> str | None:
    return value.isoformat() if value is not None else None


def conversation_record(conversation: Conversation) -> dict:
    """One line of the export (docs/review.md). Expects the prefetches of `export_lines`."""
    return {
        "id": conversation.id,
        "title": conversation.title,
        "owner": conversation.owner.username,
        "persona": conversation.persona.slug,
        "source": conversation.source,
        "created_at": _time(conversation.created_at),
        "updated_at": _time(conversation.updated_at),
        "flagged": conversation.flagged,
        "reviewed_at": _time(conversation.reviewed_at),
        "reviewed_by": conversation.reviewed_by.username if conversation.reviewed_by else None,
        "review_notes": conversation.review_notes,
        # Every version of every message (chat/branches.py): each names its parent, and
        # current_id ends the branch the owner has on screen.
        "current_id": conversation.current_id,
        "messages": [
            {
                "id": m.id,
                "parent_id": m.parent_id,
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "finish_reason": m.finish_reason,
                "error": m.error,
                "created_at": _time(m.created_at),
                "model_name": m.model_name,
                "persona_version": m.persona_version.number if m.persona_version else None,
                "generation": m.generation,
                "prompt_tokens": m.prompt_tokens,
                "completion_tokens": m.completion_tokens,
                "time_to_first_token": m.time_to_first_token,
                "duration": m.duration,
                "feedback": [
                    {"user": f.user.username, "rating": f.rating, "comment": f.comment}
                    for f in m.feedback.all()
                ],
            }
            for m in conversation.messages.all()  # Message.Meta.ordering: in order
        ],
    }


def export_lines(conversations: QuerySet[Conversation]) -> Iterator[str]:
    """JSONL: one conversation per line, oldest conversation first, messages in order."""
    conversations = (
        conversations.select_related("owner", "persona", "reviewed_by")
        .prefetch_related("messages__persona_version", "messages__feedback__user")
        .order_by("id")
    )
    for conversation in conversations.iterator(chunk_size=100):
        yield json.dumps(conversation_record(conversation), ensure_ascii=False) + "\n"
