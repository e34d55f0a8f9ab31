"""Seed the three plans and the Reviewer group. Staff tune both in the admin later."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

# (slug, name, description, messages/day, tokens/day, max new tokens, context, at once, personas)
PLANS = [
    ("free", "Free", "The Regular persona, short replies.", 50, 50_000, 512, 4096, 1, ["regular"]),
    (
        "premium", "Premium", "The Grok persona, longer replies and history.",
        500, 1_000_000, 1024, 8192, 2, ["grok", "regular"],
    ),
    (
        "premium-plus", "Premium+", "Ten times the daily messages of Premium, longest replies.",
        5000, 10_000_000, 2048, 8192, 4, ["grok", "regular"],
    ),
]

# What a reviewer may see; changing content or deleting stays with superusers.
REVIEWER_PERMISSIONS = [
    "view_conversation", "review_conversation", "export_conversation",
    "view_message", "view_feedback", "view_persona", "view_personaversion",
]


def seed(apps, schema_editor):
    Plan = apps.get_model("chat", "Plan")
    Persona = apps.get_model("chat", "Persona")
    for order, (slug, name, description, messages, tokens, new, context, at_once, personas) in (
        enumerate(PLANS)
    ):
        plan, created = Plan.objects.get_or_create(
            slug=slug,
            defaults={
                "name": name, "description": description, "sort_order": order,
                "messages_per_day": messages, "tokens_per_day": tokens, "max_new_tokens": new,
                "context_len": context, "max_concurrent": at_once,
            },
        )
        if created:
            plan.personas.set(Persona.objects.filter(slug__in=personas))

    # Permissions are normally created after all migrations; the group needs them now.
    app_config = apps.get_app_config("chat")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="Reviewer")
    group.permissions.add(
        *Permission.objects.filter(
            content_type__app_label="chat", codename__in=REVIEWER_PERMISSIONS
        )
    )


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0003_plans_billing_review"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
