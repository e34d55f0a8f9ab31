"""A GIN index for full-text search of messages (chat/search.py), on PostgreSQL only: SQLite
has no such index and searches with icontains. The expression is exactly the one
chat.search.search_vector() compiles to, or the planner would not use the index.

The larger statistics target keeps ten times more of the commonest words in the expression's
statistics, so a rare word's match count is estimated near its true value: with the default, a
rare word looks like thousands of matches and the admin's "first page in id order" walks the
primary key computing to_tsvector for every message (tens of seconds over 1M messages, not a
millisecond; bench/search.py)."""

from django.db import migrations

INDEX = "chat_message_content_search"


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {INDEX} ON chat_message "
            "USING gin (to_tsvector('english'::regconfig, COALESCE(content, '')))"
        )
        schema_editor.execute(f"ALTER INDEX {INDEX} ALTER COLUMN 1 SET STATISTICS 1000")


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("chat", "0010_message_error_code_reserved_tokens")]

    operations = [migrations.RunPython(create_index, drop_index, elidable=False)]
