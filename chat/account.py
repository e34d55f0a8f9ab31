"""A user's own settings and data: custom instructions, export, import, and deleting the account.

Custom instructions are the user's text added after the persona's in every reply's prompt (as
Grok's own "customize" setting); the plan bounds their length (`Plan.instructions_chars`).

Export is one zip: `conversations.json` (every conversation with every version of its messages,
each naming its parent, so the file holds the tree of branches) and one Markdown file per
conversation, of the branch on screen. Import takes that zip (or its `conversations.json`) back,
or ChatGPT's export (its zip or `conversations.json`, whose tree becomes branches):
the file is read, bounded and validated whole before anything is written, and written in one
transaction, so a bad file changes nothing.

Deleting the account deletes everything of the user's; the usage ledger stays, anonymised
(`UsageEntry.user` is set to NULL), because billing and the staff's reports count it, and so do
the billing webhook's events, with the username blanked out of their payloads.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from chat import branches, jobs, plans
from chat.actions import get_persona
from chat.errors import ChatError
from chat.models import BillingEvent, Conversation, Message, Persona, User

EXPORT_FORMAT = "grokweb"
EXPORT_VERSION = 1
IMPORT_MAX_CONVERSATIONS = 1000
IMPORT_MAX_MESSAGES = 2000  # per conversation
IMPORT_MAX_TOTAL_MESSAGES = 100_000  # in one file: what one request may write
IMPORT_MAX_MESSAGE_CHARS = 100_000
TITLE_CHARS = Conversation._meta.get_field("title").max_length


# --- custom instructions --------------------------------------------------------------------


def check_instructions(user: User, text: object) -> str:
    """The instructions to save: a string within the user's plan's bound, stripped."""
    if not isinstance(text, str):
        raise ChatError("bad_frame", "Instructions must be text.")
    text = text.strip()
    limit = plans.current_plan(user).instructions_chars
    if len(text) > limit:
        raise ChatError(
            "too_large", f"Your plan allows custom instructions of up to {limit} characters."
        )
    return text


def do_set_instructions(user: User, text: object) -> str:
    user.custom_instructions = check_instructions(user, text)
    user.save(update_fields=["custom_instructions"])
    return user.custom_instructions


def instructions_for(user: User) -> str:
    """What goes into the prompt: the saved text, cut to the current plan's bound (a user who
    moved to a smaller plan keeps their text but the model sees only what the plan allows)."""
    if not user.custom_instructions:  # most users: no plan to look up on the way to a reply
        return ""
    return user.custom_instructions[: plans.current_plan(user).instructions_chars].strip()


# --- export ---------------------------------------------------------------------------------


def export_data(user: User) -> dict:
    """Every conversation of the user's with every version of its messages (chat/branches.py),
    oldest first: each message names its parent and `current_id` the end of the branch on
    screen, so the tree survives a round trip."""
    conversations = []
    for conversation in user.conversations.select_related("persona").prefetch_related("messages").order_by("id"):
        messages = [
            {
                "id": message.id,
                "parent_id": message.parent_id,
                "role": message.role,
                "content": message.content,
                "status": message.status,
                "created_at": message.created_at.isoformat(),
            }
            for message in conversation.messages.all()  # in id order: parents first
        ]
        shown = branches.Tree(conversation.messages.all()).shown_leaf(conversation)
        conversations.append(
            {
                "id": conversation.id,
                "title": conversation.title,
                "persona": conversation.persona.slug,
                "source": conversation.source,
                "created_at": conversation.created_at.isoformat(),
                "updated_at": conversation.updated_at.isoformat(),
                "current_id": shown,
                "messages": messages,
            }
        )
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exported_at": timezone.now().isoformat(),
        "conversations": conversations,
    }


def markdown(conversation: dict, assistant_name: str) -> str:
    """The branch on screen, as a transcript (the other versions are in conversations.json)."""
    names = {"user": "User", "assistant": assistant_name}
    by_id = {m["id"]: m for m in conversation["messages"]}
    path, message_id = [], conversation["current_id"]
    while message_id is not None:
        path.append(by_id[message_id])
        message_id = by_id[message_id]["parent_id"]
    parts = [f"# {conversation['title']}"]
    parts += [f"**{names[m['role']]}:**\n\n{m['content']}" for m in reversed(path)]
    return "\n\n".join(parts) + "\n"


def export_zip(user: User) -> bytes:
    """The zip the settings page offers: conversations.json and markdown/<id>-<title>.md."""
    data = export_data(user)
    names = dict(Persona.objects.values_list("slug", "name"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("conversations.json", json.dumps(data, ensure_ascii=False, indent=1))
        for conversation in data["conversations"]:
            name = f"markdown/{conversation['id']}-{slugify(conversation['title'])[:50] or 'chat'}.md"
            archive.writestr(name, markdown(conversation, names.get(conversation["persona"], "Grok")))
    return buffer.getvalue()


# --- import ---------------------------------------------------------------------------------


@dataclass
class Imported:
    title: str
    persona: str | None  # a persona slug, when the file names one
    turns: list[tuple[str, str]]  # (role, content), parents before children
    parents: list[int | None]  # the index in `turns` of each one's parent (None: a first message)
    current: int | None = None  # the index of the message on screen (None: the last one)


def bad_import(message: str) -> ChatError:
    return ChatError("bad_import", message)


def read_upload(data: bytes) -> object:
    """The JSON in an uploaded file: the file itself, or the conversations.json of a zip."""
    limit = settings.GROKWEB_IMPORT_MAX_BYTES
    if len(data) > limit:
        raise ChatError("too_large", f"The file is larger than {limit // 2**20} MiB.")
    if zipfile.is_zipfile(io.BytesIO(data)):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                member = next(
                    (i for i in archive.infolist() if i.filename.rsplit("/", 1)[-1] == "conversations.json"),
                    None,
                )
                if member is None:
                    raise bad_import("The zip holds no conversations.json.")
                # The size the zip declares, checked before inflating: no zip bomb gets read.
                if member.file_size > limit:
                    raise ChatError("too_large", f"conversations.json is larger than {limit // 2**20} MiB.")
                data = archive.read(member)
        except (zipfile.BadZipFile, OSError, EOFError):
            raise bad_import("The zip file is damaged.") from None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise bad_import("The file is neither a zip nor JSON.") from None


def parse_grokweb(data: dict) -> list[Imported]:
    """Our own export (export_data): each message's parent must come before it in the file."""
    if data.get("version") != EXPORT_VERSION or not isinstance(data.get("conversations"), list):
        raise bad_import("This grokweb export has an unknown version or no conversations.")
    found = []
    for number, conversation in enumerate(data["conversations"], 1):
        if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
            raise bad_import(f"Conversation {number} has no list of messages.")
        imported = Imported(conversation.get("title"), conversation.get("persona"), [], [])
        index: dict[object, int] = {}  # a message's id in the file -> its place in `turns`
        for message in conversation["messages"]:
            if not isinstance(message, dict) or message.get("role") not in Message.Role.values:
                raise bad_import(f"Conversation {number} has a message without a known role.")
            parent = message.get("parent_id")
            if parent is not None and not (_is_key(parent) and parent in index):
                raise bad_import(f"Conversation {number} has a message whose parent does not come before it.")
            if _is_key(message.get("id")):
                index[message["id"]] = len(imported.turns)
            imported.parents.append(index[parent] if parent is not None else None)
            imported.turns.append((message["role"], message.get("content")))
        current = conversation.get("current_id")
        imported.current = index.get(current) if _is_key(current) else None
        found.append(imported)
    return found


