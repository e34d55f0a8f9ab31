"""Branches: a conversation's messages form a tree, and the page shows one path through it.

Every message names its parent, the message it follows (None for a first message). Editing a
user message adds a sibling of it (the same parent) and regenerating a reply adds a sibling of
the reply, so no version is ever lost. `Conversation.current` is the end of the branch on
screen: the page shows the path from the first message to it, each message with its versions
(its siblings' ids, oldest first, for `< 2/3 >`); a new message follows the path's end, and a
reply's prompt is built from its own ancestors (chat/replies.py), so it is the path that was on
screen when it was asked for. Moving to another version shows the newest branch below it.

This module knows the shape of the tree only; the rules about who may change what are in
chat/actions.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from django.db.models import QuerySet

from chat.models import Conversation, Message


class Tree:
    """A conversation's messages, by id and by parent."""

    def __init__(self, messages: Iterable[Message]) -> None:
        self.by_id: dict[int, Message] = {}
        self.children: dict[int | None, list[int]] = defaultdict(list)
        for message in sorted(messages, key=lambda m: m.pk):
            self.by_id[message.pk] = message
            self.children[message.parent_id].append(message.pk)

    def versions(self, message: Message) -> list[int]:
        """The ids of `message` and its siblings, oldest first."""
        return self.children[message.parent_id]

    def newest_leaf(self, message_id: int) -> int:
        """The end of the newest branch below `message_id` (itself when nothing follows it)."""
        while self.children.get(message_id):
            message_id = self.children[message_id][-1]
        return message_id

    def path_to(self, message_id: int | None) -> list[Message]:
        """The messages from the first to `message_id`, in order ([] for None)."""
        path: list[Message] = []
        while message_id is not None and message_id in self.by_id and len(path) <= len(self.by_id):
            message = self.by_id[message_id]
            path.append(message)
            message_id = message.parent_id
        return path[::-1]

    def shown_leaf(self, conversation: Conversation) -> int | None:
        """The end of the path on screen: below `current` (the newest message when unset)."""
        if not self.by_id:
            return None
        start = conversation.current_id if conversation.current_id in self.by_id else max(self.by_id)
        return self.newest_leaf(start)

    def shown_path(self, conversation: Conversation) -> list[Message]:
        """The messages on screen, in order, each with `versions` (see `versions`)."""
        path = self.path_to(self.shown_leaf(conversation))
        for message in path:
            message.versions = self.versions(message)
        return path


def tree_of(
    conversation: Conversation, messages: QuerySet[Message] | None = None, *, fields: Sequence[str] | None = None
) -> Tree:
    """The conversation's tree, from `messages` (a queryset of its messages, with what to
    prefetch) or all of them; `fields`: load only those besides what the tree needs."""
    if messages is None:
        messages = conversation.messages.all()
    if fields is not None:
        # `conversation` too: the related manager reads it on every row, one query each if deferred.
        messages = messages.only("conversation", "parent", *fields)
    return Tree(messages)


def shown_path(conversation: Conversation, messages: QuerySet[Message] | None = None) -> list[Message]:
    """The messages on screen, in order, each with `versions` (see Tree.versions)."""
    return tree_of(conversation, messages).shown_path(conversation)


def versions(message: Message) -> list[int]:
    """The ids of `message` and its siblings, oldest first."""
    siblings = Message.objects.filter(conversation_id=message.conversation_id, parent_id=message.parent_id)
    return list(siblings.order_by("id").values_list("id", flat=True))


def add(conversation: Conversation, parent_id: int | None, *, shown: bool = True, **fields) -> Message:
    """A new message after `parent_id`, which ends the branch on screen from now on (`shown`;
    False where the caller adds the message that follows it at once, a reply: one save less on
    the way to a reply's first token)."""
    message = conversation.messages.create(parent_id=parent_id, **fields)
    if shown:
        conversation.current = message
        conversation.save(update_fields=["current", "updated_at"])
    return message


def append(conversation: Conversation, **fields) -> Message:
    """A new message at the end of the path on screen."""
    tree = tree_of(conversation, fields=())
    return add(conversation, tree.shown_leaf(conversation), **fields)


def add_tree(conversation: Conversation, messages: Sequence[Message], parents: Sequence[int | None],
             current: int | None = None) -> list[Message]:
    """Store `messages` (unsaved) in a few statements however many there are (imports, API
    histories): `parents[i]` is the index in `messages` of message i's parent, always an earlier
    one, or None; `current` the index of the message on screen (the last one when None)."""
    for message in messages:
        message.conversation = conversation
    saved = Message.objects.bulk_create(messages, batch_size=1000)
    for message, parent in zip(saved, parents):
        message.parent_id = saved[parent].pk if parent is not None else None
    Message.objects.bulk_update([m for m in saved if m.parent_id is not None], ["parent"], batch_size=1000)
    if saved:
        conversation.current = saved[current if current is not None else -1]
        conversation.save(update_fields=["current", "updated_at"])
    return saved
