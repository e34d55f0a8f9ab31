from django.db import migrations, models


class Migration(migrations.Migration):
    """Prompt tokens a reply reused from the engine's prefix cache (issue 12)."""

    dependencies = [("chat", "0008_subscription_cancelled")]

    operations = [
        migrations.AddField(
            model_name="message",
            name="cached_tokens",
            field=models.PositiveIntegerField(default=0),
        ),
    ]
