"""The chat's domain rules. Views and consumers stay thin and call these.

`check_*` functions raise `ChatError` when a rule is broken; `do_*` functions change the database
and return what they changed. Error codes are those of docs/protocol.md. Another user's
conversation or message is always `not_found`, so ids reveal nothing about who owns what.

Errors live in `chat.errors`, so the modules these rules use (`plans`, `jobs`) never import this
one back.
"""

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chat import branches, jobs, plans
from chat.errors import ChatError
from chat.inputs import check_text
from chat.models import Conversation, Message, Persona, User

TITLE_CHARS = 60
ACTIVITY = ("role", "status")  # what of a tree's messages `check_no_active_reply` reads


# --- checks ---------------------------------------------------------------------------------


def check_content(content: object) -> str:
    """The message text to save: a non-empty string within the size limit, stripped."""
    if not isinstance(content, str) or not content.strip():
        raise ChatError("bad_frame", "A message needs some text.")
    content = content.strip()
    limit = settings.GROKWEB_MAX_MESSAGE_CHARS
    if len(content) > limit:
        raise ChatError("too_large", f"A message can be at most {limit} characters long.")
    return content


def check_persona_active(persona: Persona) -> None:
    """A conversation goes on only with an active persona. Whether the plan includes it is
    checked with the quota (`plans.check_can_generate`), so the plan is looked up once."""
    if not persona.is_active:
        raise ChatError("not_found", "That persona is not available.")


def check_persona_allowed(user: User, persona: Persona) -> None:
    """Active personas only, and only those the user's plan includes (`quota` otherwise)."""
    check_persona_active(persona)
    plans.check_persona_in_plan(plans.current_plan(user), persona)


def check_no_active_reply(tree: branches.Tree) -> None:
    """One reply at a time per conversation: the page stops the running one first. From the
    conversation's tree (loaded with `role` and `status`), which the caller reads anyway."""
    if any(m.role == Message.Role.ASSISTANT and m.is_active for m in tree.by_id.values()):
        raise ChatError("conflict", "Wait for the current reply to finish, or stop it.")


# --- lookups --------------------------------------------------------------------------------


def get_conversation(user: User, conversation_id: int, *, lock: bool = False) -> Conversation:
    """The user's conversation; `lock` holds its row so concurrent sends queue up behind it."""
    conversations = Conversation.objects.filter(owner=user)
    if lock:  # of=self: the joined persona row stays unlocked, shared by everyone's chats
        conversations = conversations.select_for_update(of=("self",))
    try:
        return conversations.select_related("persona").get(pk=conversation_id)
    except (Conversation.DoesNotExist, ValueError, TypeError):
        raise ChatError("not_found", "No such conversation.") from None


def get_message(user: User, message_id: int) -> Message:
    try:
        return Message.objects.select_related("conversation").get(
            pk=message_id, conversation__owner=user
        )
    except (Message.DoesNotExist, ValueError, TypeError):
        raise ChatError("not_found", "No such message.") from None


def active_persona(slug: str) -> Persona:
    """The active persona named `slug`; whether the user's plan includes it is the caller's to
    check (`check_persona_allowed`, or the quota check of a reply)."""
    try:
        return Persona.objects.get(is_active=True, slug=slug)
    except Persona.DoesNotExist:
        raise ChatError("not_found", "That persona is not available.") from None


def get_persona(user: User, slug: str | None) -> Persona:
    """The persona named by `slug`, or the first one on the list the user may use when no slug
    is given; one the user's plan includes (`quota` otherwise)."""
    if slug:
        persona = active_persona(slug)
        check_persona_allowed(user, persona)
        return persona
    persona = plans.current_plan(user).personas.filter(is_active=True).first()  # in list order
    if persona is None:
        raise ChatError("not_found", "That persona is not available.")
    return persona


def personas_for(user: User) -> list[Persona]:
    """Active personas, each with `allowed` telling whether this user may chat with it."""
    personas = list(Persona.objects.filter(is_active=True))
    included = set(plans.current_plan(user).personas.values_list("pk", flat=True))  # two queries, not two a persona
    for persona in personas:
        persona.allowed = persona.pk in included
    return personas


def title_from(content: str) -> str:
    """A one-line title from the first message: its first words, cut at TITLE_CHARS."""
    line = " ".join(content.split())
    if len(line) <= TITLE_CHARS:
        return line
    return line[: TITLE_CHARS - 1].rstrip() + "…"


# --- changes --------------------------------------------------------------------------------


def do_queue_reply(
    conversation: Conversation, limits: plans.Limits, generation: dict | None = None, *, parent: Message
) -> Message:
    """A new queued reply to `parent`, carrying its plan's limits (the worker reads
    `generation`), plus what `generation` adds (the API's stops, sampling and system text:
    chat/api/requests.py); the job goes out only once the transaction is committed, so the
    worker never picks up a message it cannot see yet. It ends the branch on screen, which
    moves the conversation to the top of the sidebar."""
    reply = branches.add(
        conversation,
        parent.pk,
        role=Message.Role.ASSISTANT,
        status=Message.Status.QUEUED,
        generation=limits.generation | (generation or {}),
        reserved_tokens=limits.reserved_tokens,
    )
    transaction.on_commit(lambda: jobs.enqueue(reply.id, conversation.id))
    return reply


