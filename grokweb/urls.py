from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from chat import operations
from chat import views as chat_views

# The account pages: Django's own views, with our templates under templates/registration/.
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
    path("password_reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
    path(
        "password_reset/done/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "reset/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
]

handler500 = "chat.api.views.server_error"  # JSON under /v1

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include(accounts)),
    # For load balancers, probes and Prometheus (chat/operations.py), without a trailing slash.
    path("healthz", operations.healthz, name="healthz"),
    path("readyz", operations.readyz, name="readyz"),
    path("metrics", operations.metrics_view, name="metrics"),
    path("", include("chat.urls")),
]
