"""Staff tools: accounts and plans, personas (a saved prompt change is a new version), and the
review of conversations.

Roles: the "Reviewer" group (migration 0004) may view conversations, messages and feedback, and
flag, annotate, mark reviewed and export conversations (`review_conversation`,
`export_conversation`), never change what was said. Only superusers delete anything here, and only
they see who opened which conversation (`ConversationView`).
"""

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.db.models import Count, F, IntegerField, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone
from django.utils.html import format_html

from chat import branches, plans, review, search
from chat.models import (
    ApiKey,
    BillingEvent,
    Conversation,
    ConversationView,
    Feedback,
    Message,
    Persona,
    PersonaVersion,
    Plan,
    Subscription,
    UsageEntry,
    User,
)


def record_listed(request: HttpRequest, response, conversation_id: str) -> None:
    """Record the conversations of the rows a changelist page shows as seen by the staff member
    (`conversation_id`: the rows' attribute holding the id)."""
    changelist = getattr(response, "context_data", {}).get("cl")
    if changelist is not None:
        rows = changelist.result_list
        review.do_record_views(request.user, [getattr(row, conversation_id) for row in rows])


class SuperuserDeletes:
    """Only superusers delete, whatever permissions a staff member was given."""

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_superuser


class ReadOnly(SuperuserDeletes):
    """Records written by the app itself (messages, ledger, feedback, billing events): shown,
    never added or edited here."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


# --- accounts and plans ---------------------------------------------------------------------


class SubscriptionInline(SuperuserDeletes, admin.StackedInline):
    """Staff change a user's plan here; the webhook keeps it up to date otherwise."""

    model = Subscription
    fields = ["plan", "status", "current_period_end", "external_id", "last_event_at"]
    readonly_fields = ["last_event_at"]
    extra = 0


@admin.register(User)
class GrokUserAdmin(UserAdmin):
    inlines = [SubscriptionInline]
    list_display = [*UserAdmin.list_display, "subscription"]
    list_select_related = ["subscription__plan"]
    list_filter = [*UserAdmin.list_filter, "subscription__plan", "subscription__status"]


@admin.register(Plan)
class PlanAdmin(SuperuserDeletes, admin.ModelAdmin):
    list_display = [
        "name", "slug", "sort_order", "messages_per_day", "tokens_per_day", "max_new_tokens",
        "context_len", "max_concurrent",
    ]
    filter_horizontal = ["personas"]
    prepopulated_fields = {"slug": ["name"]}

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # Everyone without a current subscription is on Free: it must exist.
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or obj.slug != Plan.FREE)


@admin.register(Subscription)
class SubscriptionAdmin(SuperuserDeletes, admin.ModelAdmin):
    list_display = ["user", "plan", "status", "current_period_end", "updated_at"]
    list_filter = ["plan", "status"]
    list_select_related = ["user", "plan"]
    search_fields = ["user__username", "external_id"]
    raw_id_fields = ["user"]
    readonly_fields = ["last_event_at"]


@admin.register(BillingEvent)
class BillingEventAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["event_id", "type", "outcome", "received_at"]
    list_filter = ["type", "outcome"]
    search_fields = ["event_id"]


@admin.register(UsageEntry)
class UsageEntryAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["created_at", "user", "plan", "prompt_tokens", "completion_tokens", "message"]
    list_filter = ["plan"]
    list_select_related = ["user", "plan"]
    search_fields = ["user__username"]
    date_hierarchy = "created_at"


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnly, admin.ModelAdmin):
    """Keys of the OpenAI-compatible API: users create and revoke them at /settings/api-keys/.
    Only a prefix and the hash are stored, so there is no secret to show here."""

    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "name", "prefix"]
    exclude = ["hashed"]


# --- personas -------------------------------------------------------------------------------


