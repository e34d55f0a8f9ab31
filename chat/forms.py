from django.contrib.auth.forms import UserCreationForm

from chat.models import User


class SignupForm(UserCreationForm):
    """Django's sign-up form (username, email, password twice) for our own user model. The
    email is optional: it is only where a password reset link goes."""

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")
        help_texts = {"email": "Optional: where a link to reset a forgotten password goes."}