@transaction.atomic
def do_send_message(
    user: User, *, conversation_id: int | None, content: str, persona_slug: str | None
) -> tuple[Message, Message]:
    """Save the user's message at the end of the branch on screen and queue a reply; a new
    conversation when `conversation_id` is None, with `persona_slug`'s persona and a title
    taken from the message. Both come back with their `versions`, for the page."""
    content = check_content(content)
    if conversation_id is None:
        # The plan's say on the persona comes with the quota, below: looked up once.
        persona = active_persona(persona_slug) if persona_slug else get_persona(user, None)
        conversation = Conversation.objects.create(
            owner=user, persona=persona, title=title_from(content)
        )
        parent = None  # a new conversation's first message follows nothing
    else:
        conversation = get_conversation(user, conversation_id, lock=True)
        check_persona_active(conversation.persona)
        tree = branches.tree_of(conversation, fields=ACTIVITY)
        check_no_active_reply(tree)
        parent = tree.shown_leaf(conversation)  # the end of the branch on screen
    limits = plans.check_can_generate(user, conversation.persona)
    # shown=False: its reply, queued next, ends the branch on screen.
    message = branches.add(conversation, parent, role=Message.Role.USER, content=content, shown=False)
    reply = do_queue_reply(conversation, limits, parent=message)
    # Each ends the branch it starts (the end of a path has nothing after it): no siblings.
    message.versions, reply.versions = [message.pk], [reply.pk]
    return message, reply


@transaction.atomic
def do_stop(user: User, message_id: int) -> Message:
    """End a queued or streaming reply. A queued one is stopped here, as no worker holds it; a
    streaming one is stopped by its worker, which keeps the text written so far. Stopping a
    finished reply changes nothing, since the stop and the end of the reply may cross."""
    reply = get_message(user, message_id)
    if reply.role != Message.Role.ASSISTANT:
        raise ChatError("not_found", "No such reply.")
    if not reply.is_active:
        return reply
    # Conditional, because a worker may be taking the job at this very moment.
    Message.objects.filter(pk=reply.pk, status=Message.Status.QUEUED).update(
        status=Message.Status.STOPPED, finish_reason="cancelled", updated_at=timezone.now()
    )
    transaction.on_commit(lambda: jobs.cancel(reply.id))
    reply.refresh_from_db()
    return reply


@transaction.atomic
def do_regenerate(user: User, conversation_id: int) -> tuple[Message, Message]:
    """Write the last reply on screen again, as a new version of it (the old one is kept);
    returns (the user message it answers, the new reply), each with its `versions`."""
    conversation = get_conversation(user, conversation_id, lock=True)
    check_persona_active(conversation.persona)
    tree = branches.tree_of(conversation)
    check_no_active_reply(tree)
    path = tree.shown_path(conversation)
    message = next((m for m in reversed(path) if m.role == Message.Role.USER), None)
    if message is None:
        raise ChatError("conflict", "There is no message to answer yet.")
    limits = plans.check_can_generate(user, conversation.persona)
    reply = do_queue_reply(conversation, limits, parent=message)
    reply.versions = branches.versions(reply)  # message.versions: from the path
    return message, reply


@transaction.atomic
def do_edit_message(user: User, message_id: int, content: str) -> tuple[Message, Message]:
    """Save an edit of one of the user's messages as a new version of it (the old one and what
    followed it are kept, a version away) and queue a reply to it; both with their `versions`."""
    content = check_content(content)
    message = get_message(user, message_id)
    if message.role != Message.Role.USER:
        raise ChatError("not_found", "No such message.")
    conversation = get_conversation(user, message.conversation_id, lock=True)
    check_persona_active(conversation.persona)
    check_no_active_reply(branches.tree_of(conversation, fields=ACTIVITY))
    limits = plans.check_can_generate(user, conversation.persona)
    edited = branches.add(conversation, message.parent_id, role=Message.Role.USER, content=content, shown=False)
    reply = do_queue_reply(conversation, limits, parent=edited)
    edited.versions, reply.versions = branches.versions(edited), [reply.pk]
    return edited, reply


@transaction.atomic
def do_switch_version(user: User, message_id: int) -> tuple[Conversation, list[Message]]:
    """Put the newest branch below one of the user's messages on screen (a `< 2/3 >` click, or
    a search result off the branch shown); returns the conversation and its new path. Refused
    while a reply is being written, which would leave the screen."""
    message = get_message(user, message_id)
    conversation = get_conversation(user, message.conversation_id, lock=True)
    tree = branches.tree_of(conversation, conversation.messages.prefetch_related("feedback"))
    check_no_active_reply(tree)
    conversation.current_id = tree.newest_leaf(message.pk)
    conversation.save(update_fields=["current"])  # not updated_at: looking is not a change
    return conversation, tree.shown_path(conversation)


def do_rename_conversation(user: User, conversation_id: int, title: str) -> Conversation:
    conversation = get_conversation(user, conversation_id)
    title = check_text(" ".join(title.split()), "title") if isinstance(title, str) else ""
    max_length = Conversation._meta.get_field("title").max_length
    if not title or len(title) > max_length:
        raise ChatError("bad_frame", f"A title needs 1 to {max_length} characters.")
    conversation.title = title
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


@transaction.atomic
def do_delete_conversation(user: User, conversation_id: int) -> None:
    """Delete a conversation; a reply still being written is cancelled so its worker slot frees."""
    conversation = get_conversation(user, conversation_id, lock=True)
    reply = conversation.active_reply()
    conversation.delete()
    if reply is not None:
        transaction.on_commit(lambda: jobs.cancel(reply.id))
