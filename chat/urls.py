from django.urls import path, re_path

from chat import settings_views, views
from chat.api import views as api_views

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("c/<int:conversation_id>/", views.chat_page, name="conversation"),
    path("c/<int:conversation_id>/rename/", views.conversation_rename, name="conversation_rename"),
    path("c/<int:conversation_id>/delete/", views.conversation_delete, name="conversation_delete"),
    path("conversations/search/", views.conversation_search, name="conversation_search"),
    path("messages/<int:message_id>/feedback/", views.message_feedback, name="message_feedback"),
    path("billing/webhook/", views.billing_webhook, name="billing_webhook"),
    path("staff/usage/", views.staff_usage, name="staff_usage"),
    path("c/<int:conversation_id>/share/", settings_views.share_create, name="conversation_share"),
    path("s/<str:token>/", settings_views.shared_page, name="shared"),
    path("settings/", settings_views.settings_page, name="settings"),
    path("settings/instructions/", settings_views.instructions_save, name="instructions_save"),
    path("settings/shares/<int:share_id>/revoke/", settings_views.share_revoke, name="share_revoke"),
    path("settings/export/", settings_views.export_download, name="export_download"),
    path("settings/import/", settings_views.import_upload, name="import_upload"),
    path("settings/delete/", settings_views.account_delete, name="account_delete"),
    path("settings/plan-status/", settings_views.plan_status, name="plan_status"),
    path("settings/api-keys/", api_views.api_keys, name="api_keys"),
    path("settings/api-keys/<int:key_id>/revoke/", api_views.api_key_revoke, name="api_key_revoke"),
    # The OpenAI-compatible API (docs/api.md): no trailing slash, as clients append the paths.
    path("v1/models", api_views.models, name="api_models"),
    path("v1/chat/completions", api_views.chat_completions, name="api_chat_completions"),
    path("v1/models/<str:model_id>", api_views.model, name="api_model"),
    re_path(r"^v1(?:/|$)", api_views.unknown_path),  # last: what no route above answers
]
