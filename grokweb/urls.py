from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from chat import views as chat_views

# Only the account pages the app offers: no password reset, since no mail is configured.
accounts = [
    path("signup/", chat_views.signup, name="signup"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path(
        "password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include(accounts)),
    path("", include("chat.urls")),
]
