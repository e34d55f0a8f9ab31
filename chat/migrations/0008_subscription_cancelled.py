from django.db import migrations, models


def respell(apps, schema_editor, old: str, new: str) -> None:
    apps.get_model("chat", "Subscription").objects.filter(status=old).update(status=new)


class Migration(migrations.Migration):
    """One spelling for one concept: a subscription ends `cancelled`, as a reply does."""

    dependencies = [("chat", "0007_account_sharing")]

    operations = [
        migrations.AlterField(
            model_name="subscription",
            name="status",
            field=models.CharField(
                choices=[("active", "Active"), ("past_due", "Past Due"), ("cancelled", "Cancelled")],
                default="active",
                max_length=16,
            ),
        ),
        migrations.RunPython(
            lambda apps, editor: respell(apps, editor, "canceled", "cancelled"),
            lambda apps, editor: respell(apps, editor, "cancelled", "canceled"),
        ),
    ]
