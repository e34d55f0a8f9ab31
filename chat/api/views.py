"""The OpenAI-compatible API's views (docs/api.md) and the page where users manage their API
keys. Thin: the rules live in the other modules of chat/api/."""

import asyncio
from contextlib import aclosing

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from chat import serving
from chat.api import keys
from chat.api.answers import Completion, failure
from chat.api.follow import follow_reply
from chat.api.model_ids import list_models, retrieve_model
from chat.api.requests import do_start_api_completion, parse_completion_request
from chat.errors import ApiError, ChatError, api_error, bad_request
from chat.models import ApiKey


def error_response(error: ApiError) -> JsonResponse:
    response = JsonResponse(error.body(), status=error.status)
    if error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    return response


async def authenticated(request: HttpRequest, method: str) -> ApiKey:
    if request.method != method:
        raise ApiError(405, f"Use {method}.", code="method_not_allowed")
    return await database_sync_to_async(keys.check_api_key)(request.headers.get("Authorization"))


# The API is called by programs holding a key, not by browsers holding our session cookie: there
# is no CSRF token to check and no cookie to ride on.
@csrf_exempt
async def models(request: HttpRequest) -> JsonResponse:
    try:
        user = (await authenticated(request, "GET")).user
    except ApiError as error:
        return error_response(error)
    return JsonResponse(await database_sync_to_async(list_models)(user))


@csrf_exempt
async def model(request: HttpRequest, model_id: str) -> JsonResponse:
    try:
        user = (await authenticated(request, "GET")).user
        return JsonResponse(await database_sync_to_async(retrieve_model)(user, model_id))
    except ApiError as error:
        return error_response(error)


@csrf_exempt
def unknown_path(request: HttpRequest) -> JsonResponse:
    """Any other path under /v1: OpenAI's 404, in JSON as every answer of the API."""
    return error_response(
        ApiError(404, f"Invalid URL ({request.method} {request.path}).", code="unknown_url")
    )


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: JSON under /v1, where clients parse every answer; Django's page elsewhere."""
    if request.path.startswith("/v1/"):
        return error_response(
            ApiError(500, "The server hit an unexpected error.", type="server_error", code="server_error")
        )
    return defaults.server_error(request)


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    try:
        key = await authenticated(request, "POST")
        user = key.user
        try:
            completion_request = parse_completion_request(request.body)
        except RequestDataTooBig:
            raise bad_request("The request body is too large.") from None
        if settings.GROK_EMBEDDED_WORKER:
            serving.start_embedded_worker(asyncio.get_running_loop())
        reply = await database_sync_to_async(do_start_api_completion)(user, completion_request)
    except ChatError as error:
        return error_response(api_error(error))
    except ApiError as error:
        return error_response(error)
    completion = Completion.of(reply, completion_request.model)
    events = follow_reply(key, reply.pk)
    if completion_request.stream:
        response = StreamingHttpResponse(
            completion.sse(events, completion_request.include_usage),
            content_type="text/event-stream",
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # a proxy (nginx) must pass chunks on at once
        return response
    try:
        async with aclosing(events):
            done = [event async for event in events if event["type"] == "done"][-1]
    except ChatError as error:
        return error_response(api_error(error))
    error = failure(done)
    if error is not None:
        return error_response(error)
    return JsonResponse(completion.body(done))


# --- the API keys page ----------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    """List the user's keys; a POST creates one, whose secret this answer shows, once."""
    created, error = None, ""
    if request.method == "POST":
        try:
            created = keys.do_create_api_key(request.user, request.POST.get("name", ""))
        except ChatError as exc:
            error = exc.message
    context = {
        "keys": request.user.api_keys.all(),
        "created": created,
        "error": error,
        "base_url": request.build_absolute_uri("/v1"),
        "models": [model["id"] for model in list_models(request.user)["data"]],
    }
    response = render(request, "chat/api_keys.html", context, status=400 if error else 200)
    response["Cache-Control"] = "no-store"  # it may hold a new key: never from a cache
    return response


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    try:
        keys.do_revoke_api_key(request.user, key_id)
    except ChatError as error:
        raise Http404(error.message) from None
    return redirect("api_keys")
