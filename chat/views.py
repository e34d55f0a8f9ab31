"""Pages and the small JSON endpoints of the sidebar. The rules live in chat.actions."""

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from django_ratelimit.decorators import ratelimit

from chat import actions, billing, branches, plans, review, search
from chat.errors import ChatError
from chat.forms import SignupForm
from chat.inputs import parse_json

ERROR_STATUS = {"not_found": 404, "conflict": 409, "too_large": 413}
MAX_POSTED_BYTES = 64 * 1024  # a title or a feedback comment


def error_response(error: ChatError) -> JsonResponse:
    body = {"error": {"code": error.code, "message": error.message, **error.extra}}
    return JsonResponse(body, status=ERROR_STATUS.get(error.code, 400))


def posted_data(request: HttpRequest) -> dict:
    """The POSTed fields: a JSON object from the page's fetch, or a form."""
    if request.content_type != "application/json":
        return request.POST
    data = parse_json(request.body, max_bytes=MAX_POSTED_BYTES)
    if not isinstance(data, dict):
        raise ChatError("bad_json", "The body is not a JSON object.")
    return data


@login_required
@require_GET
def chat_page(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    conversation = None
    if conversation_id is not None:
        try:
            conversation = actions.get_conversation(request.user, conversation_id)
        except ChatError as error:
            raise Http404(error.message) from None
    personas = actions.personas_for(request.user)
    if conversation is not None:
        persona_slug = conversation.persona.slug
    else:
        persona_slug = next((p.slug for p in personas if p.allowed), None)
    active = conversation.active_reply() if conversation is not None else None
    context = {
        "conversations": request.user.conversations.all(),
        "conversation": conversation,
        # The branch on screen (chat/branches.py), feedback prefetched: the page marks each
        # reply with the user's thumbs up or down.
        "messages": (
            branches.shown_path(conversation, conversation.messages.prefetch_related("feedback"))
            if conversation is not None else []
        ),
        "personas": personas,
        "plan_status": plans.plan_status(request.user),
        "chat_config": {
            "conversationId": conversation.id if conversation is not None else None,
            "wsPath": "/ws/chat/",
            "maxMessageChars": settings.GROKWEB_MAX_MESSAGE_CHARS,
            "persona": persona_slug,
            "activeMessageId": active.id if active is not None else None,
        },
    }
    return render(request, "chat/chat.html", context)


# Per client address (behind a proxy, Daphne's --proxy-headers makes it the client's), counted
# in the cache (Redis, shared by every web process, when there is one); answered below, not 403.
@ratelimit(key="ip", rate=lambda group, request: settings.GROKWEB_SIGNUP_RATE, method="POST", block=False)
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("chat")
    form = SignupForm(request.POST or None)
    if request.limited:  # every POST counts, valid or not: a bot's bad tries too
        form.add_error(None, "Too many sign-ups from this address: try again later.")
        return render(request, "registration/signup.html", {"form": form}, status=429)
    if request.method == "POST" and form.is_valid():
        # Named: with django-axes there are two backends, and only this one logs people in.
        login(request, form.save(), backend="django.contrib.auth.backends.ModelBackend")
        return redirect("chat")
    return render(request, "registration/signup.html", {"form": form})


@login_required
@require_POST
def conversation_rename(request: HttpRequest, conversation_id: int) -> JsonResponse:
    """Takes the new title as JSON ({"title": ...}) from the page or as a form field."""
    try:
        title = posted_data(request).get("title")
        conversation = actions.do_rename_conversation(request.user, conversation_id, title)
    except ChatError as error:
        return error_response(error)
    return JsonResponse({"id": conversation.id, "title": conversation.title})


@login_required
@require_POST
def conversation_delete(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """Answers the page's fetch (Accept: application/json) with JSON, a form with a redirect."""
    try:
        actions.do_delete_conversation(request.user, conversation_id)
    except ChatError as error:
        return error_response(error)
    if request.get_preferred_type(["text/html", "application/json"]) == "application/json":
        return JsonResponse({"deleted": conversation_id})
    return redirect("chat")


@login_required
@require_GET
def conversation_search(request: HttpRequest) -> JsonResponse:
    try:
        results = search.search_conversations(request.user, request.GET.get("q", ""))
    except ChatError as error:
        return error_response(error)
    return JsonResponse({"results": results})


@login_required
@require_POST
def message_feedback(request: HttpRequest, message_id: int) -> JsonResponse:
    """Thumbs up or down on one of the user's replies: {"rating": "up"|"down", "comment": ...}
    as JSON or a form; sending it again replaces it."""
    try:
        data = posted_data(request)
        feedback = review.do_give_feedback(
            request.user, message_id, data.get("rating"), data.get("comment", "")
        )
    except ChatError as error:
        return error_response(error)
    return JsonResponse(
        {"message_id": message_id, "rating": feedback.rating, "comment": feedback.comment}
    )


# The caller is a billing provider's server, not a browser holding our session: there is no
# CSRF token to check and no cookie to ride on. Each call is authenticated by its HMAC signature.
@csrf_exempt
@require_POST
def billing_webhook(request: HttpRequest) -> JsonResponse:
    try:
        event, applied = billing.do_receive_webhook(
            request.body,
            timestamp=request.headers.get("X-Grokweb-Timestamp"),
            sent_signature=request.headers.get("X-Grokweb-Signature"),
        )
    except billing.WebhookError as error:
        return JsonResponse({"error": error.message}, status=error.status)
    return JsonResponse(
        {"event_id": event.event_id, "outcome": event.outcome, "duplicate": not applied}
    )


@staff_member_required
@require_GET
def staff_usage(request: HttpRequest) -> HttpResponse:
    context = admin.site.each_context(request) | {"title": "Usage", "report": plans.usage_report()}
    return render(request, "chat/staff_usage.html", context)
