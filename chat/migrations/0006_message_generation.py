from django.db import migrations


class Migration(migrations.Migration):
    """`Message.sampling` held more than sampling (the plan's limits, an API request's system
    text and stops): it is now `generation`."""

    dependencies = [("chat", "0005_apikey")]

    operations = [migrations.RenameField("message", "sampling", "generation")]
