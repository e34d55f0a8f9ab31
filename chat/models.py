"""Accounts, personas (versioned system prompts), conversations and their messages."""

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models, transaction


class User(AbstractUser):
    """Our own user model from the start, so fields can be added without a painful swap later."""

    # Added after the persona's prompt in every reply (chat/account.py); the plan bounds its length.
    custom_instructions = models.TextField(blank=True)


class Persona(models.Model):
    """A voice for the assistant. Its prompt lives in versions: an edit never rewrites history."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=80)
    description = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def current_version(self) -> "PersonaVersion | None":
        """The version a new reply is written with (the worker records it on the reply)."""
        return self.versions.order_by("-number").first()

    def set_system_prompt(
        self, system_prompt: str, created_by: User | None = None
    ) -> "PersonaVersion":
        """Make `system_prompt` current: a new version if it differs; past replies keep theirs."""
        with transaction.atomic():
            # The row lock serialises concurrent editors, who would otherwise pick the same number.
            Persona.objects.select_for_update().get(pk=self.pk)
            current = self.current_version
            if current is not None and current.system_prompt == system_prompt:
                return current
            return self.versions.create(
                number=current.number + 1 if current else 1,
                system_prompt=system_prompt,
                created_by=created_by,
            )


class PersonaVersion(models.Model):
    persona = models.ForeignKey(Persona, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    system_prompt = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["persona", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["persona", "number"], name="unique_persona_version")
        ]

    def __str__(self) -> str:
        return f"{self.persona.name} v{self.number}"


class Conversation(models.Model):
    class Source(models.TextChoices):
        WEB = "web"
        API = "api"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, default="New chat")
    persona = models.ForeignKey(Persona, on_delete=models.PROTECT, related_name="conversations")
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.WEB)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)
    # Staff review (admin): never shown to the owner.
    flagged = models.BooleanField(default=False, db_index=True)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    review_notes = models.TextField(blank=True)
    # The message at the end of the branch on screen (chat/branches.py): the page shows the path
    # from the first message to it, and the next message follows it. None: the newest message.
    current = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]
        permissions = [
            ("review_conversation", "Can flag, annotate and mark conversations reviewed"),
            ("export_conversation", "Can export conversations as JSONL"),
        ]

    def __str__(self) -> str:
        return self.title

    def active_reply(self) -> "Message | None":
        """The reply still queued or being written, if any: a conversation has at most one."""
        return self.messages.filter(
            role=Message.Role.ASSISTANT, status__in=Message.ACTIVE_STATUSES
        ).first()


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        QUEUED = "queued"
        STREAMING = "streaming"
        DONE = "done"
        STOPPED = "stopped"
        FAILED = "failed"

    ACTIVE_STATUSES = (Status.QUEUED, Status.STREAMING)

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # The message this one follows (None: a first message). An edit or a regenerate adds a
    # sibling, so a conversation is a tree and every version is kept (chat/branches.py).
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DONE)
    finish_reason = models.CharField(max_length=16, blank=True)  # stop | length | cancelled | error
    error = models.TextField(blank=True)
    # Why it failed, for programs: an error code of docs/protocol.md (`too_long`, `failed`, ...).
    error_code = models.CharField(max_length=32, blank=True)
    # The tokens today's quota holds for this reply while it runs (chat/plans.py): its ledger
    # row takes their place when it ends.
    reserved_tokens = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)  # of prompt_tokens, reused from the engine's prefix cache
    time_to_first_token = models.FloatField(null=True, blank=True)  # seconds
    duration = models.FloatField(null=True, blank=True)  # seconds
    persona_version = models.ForeignKey(
        PersonaVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="messages"
    )
    model_name = models.CharField(max_length=100, blank=True)
    # How the reply is generated: the plan's limits (max_new_tokens, context_len) when queued,
    # an API request's system_suffix, stop, temperature, top_p and seed, and, once a worker
    # starts it, the sampling it used (temperature, top_p, top_k, seed): enough to reproduce it.
    generation = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["conversation_id", "id"]  # the id, not the conversation: its ordering would join it

    def __str__(self) -> str:
        # No text: admin pages show messages by this where they record no view (docs/review.md).
        return f"{self.role} message {self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES


# --- plans, billing, usage and review ------------------------------------------------------
# The rules over these live in chat/plans.py (limits, usage), chat/billing.py (subscriptions)
# and chat/review.py (feedback, export); the admin is the staff's window on all of them.


class Plan(models.Model):
    """What a user may do per day and per reply. Plans are data: staff edit them in the admin."""

    FREE = "free"  # the plan of everyone without a current subscription; must always exist

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=80)
    description = models.CharField(max_length=200, blank=True)  # shown when offering an upgrade
    sort_order = models.PositiveSmallIntegerField(default=0)  # higher = an upgrade of lower ones
    messages_per_day = models.PositiveIntegerField()  # replies asked for: sends, edits, regenerates
    tokens_per_day = models.PositiveIntegerField()  # prompt + completion
    max_new_tokens = models.PositiveIntegerField()  # per reply
    context_len = models.PositiveIntegerField()  # tokens of history + reply the model sees
    max_concurrent = models.PositiveSmallIntegerField(default=1)  # replies being written at once
    instructions_chars = models.PositiveIntegerField(default=500)  # custom instructions; 0 = none
    personas = models.ManyToManyField(Persona, blank=True, related_name="plans")

    class Meta:
        ordering = ["sort_order", "name"]

    def __str__(self) -> str:
        return self.name


class Subscription(models.Model):
    """A user's paid plan. No row, or a lapsed one, means the Free plan; history is kept."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        PAST_DUE = "past_due"
        CANCELLED = "cancelled"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="subscription"
    )
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    current_period_end = models.DateTimeField(null=True, blank=True)  # None: no end (staff grant)
    external_id = models.CharField(max_length=200, blank=True)  # the billing provider's id
    last_event_at = models.DateTimeField(null=True, blank=True)  # older webhook events are stale
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.user} on {self.plan} ({self.status})"