class PersonaForm(forms.ModelForm):
    """The persona with its current system prompt as one editable field."""

    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 20, "cols": 100}))

    class Meta:
        model = Persona
        fields = ["name", "slug", "description", "is_active", "sort_order"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        current = self.instance.current_version if self.instance.pk else None
        if current is not None:
            self.fields["system_prompt"].initial = current.system_prompt

    def clean_system_prompt(self) -> str:
        # Browsers send a textarea's lines ending in CRLF: an untouched prompt must compare equal.
        return self.cleaned_data["system_prompt"].replace("\r\n", "\n")


class PersonaVersionInline(admin.TabularInline):
    """Past versions, read-only: replies point at them, so they are never changed or removed."""

    model = PersonaVersion
    fields = ["number", "created_at", "created_by", "system_prompt"]
    readonly_fields = fields
    ordering = ["-number"]
    extra = 0

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Persona)
class PersonaAdmin(SuperuserDeletes, admin.ModelAdmin):
    form = PersonaForm
    inlines = [PersonaVersionInline]
    list_display = ["name", "slug", "is_active", "sort_order", "current_version"]
    prepopulated_fields = {"slug": ["name"]}

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        obj.set_system_prompt(form.cleaned_data["system_prompt"], created_by=request.user)


# --- conversations under review -------------------------------------------------------------


def _per_conversation(queryset, value) -> Subquery:
    """`value` aggregated over `queryset`'s rows of each conversation, as a subquery: one per
    column, so the counts neither multiply through joins nor cost a query per row."""
    return Coalesce(
        Subquery(
            queryset.filter(conversation=OuterRef("pk"))
            .order_by()
            .values("conversation")
            .annotate(total=value)
            .values("total"),
            output_field=IntegerField(),
        ),
        0,
    )


class PlanFilter(admin.SimpleListFilter):
    """The owner's plan now (a lapsed subscription counts as Free)."""

    title = "owner's plan"
    parameter_name = "plan"

    def lookups(self, request, model_admin):
        return [(plan.slug, plan.name) for plan in Plan.objects.all()]

    def queryset(self, request, queryset):
        plan = Plan.objects.filter(slug=self.value()).first() if self.value() else None
        if plan is None:
            return queryset
        return queryset.filter(owner__in=plans.users_on_plan(plan))


