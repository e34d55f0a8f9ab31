"""The settings page (/settings/) and what it holds: custom instructions, share links, export,
import, account deletion; the share links themselves (/s/<token>/); and the small JSON endpoint
that refreshes the chat page's plan box after each reply. Thin: the rules live in chat.account
and chat.sharing."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from chat import account, plans, sharing
from chat.errors import ChatError
from chat.views import error_response, posted_data


def back_to(section: str) -> HttpResponse:
    return redirect(reverse("settings") + "#" + section)


@login_required
@require_GET
def settings_page(request: HttpRequest) -> HttpResponse:
    context = {
        "instructions_chars": plans.current_plan(request.user).instructions_chars,
        "shares": sharing.shares_of(request.user).select_related("conversation"),
        "api_keys": request.user.api_keys.filter(revoked_at=None).count(),
        "import_max_mib": settings.GROKWEB_IMPORT_MAX_BYTES // 2**20,
    }
    return render(request, "chat/settings.html", context)


@login_required
@require_POST
def instructions_save(request: HttpRequest) -> HttpResponse:
    try:
        account.do_set_instructions(request.user, request.POST.get("instructions", ""))
    except ChatError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, "Custom instructions saved: new replies follow them.")
    return back_to("instructions")


@login_required
@require_POST
def share_create(request: HttpRequest, conversation_id: int) -> JsonResponse:
    """From the chat page: {"display_name": ...}; answers the link's URL."""
    try:
        data = posted_data(request)
        share = sharing.do_share(request.user, conversation_id, data.get("display_name", ""))
    except ChatError as error:
        return error_response(error)
    url = request.build_absolute_uri(reverse("shared", args=[share.token]))
    return JsonResponse({"id": share.id, "url": url, "messages": len(share.messages)})


@login_required
@require_POST
def share_revoke(request: HttpRequest, share_id: int) -> HttpResponse:
    try:
        sharing.do_revoke_share(request.user, share_id)
    except ChatError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, "The link was revoked: it no longer opens.")
    return back_to("shares")


@require_GET
def shared_page(request: HttpRequest, token: str) -> HttpResponse:
    if not settings.GROKWEB_SHARE_PUBLIC and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    try:
        share = sharing.get_share(token)
    except ChatError as error:
        raise Http404(error.message) from None
    response = render(request, "chat/shared.html", {"share": share})
    # Shared conversations are for the people given the link, not for search engines.
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response


@login_required
@require_GET
def export_download(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(account.export_zip(request.user), content_type="application/zip")
    name = f"grokweb-{timezone.localdate().isoformat()}.zip"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@login_required
@require_POST
def import_upload(request: HttpRequest) -> HttpResponse:
    upload = request.FILES.get("file")
    try:
        if upload is None:
            raise ChatError("bad_import", "Choose a file to import.")
        if upload.size > settings.GROKWEB_IMPORT_MAX_BYTES:  # refused before it is read
            raise ChatError("too_large", f"The file is larger than {settings.GROKWEB_IMPORT_MAX_BYTES // 2**20} MiB.")
        count = account.do_import(request.user, upload.read())
    except ChatError as error:
        messages.error(request, f"Nothing was imported. {error.message}")
    else:
        messages.success(request, f"Imported {count} conversation{'s' if count != 1 else ''}.")
    return back_to("import")


@login_required
@require_POST
def account_delete(request: HttpRequest) -> HttpResponse:
    try:
        account.do_delete_account(request.user, request.POST.get("password"))
    except ChatError as error:
        messages.error(request, error.message)
        return back_to("delete")
    logout(request)
    return render(request, "chat/account_deleted.html")


@login_required
@require_GET
def plan_status(request: HttpRequest) -> JsonResponse:
    """What the chat page's plan box shows, refetched after each reply."""
    status = plans.plan_status(request.user)
    return JsonResponse({key: status[key] for key in ("plan", "messages_left", "tokens_left")})
