from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0009_message_cached_tokens"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="error_code",
            field=models.CharField(blank=True, max_length=32),
        ),
        migrations.AddField(
            model_name="message",
            name="reserved_tokens",
            field=models.PositiveIntegerField(default=0),
        ),
    ]
