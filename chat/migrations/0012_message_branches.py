"""Branches (chat/branches.py): every message names the one it follows, and a conversation the
end of the branch on screen. Conversations so far are single paths: each message follows the
one before it, and the newest is on screen. Plain SQL (the same on SQLite and PostgreSQL), so a
large database is updated in two statements rather than row by row."""

import django.db.models.deletion
from django.db import migrations, models

LINK_MESSAGES = """
UPDATE chat_message SET parent_id = (
    SELECT MAX(earlier.id) FROM chat_message AS earlier
    WHERE earlier.conversation_id = chat_message.conversation_id AND earlier.id < chat_message.id
)
"""
SHOW_NEWEST = """
UPDATE chat_conversation SET current_id = (
    SELECT MAX(m.id) FROM chat_message AS m WHERE m.conversation_id = chat_conversation.id
)
"""


class Migration(migrations.Migration):
    dependencies = [("chat", "0011_message_search")]

    operations = [
        migrations.AddField(
            model_name="message",
            name="parent",
            field=models.ForeignKey(
                blank=True, null=True, on_delete=django.db.models.deletion.CASCADE,
                related_name="children", to="chat.message",
            ),
        ),
        migrations.AddField(
            model_name="conversation",
            name="current",
            field=models.ForeignKey(
                blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL,
                related_name="+", to="chat.message",
            ),
        ),
        migrations.RunSQL(LINK_MESSAGES, migrations.RunSQL.noop),
        migrations.RunSQL(SHOW_NEWEST, migrations.RunSQL.noop),
    ]