class ReviewedFilter(admin.SimpleListFilter):
    title = "reviewed"
    parameter_name = "reviewed"

    def lookups(self, request, model_admin):
        return [("yes", "Reviewed"), ("no", "Not reviewed")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(reviewed_at__isnull=self.value() == "no")
        return queryset


class FeedbackFilter(admin.SimpleListFilter):
    title = "feedback"
    parameter_name = "feedback"

    def lookups(self, request, model_admin):
        return [("down", "Has thumbs down"), ("up", "Has thumbs up"), ("none", "No feedback")]

    def queryset(self, request, queryset):
        if self.value() == "up":
            return queryset.filter(thumbs_up__gt=0)
        if self.value() == "down":
            return queryset.filter(thumbs_down__gt=0)
        if self.value() == "none":
            return queryset.filter(thumbs_up=0, thumbs_down=0)
        return queryset


class ConversationReviewForm(forms.ModelForm):
    """Only the review fields are editable; `reviewed` stamps who reviewed it and when."""

    reviewed = forms.BooleanField(required=False)

    class Meta:
        model = Conversation
        fields = ["flagged", "review_notes"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reviewed"].initial = self.instance.reviewed_at is not None


def transcript(conversation: Conversation | None) -> list[Message]:
    """Every message of every branch in order, each marked with its place in the tree
    (chat/branches.py): `versions` of its siblings, its `version` among them, and whether it is
    `shown`, on the branch the owner has on screen."""
    if conversation is None:
        return []
    tree = branches.tree_of(
        conversation,
        conversation.messages.select_related("persona_version__persona").prefetch_related("feedback__user"),
    )
    shown = {m.pk for m in tree.path_to(tree.shown_leaf(conversation))}
    for message in tree.by_id.values():
        message.versions = tree.versions(message)
        message.version = message.versions.index(message.pk) + 1
        message.shown = message.pk in shown
    return list(tree.by_id.values())


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    form = ConversationReviewForm
    change_form_template = "admin/chat/conversation/change_form.html"
    list_display = [
        "title", "source_badge", "owner", "persona", "message_count", "token_count", "updated_at", "flagged",
        "is_reviewed", "feedback_summary",
    ]
    list_filter = [
        PlanFilter, "persona", "source", "updated_at", "flagged", ReviewedFilter, FeedbackFilter,
    ]
    list_select_related = ["owner", "persona"]
    search_fields = ["title", "owner__username", "messages__content"]

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        # On PostgreSQL messages are searched in full text (get_search_results), not icontains.
        if search.full_text():
            return [field for field in self.search_fields if field != "messages__content"]
        return self.search_fields

    def get_search_results(self, request: HttpRequest, queryset, search_term: str):
        found, duplicates = super().get_search_results(request, queryset, search_term)
        if search.full_text() and search_term.strip():
            matching = search.messages_matching(Message.objects.all(), search_term)
            found = found | queryset.filter(pk__in=matching.values("conversation_id"))
        return found, duplicates
    readonly_fields = [
        "title", "owner", "persona", "source", "created_at", "updated_at", "reviewed_at",
        "reviewed_by",
    ]
    fieldsets = [
        (None, {"fields": ["title", "owner", "persona", "source", "created_at", "updated_at"]}),
        (
            "Review",
            {"fields": ["flagged", "reviewed", "review_notes", "reviewed_at", "reviewed_by"]},
        ),
    ]
    actions = ["flag", "unflag", "mark_reviewed", "export_jsonl"]

    def get_queryset(self, request):
        messages = Message.objects.all()
        feedback = Feedback.objects.annotate(conversation=F("message__conversation"))
        return (
            super()
            .get_queryset(request)
            .annotate(
                message_total=_per_conversation(messages, Count("id")),
                token_total=_per_conversation(
                    messages, Sum(F("prompt_tokens") + F("completion_tokens"))
                ),
                thumbs_up=_per_conversation(feedback, Count("id", filter=Q(rating="up"))),
                thumbs_down=_per_conversation(feedback, Count("id", filter=Q(rating="down"))),
            )
        )

    @admin.display(description="source", ordering="source")
    def source_badge(self, conversation: Conversation) -> str:
        """A badge on conversations made through the API (chat/api.py); nothing on the web's."""
        if conversation.source != Conversation.Source.API:
            return ""
        return format_html('<span class="api-badge" title="{}">API</span>', "Made through the API")

    @admin.display(description="messages", ordering="message_total")
    def message_count(self, conversation: Conversation) -> int:
        return conversation.message_total

    @admin.display(description="tokens", ordering="token_total")
    def token_count(self, conversation: Conversation) -> int:
        return conversation.token_total

    @admin.display(description="reviewed", boolean=True, ordering="reviewed_at")
    def is_reviewed(self, conversation: Conversation) -> bool:
        return conversation.reviewed_at is not None

    @admin.display(description="feedback")
    def feedback_summary(self, conversation: Conversation) -> str:
        parts = [f"👍 {conversation.thumbs_up}"] if conversation.thumbs_up else []
        parts += [f"👎 {conversation.thumbs_down}"] if conversation.thumbs_down else []
        return " ".join(parts) or "–"

    # -- permissions: review is a change of the review fields only (the rest is read-only) --

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # conversations come from the chat

    def has_review_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("chat.review_conversation")

    def has_export_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("chat.export_conversation")

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return super().has_change_permission(request, obj) or self.has_review_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_superuser

    def save_model(self, request, obj: Conversation, form, change) -> None:
        if "reviewed" in form.changed_data:
            reviewed = form.cleaned_data["reviewed"]
            obj.reviewed_at = timezone.now() if reviewed else None
            obj.reviewed_by = request.user if reviewed else None
        super().save_model(request, obj, form, change)

    # -- the page: transcript, and the audit of who opened it --------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # Any other id gets the admin's own "does not exist" redirect from super().
        conversation_id = int(object_id) if str(object_id).isdigit() else None
        context = {
            "transcript": transcript(Conversation.objects.filter(pk=conversation_id).first()),
            **(extra_context or {}),
        }
        if request.user.is_superuser:
            context["staff_views"] = ConversationView.objects.filter(
                conversation_id=conversation_id
            ).select_related("viewer")[:20]
        response = super().change_view(request, object_id, form_url, context)
        if request.method == "GET" and response.status_code == 200:
            review.do_record_views(request.user, [conversation_id])
        return response

    def changelist_view(self, request, extra_context=None):
        # The list shows titles; searched, it tells which conversations hold the words.
        response = super().changelist_view(request, extra_context)
        if request.GET.get("q"):
            record_listed(request, response, "id")
        return response

    # -- bulk actions ----------------------------------------------------------------------

    @admin.action(description="Flag selected conversations", permissions=["review"])
    def flag(self, request, queryset) -> None:
        count = review.do_set_flag(queryset, True)
        self.message_user(request, f"Flagged {count} conversations.")

    @admin.action(description="Unflag selected conversations", permissions=["review"])
    def unflag(self, request, queryset) -> None:
        count = review.do_set_flag(queryset, False)
        self.message_user(request, f"Unflagged {count} conversations.")

    @admin.action(description="Mark selected conversations reviewed", permissions=["review"])
    def mark_reviewed(self, request, queryset) -> None:
        count = review.do_mark_reviewed(queryset, request.user)
        self.message_user(request, f"Marked {count} conversations reviewed.")

    @admin.action(description="Export selected conversations as JSONL", permissions=["export"])
    def export_jsonl(self, request, queryset) -> StreamingHttpResponse:
        review.do_record_views(request.user, queryset.values_list("id", flat=True))
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response = StreamingHttpResponse(
            review.export_lines(queryset), content_type="application/x-ndjson"
        )
        response["Content-Disposition"] = f'attachment; filename="conversations-{stamp}.jsonl"'
        return response


@admin.register(Message)
class MessageAdmin(ReadOnly, admin.ModelAdmin):
    list_display = [
        "id", "conversation", "role", "status", "short_content", "model_name", "created_at"
    ]
    list_filter = ["role", "status", "model_name"]
    search_fields = ["content"]
    raw_id_fields = ["conversation", "persona_version"]

    def get_search_results(self, request: HttpRequest, queryset, search_term: str):
        # Full text on PostgreSQL (chat/search.py): icontains scans every message.
        if not search.full_text() or not search_term.strip():
            return super().get_search_results(request, queryset, search_term)
        return search.messages_matching(queryset, search_term), False
    list_select_related = ["conversation"]

    @admin.display(description="content")
    def short_content(self, message: Message) -> str:
        return message.content[:80]

    # Both pages show what was said: each records a view of the conversations it shows.

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        record_listed(request, response, "conversation_id")
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        if request.method == "GET" and response.status_code == 200:
            message = response.context_data["original"]
            review.do_record_views(request.user, [message.conversation_id])
        return response


@admin.register(Feedback)
class FeedbackAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["updated_at", "rating", "comment", "user", "message"]
    list_filter = ["rating", "updated_at"]
    list_select_related = ["user", "message"]
    search_fields = ["comment", "user__username", "message__content"]


@admin.register(ConversationView)
class ConversationViewAdmin(ReadOnly, admin.ModelAdmin):
    """The audit of staff opening conversations: superusers only, and never edited."""

    list_display = ["viewed_at", "viewer", "conversation"]
    list_filter = ["viewed_at"]
    list_select_related = ["viewer", "conversation"]
    search_fields = ["viewer__username"]

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_superuser

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