def _is_key(value: object) -> bool:
    """An id a file may use for its messages (bool is no id, and unhashable JSON is none)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def chatgpt_text(message: dict) -> str:
    """The text of one ChatGPT message: its string parts (images and files are left out)."""
    content = message.get("content") or {}
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return ""
    return "\n".join(part for part in parts if isinstance(part, str)).strip()


def parse_chatgpt(data: list) -> list[Imported]:
    """ChatGPT's conversations.json: a list of conversations, each a `mapping` tree of nodes
    ({id: {"message", "parent", "children"}}), which becomes our tree of branches with
    `current_node` (the version the user last saw) on screen. System and tool messages and
    empty ones are left out: what followed one follows its nearest kept ancestor."""
    found = []
    for number, conversation in enumerate(data, 1):
        mapping = conversation.get("mapping") if isinstance(conversation, dict) else None
        if not isinstance(mapping, dict):
            raise bad_import(f"Conversation {number} is not a ChatGPT conversation (no mapping).")
        for node in mapping.values():
            if not isinstance(node, dict):
                raise bad_import(f"Conversation {number} has a message that is not an object.")
            parent = node.get("parent")
            if parent is not None and not (isinstance(parent, str) and isinstance(mapping.get(parent), dict)):
                raise bad_import(f"Conversation {number} refers to a message that is not in it.")
        imported = Imported(conversation.get("title"), None, [], [])
        kept: dict[str, int | None] = {}  # node id -> the index of it or of its nearest kept ancestor
        # Parents before children, siblings in the file's order; a node in a cycle has no root
        # above it, so it is never reached.
        children: dict[str | None, list[str]] = {}
        for node_id, node in mapping.items():
            children.setdefault(node.get("parent"), []).append(node_id)
        stack = list(reversed(children.get(None, [])))
        while stack:
            node_id = stack.pop()
            node = mapping[node_id]
            above = kept[node["parent"]] if node.get("parent") is not None else None
            message = node.get("message")
            role = (message.get("author") or {}).get("role") if isinstance(message, dict) else None
            text = chatgpt_text(message) if isinstance(message, dict) else ""
            if role in Message.Role.values and text:
                kept[node_id] = len(imported.turns)
                imported.turns.append((role, text))
                imported.parents.append(above)
            else:
                kept[node_id] = above
            stack.extend(reversed(children.get(node_id, [])))
        imported.current = kept.get(conversation.get("current_node")) if isinstance(conversation.get("current_node"), str) else None
        found.append(imported)
    return found


def check_import(data: object) -> list[Imported]:
    """The conversations in a parsed file, validated and bounded; ChatError otherwise."""
    if isinstance(data, dict) and data.get("format") == EXPORT_FORMAT:
        found = parse_grokweb(data)
    elif isinstance(data, list):
        found = parse_chatgpt(data)
    else:
        raise bad_import("This is neither a grokweb export nor ChatGPT's conversations.json.")
    if not found:
        raise bad_import("The file holds no conversations.")
    if len(found) > IMPORT_MAX_CONVERSATIONS:
        raise bad_import(f"The file holds more than {IMPORT_MAX_CONVERSATIONS} conversations.")
    if sum(len(conversation.turns) for conversation in found) > IMPORT_MAX_TOTAL_MESSAGES:
        raise bad_import(f"The file holds more than {IMPORT_MAX_TOTAL_MESSAGES} messages.")
    for number, conversation in enumerate(found, 1):
        if len(conversation.turns) > IMPORT_MAX_MESSAGES:
            raise bad_import(f"Conversation {number} has more than {IMPORT_MAX_MESSAGES} messages.")
        for _, content in conversation.turns:
            if not isinstance(content, str) or len(content) > IMPORT_MAX_MESSAGE_CHARS:
                raise bad_import(
                    f"Conversation {number} has a message that is not text or is longer than "
                    f"{IMPORT_MAX_MESSAGE_CHARS} characters."
                )
        title = " ".join(conversation.title.split()) if isinstance(conversation.title, str) else ""
        conversation.title = title[:TITLE_CHARS] or "Imported chat"
    return found


@transaction.atomic
def do_import(user: User, data: bytes) -> int:
    """Add the conversations of an uploaded file (see check_import) to the user's; how many.
    All of them or, on any error, none."""
    found = check_import(read_upload(data))
    default = get_persona(user, None)
    personas = {p.slug: p for p in Persona.objects.all()}
    for imported in found:
        conversation = Conversation.objects.create(
            owner=user, title=imported.title, persona=personas.get(imported.persona, default)
        )
        branches.add_tree(
            conversation,
            [Message(role=role, content=content) for role, content in imported.turns],
            imported.parents,
            imported.current,
        )
    return len(found)


# --- deleting the account -------------------------------------------------------------------


@transaction.atomic
def do_delete_account(user: User, password: object) -> None:
    """Delete the user and everything of theirs, once they confirm with their password. Replies
    being written are cancelled, so their worker slots free; the usage ledger and the billing
    events stay, anonymised."""
    if not isinstance(password, str) or not user.check_password(password):
        raise ChatError("bad_password", "That is not your password: nothing was deleted.")
    active = list(
        Message.objects.filter(
            conversation__owner=user, role=Message.Role.ASSISTANT, status__in=Message.ACTIVE_STATUSES
        ).values_list("pk", flat=True)
    )
    for event in BillingEvent.objects.filter(payload__data__username=user.username):
        event.payload["data"]["username"] = ""
        event.save(update_fields=["payload"])
    user.delete()  # UsageEntry.user is SET_NULL: the ledger's rows stay
    for reply_id in active:
        transaction.on_commit(lambda reply_id=reply_id: jobs.cancel(reply_id))
