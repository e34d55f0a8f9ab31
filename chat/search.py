"""Searching messages: the sidebar's search of a user's conversations and the admin's search of
everyone's messages.

On PostgreSQL both use full-text search (`websearch_to_tsquery` over `to_tsvector` of the
content, English stemming) backed by a GIN index on that same expression (migration
0011_message_search): "cooking" finds "cooked", and a search no longer scans every message.
Elsewhere (the embedded SQLite default) they fall back to `icontains`. Either way each result
carries a snippet of the first matching message as parts, [text, is_match], that the page writes
as text with the matches in <mark>: no HTML from the database reaches the page.
"""

import re

from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchVector
from django.db import connection
from django.db.models import OuterRef, Q, QuerySet, Subquery

from chat.inputs import check_text
from chat.models import Conversation, Message, User

CONFIG = "english"  # the text search configuration, as in the index
SEARCH_LIMIT = 20
SNIPPET_CHARS = 80
# Marks ts_headline puts around matches: private-use characters, which no text renders.
START, STOP = "\ue000", "\ue001"


def full_text() -> bool:
    return connection.vendor == "postgresql"


def search_vector() -> SearchVector:
    """The expression the GIN index is built on: a query must use exactly this to use it."""
    return SearchVector("content", config=CONFIG)


def messages_matching(messages: QuerySet[Message], query: str) -> QuerySet[Message]:
    """`messages` narrowed to those that match `query`."""
    if not full_text():
        return messages.filter(content__icontains=query)
    found = SearchQuery(query, config=CONFIG, search_type="websearch")
    return messages.annotate(search=search_vector()).filter(search=found)


def search_conversations(user: User, query: str) -> list[dict]:
    """The user's conversations whose title contains `query` or whose messages match it, newest
    first, each with the first matching message's id and snippet (none when only the title
    matched)."""
    query = check_text(query.strip(), "q")
    if not query:
        return []
    first_match = messages_matching(Message.objects.filter(conversation=OuterRef("pk")), query).order_by("id")
    conversations = list(
        Conversation.objects.filter(owner=user)
        .annotate(match=Subquery(first_match.values("pk")[:1]))
        .filter(Q(title__icontains=query) | Q(match__isnull=False))[:SEARCH_LIMIT]
    )
    snippets = snippets_of([c.match for c in conversations if c.match is not None], query)
    return [
        {
            "id": conversation.id,
            "title": conversation.title,
            "message_id": conversation.match,
            "snippet": snippets.get(conversation.match, []),
            "updated_at": conversation.updated_at.isoformat(),
        }
        for conversation in conversations
    ]


def snippets_of(message_ids: list[int], query: str) -> dict[int, list]:
    """Each message's snippet around its matches, as [text, is_match] parts (ts_headline's
    leaves out what looks like HTML tags: harmless, as the parts are shown as text anyway)."""
    messages = Message.objects.filter(pk__in=message_ids)
    if not full_text():
        return {pk: snippet(content, query) for pk, content in messages.values_list("pk", "content")}
    headline = SearchHeadline(
        "content",
        SearchQuery(query, config=CONFIG, search_type="websearch"),
        config=CONFIG,
        start_sel=START,
        stop_sel=STOP,
        max_words=14,
        min_words=6,
    )
    found = messages.annotate(headline=headline).values_list("pk", "headline")
    return {pk: parts(" ".join(text.split())) for pk, text in found}


def parts(marked: str) -> list:
    """ "a \ue000b\ue001 c" -> [["a ", False], ["b", True], [" c", False]]."""
    pieces = re.split(f"{START}(.*?){STOP}", marked)
    return [[text, bool(i % 2)] for i, text in enumerate(pieces) if text]


def snippet(text: str, query: str) -> list:
    """About SNIPPET_CHARS of `text` on one line around the first occurrence of `query`, marked
    (the icontains path: the match is the query itself)."""
    line = " ".join(text.split())
    found = re.search(re.escape(" ".join(query.split())), line, re.IGNORECASE)
    if found is None:
        return []
    start = max(0, found.start() - (SNIPPET_CHARS - len(found.group())) // 2)
    end = start + SNIPPET_CHARS
    before = ("…" if start > 0 else "") + line[start : found.start()]
    after = line[found.end() : end] + ("…" if end < len(line) else "")
    return [[piece, marked] for piece, marked in ((before, False), (found.group(), True), (after, False)) if piece]
