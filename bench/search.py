"""Search at scale (chat/search.py): a PostgreSQL database of 1,000,000 messages over 10,000
users, and p50 / p95 of a user's sidebar search and of the admin's message search, first with
the icontains path and no full-text index (as before), then with full-text search and its GIN
index (migration 0011_message_search).

    python -m bench.search [--users 10000] [--conversations 10] [--messages 10] [--queries 200]

The database is its own (GROKWEB_BENCH_SEARCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/grokweb_bench_search), dropped and made afresh; the rows are
made by INSERT … SELECT over generate_series inside PostgreSQL, so building it takes seconds
per hundred thousand rows, not minutes. Message text is drawn from a small vocabulary of common
words (frequent terms) plus tokens "kw<n>" over a wide range (rare terms), with a hash of the
row as the "random" choice, so every run builds the same data.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATABASE_URL = os.environ.get(
    "GROKWEB_BENCH_SEARCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/grokweb_bench_search"
)
COMMON = (
    "time people year way day thing man world life hand part child eye woman place work week "
    "case point government company number group problem fact water money story month lot right "
    "study book job word business issue side kind head house service friend father power hour "
    "game line end member law car city community name president team minute idea kid body "
    "information back parent face others level office door health person art war history party "
    "result change morning reason research girl guy moment air teacher force education garden "
    "pasta recipe python function error database travel music weather coffee"
).split()
RARE = 50_000  # kw0 … kw49999


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def recreate_database() -> None:
    import psycopg

    server, name = DATABASE_URL.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{name}"')


def insert_select(model, given: dict[str, str], source: str, params: list | None = None) -> None:
    """INSERT INTO model's table … SELECT: `given` maps columns to SQL over `source` (with %%
    for a modulo, as it goes through parameter formatting); every other column gets its field's
    default, so columns added later need no change here."""
    from django.db import connection

    columns, values, args = list(given), list(given.values()), []
    for field in model._meta.concrete_fields:
        if field.primary_key or field.column in given:
            continue
        columns.append(field.column)
        values.append("%s")
        default = None if field.null and not field.has_default() else field.get_default()
        args.append(field.get_db_prep_save(default, connection))
    sql = f'INSERT INTO {model._meta.db_table} ({", ".join(columns)}) SELECT {", ".join(values)} {source}'
    with connection.cursor() as cursor:
        cursor.execute(sql, args + (params or []))


def build(users: int, conversations: int, messages: int) -> None:
    from django.db import connection

    from chat.models import Conversation, Message, Persona, User

    persona = Persona.objects.get(slug="grok").pk
    started = time.perf_counter()
    insert_select(
        User,
        {"username": "'u' || g", "password": "'!'", "date_joined": "now()"},
        "FROM generate_series(1, %s) g",
        [users],
    )
    insert_select(
        Conversation,
        {
            "owner_id": "u.id", "persona_id": str(int(persona)), "title": "'Chat ' || g || ' of ' || u.username",
            # distinct times, as real activity has: the admin orders by them
            "created_at": "now()", "updated_at": f"now() - (u.id * {int(conversations)} + g) * interval '1 minute'",
        },
        "FROM chat_user u, generate_series(1, %s) g",
        [conversations],
    )
    # Each message: 8-40 words, each a common word or (1 in 6) a rare kw<n>, chosen by a hash.
    words = "ARRAY[" + ",".join(f"'{w}'" for w in COMMON) + "]"
    text = (
        "(SELECT string_agg(CASE WHEN h %% 6 = 0 THEN 'kw' || (h / 6 %% {rare}) "
        "ELSE ({words})[1 + h %% {n}] END, ' ') "
        "FROM (SELECT hashtextextended(c.id || ':' || g || ':' || i, 0) & 9223372036854775807 AS h "
        "FROM generate_series(1, 8 + (c.id + g) %% 33) i) w)"
    ).format(rare=RARE, words=words, n=len(COMMON))
    insert_select(
        Message,
        {
            "conversation_id": "c.id",
            "role": "CASE WHEN g %% 2 = 1 THEN 'user' ELSE 'assistant' END",
            "content": text,
            "status": "'done'",
            "created_at": "now()",
            "updated_at": "now()",
        },
        "FROM chat_conversation c, generate_series(1, %s) g",
        [messages],
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
        cursor.execute("SELECT count(*) FROM chat_message")
        (count,) = cursor.fetchone()
    print(f"built {users} users, {users * conversations} conversations, {count} messages "
          f"in {time.perf_counter() - started:.0f} s")


def set_index(present: bool) -> None:
    import importlib

    from django.db import connection

    migration = importlib.import_module("chat.migrations.0011_message_search")
    started = time.perf_counter()
    with connection.schema_editor() as editor:
        (migration.create_index if present else migration.drop_index)(None, editor)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE chat_message")
    if present:
        print(f"GIN index built in {time.perf_counter() - started:.0f} s")


def timed(calls) -> list[float]:
    samples = []
    for call in calls:
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def measure(label: str, users: int, queries: int, admin_queries: int) -> dict:
    from chat import search
    from chat.models import Message, User

    rng = random.Random(7)  # the same users and terms for both runs
    ids = list(User.objects.order_by("id").values_list("id", flat=True)[:users])
    terms = [rng.choice(COMMON) if rng.random() < 0.5 else f"kw{rng.randrange(RARE)}" for _ in range(queries)]
    people = [User(pk=rng.choice(ids)) for _ in range(queries)]
    user_ms = timed(lambda u=u, t=t: search.search_conversations(u, t) for u, t in zip(people, terms))

    # The admin's message list: its count and first page, in its order (chat/admin.py MessageAdmin).
    admin_terms = [rng.choice(COMMON) if i % 2 else f"kw{rng.randrange(RARE)}" for i in range(admin_queries)]

    def admin_search(term: str) -> None:
        found = search.messages_matching(Message.objects.all(), term)
        found.count()
        list(found[:100])

    admin_ms = timed(lambda t=t: admin_search(t) for t in admin_terms)
    result = {
        "label": label,
        "user_p50": percentile(user_ms, 50), "user_p95": percentile(user_ms, 95),
        "admin_p50": percentile(admin_ms, 50), "admin_p95": percentile(admin_ms, 95),
    }
    print(f"{label}: user search p50 {result['user_p50']:.1f} ms, p95 {result['user_p95']:.1f} ms "
          f"({queries} queries); admin search p50 {result['admin_p50']:.1f} ms, "
          f"p95 {result['admin_p95']:.1f} ms ({admin_queries} queries)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--conversations", type=int, default=10, help="per user")
    parser.add_argument("--messages", type=int, default=10, help="per conversation")
    parser.add_argument("--queries", type=int, default=200, help="user searches per run")
    parser.add_argument("--admin-queries", type=int, default=20)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    recreate_database()
    os.environ.update(DATABASE_URL=DATABASE_URL, DJANGO_SETTINGS_MODULE="grokweb.settings.base")
    import django

    django.setup()
    from django.core.management import call_command

    from chat import search

    call_command("migrate", verbosity=0)
    build(args.users, args.conversations, args.messages)

    set_index(False)
    real_full_text = search.full_text
    search.full_text = lambda: False  # the icontains path, as before full-text search
    before = measure("before (icontains, no index)", args.users, args.queries, args.admin_queries)
    search.full_text = real_full_text
    set_index(True)
    after = measure("after (full text, GIN index)", args.users, args.queries, args.admin_queries)
    print(f"user search p95: {before['user_p95']:.1f} ms -> {after['user_p95']:.1f} ms; "
          f"admin search p95: {before['admin_p95']:.1f} ms -> {after['admin_p95']:.1f} ms")


if __name__ == "__main__":
    main()
