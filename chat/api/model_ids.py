"""Public model ids: `grok-1` is the default persona, `grok-1:<slug>` any other one.

They are part of the API, so clients can hard-code them: change them only with a note in
docs/api.md."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Min

from chat import actions
from chat.errors import ApiError, ChatError
from chat.models import Persona, PersonaVersion, User
from chat.context_processors import model_info

MODEL_BASE = "grok-1"
DEFAULT_PERSONA = "grok"
DEMO_DESCRIPTION = "grokweb's tiny demo model: random weights, its output is noise"

def model_id(persona: Persona) -> str:
    return MODEL_BASE if persona.slug == DEFAULT_PERSONA else f"{MODEL_BASE}:{persona.slug}"


def _models(personas: list[Persona]) -> list[dict]:
    """The model objects of `personas`. Over the demo model each says, in a field clients
    ignore, that its text is noise."""
    is_demo = model_info(settings.GROK_CHECKPOINT).is_demo
    created = dict(
        PersonaVersion.objects.filter(persona__in=personas)
        .values("persona")
        .annotate(first=Min("created_at"))
        .values_list("persona", "first")
    )
    return [
        {
            "id": model_id(persona),
            "object": "model",
            "created": int(created[persona.pk].timestamp()) if persona.pk in created else 0,
            "owned_by": "grokweb",
            **({"description": DEMO_DESCRIPTION} if is_demo else {}),
        }
        for persona in personas
    ]


def list_models(user: User) -> dict:
    """The `GET /v1/models` body: one model per persona the user's plan allows."""
    personas = [persona for persona in actions.personas_for(user) if persona.allowed]
    return {"object": "list", "data": _models(personas)}


def retrieve_model(user: User, model: str) -> dict:
    """The `GET /v1/models/{model}` body, or the 404 ApiError of `get_persona_for_model`."""
    return _models([get_persona_for_model(user, model)])[0]


def get_persona_for_model(user: User, model: str) -> Persona:
    """The persona behind model id `model`, if the user may use it (404 otherwise, with what
    the plans above offer when it is the plan that stands in the way)."""
    base, colon, slug = model.partition(":")
    if colon and slug == DEFAULT_PERSONA:
        slug = ""  # "grok-1:grok" is not an id: the default persona is plain "grok-1"
    elif not colon:
        slug = DEFAULT_PERSONA
    persona = Persona.objects.filter(is_active=True, slug=slug).first() if base == MODEL_BASE else None
    missing = f"The model `{model}` does not exist or you do not have access to it."
    if persona is None:
        raise ApiError(404, missing, code="model_not_found", param="model")
    try:
        actions.check_persona_allowed(user, persona)
    except ChatError as error:
        raise ApiError(404, f"{missing} {error.message}", code="model_not_found", param="model") from None
    return persona

