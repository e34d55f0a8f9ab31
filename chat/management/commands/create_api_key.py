"""`python manage.py create_api_key USERNAME [--name NAME]`: print a new API key for a user."""

from django.core.management.base import BaseCommand, CommandError

from chat.errors import ChatError
from chat.api.keys import do_create_api_key
from chat.models import User


class Command(BaseCommand):
    help = "Create an API key for USERNAME and print it (only its hash is stored: keep it now)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line", help="what the key is for")

    def handle(self, *args, username: str, name: str, **options) -> None:
        user = User.objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        try:
            _, key = do_create_api_key(user, name)
        except ChatError as error:
            raise CommandError(error.message) from None
        self.stdout.write(key)
