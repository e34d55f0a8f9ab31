from django.contrib.auth.forms import UserCreationForm

from chat.models import User


class SignupForm(UserCreationForm):
    """Django's sign-up form (username and password twice) for our own user model."""

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username",)
