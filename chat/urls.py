from django.urls import path

from chat import views
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
    path("settings/api-keys/", api_views.api_keys, name="api_keys"),
    path("settings/api-keys/<int:key_id>/revoke/", api_views.api_key_revoke, name="api_key_revoke"),
    # The OpenAI-compatible API (docs/api.md): no trailing slash, as clients append the paths.
    path("v1/models", api_views.models, name="api_models"),
    path("v1/chat/completions", api_views.chat_completions, name="api_chat_completions"),
]
