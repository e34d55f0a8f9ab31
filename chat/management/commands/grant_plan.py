"""`python manage.py grant_plan USERNAME PLAN_SLUG [--days N]`: put a user on a plan by hand."""

from django.core.management.base import BaseCommand, CommandError

from chat.billing import do_grant_plan
from chat.models import Plan, User


class Command(BaseCommand):
    help = "Put USERNAME on the plan PLAN_SLUG, active for --days days or with no end."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("plan_slug")
        parser.add_argument("--days", type=int, help="days until it lapses (default: never)")

    def handle(self, *args, username: str, plan_slug: str, days: int | None, **options) -> None:
        if days is not None and days < 1:
            raise CommandError("--days must be at least 1.")
        user = User.objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        plan = Plan.objects.filter(slug=plan_slug).first()
        if plan is None:
            slugs = ", ".join(Plan.objects.values_list("slug", flat=True))
            raise CommandError(f"No plan {plan_slug!r}; plans: {slugs}.")
        subscription = do_grant_plan(user, plan, days=days)
        until = subscription.current_period_end
        ending = f"until {until.isoformat()}." if until else "with no end."
        self.stdout.write(f"{username} is on {plan.name} {ending}")