class BillingEvent(models.Model):
    """Every webhook event received, by the provider's id: a redelivery is not applied again."""

    event_id = models.CharField(max_length=200, unique=True)
    type = models.CharField(max_length=64)
    payload = models.JSONField()
    outcome = models.CharField(max_length=16)  # applied | stale
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class UsageEntry(models.Model):
    """The ledger: one row per finished reply. Daily counters are sums over it, and it outlives
    the reply (deleting a conversation refunds nothing)."""

    # SET_NULL: a deleted account leaves its rows, anonymised, for billing (chat/account.py).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="usage_entries"
    )
    message = models.OneToOneField(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage"
    )
    plan = models.ForeignKey(Plan, null=True, on_delete=models.SET_NULL, related_name="+")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()  # when the reply was asked for: it counts on that day

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "created_at"]), models.Index(fields=["created_at"])]
        verbose_name_plural = "usage entries"

    def __str__(self) -> str:
        return f"{self.user}: {self.prompt_tokens}+{self.completion_tokens} tokens"


class Feedback(models.Model):
    """A user's thumbs up or down, with an optional comment, on one of their replies."""

    class Rating(models.TextChoices):
        UP = "up"
        DOWN = "down"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="feedback"
    )
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    rating = models.CharField(max_length=8, choices=Rating.choices)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.UniqueConstraint(fields=["user", "message"], name="unique_feedback_per_user")
        ]
        verbose_name_plural = "feedback"

    def __str__(self) -> str:
        return f"{self.rating} on message {self.message_id}"


class ConversationView(models.Model):
    """Audit: a staff member opened a conversation in the admin. Superusers only see these."""

    conversation = models.ForeignKey(
        Conversation, null=True, on_delete=models.SET_NULL, related_name="staff_views"
    )
    viewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    viewed_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-viewed_at"]

    def __str__(self) -> str:
        return f"{self.viewer} opened conversation {self.conversation_id}"


class ApiKey(models.Model):
    """A secret for the OpenAI-compatible API (chat/api.py). Only its SHA-256 is stored: the key
    is shown once, at creation, and a leaked database does not leak working keys."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)  # the key's first characters, so people tell keys apart
    hashed = models.CharField(max_length=64, unique=True)  # SHA-256 hex of the whole key
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class SharedConversation(models.Model):
    """A read-only snapshot of a conversation at an unguessable URL (chat/sharing.py). The
    messages are copied, so the link shows what existed when it was shared; sharing again
    refreshes the copy. Deleting the conversation deletes its links."""

    token = models.CharField(max_length=64, unique=True)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="shares")
    title = models.CharField(max_length=200)
    display_name = models.CharField(max_length=80, blank=True)  # all a viewer sees of the owner
    messages = models.JSONField(default=list)  # [{"role", "content"}], oldest first
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return f"{self.title} ({self.token[:6]}…)"
