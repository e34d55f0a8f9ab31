"""The operators' endpoints: `/healthz` (the process answers), `/readyz` (it can serve: the
database, Redis and at least one live worker) and `/metrics` (Prometheus, chat/metrics.py).

/metrics wants `Authorization: Bearer <GROKWEB_METRICS_TOKEN>`; without that setting it answers
loopback clients only (a Prometheus on the same host, or a proxy there that guards it).
"""

from __future__ import annotations

import hmac

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from chat import jobs, metrics

LOOPBACK = {"127.0.0.1", "::1"}


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when every check passes, else 503; the body says how each went."""
    checks = {"database": _check_database()}
    if settings.REDIS_URL:
        checks["redis"], checks["workers"] = _check_redis_and_workers()
    else:  # embedded: the worker is a thread of this process, started with the first socket
        checks["workers"] = "embedded"
    ready = not any(value.startswith("failed") for value in checks.values())
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503)


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as exc:
        return f"failed: {exc}"


def _check_redis_and_workers() -> tuple[str, str]:
    """How Redis and the workers are: "ok ...", or "failed: why"; no live worker is a failure
    (replies would only wait)."""
    client = _redis()
    try:
        client.ping()
        workers = jobs.live_workers(client, settings.GROK_JOB_CLAIM_SECONDS)
    except redis.RedisError as exc:
        return f"failed: {exc}", "failed: unknown, Redis is unreachable"
    finally:
        client.close()
    return "ok", f"ok: {len(workers)} live" if workers else "failed: no live worker"


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.GROKWEB_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return HttpResponse("A bearer token (GROKWEB_METRICS_TOKEN) is required.\n", status=401, content_type="text/plain")
    elif request.META.get("REMOTE_ADDR") not in LOOPBACK:
        return HttpResponse(
            "Metrics are served to loopback clients only while GROKWEB_METRICS_TOKEN is unset.\n",
            status=403, content_type="text/plain",
        )
    return HttpResponse(metrics.exposition(_queue_length()), content_type=CONTENT_TYPE_LATEST)


def _queue_length() -> int | None:
    """Replies in the Redis queue (the shared stream and the workers' inboxes); None without
    Redis (embedded) or while it is away."""
    if not settings.REDIS_URL:
        return None
    client = _redis()
    try:
        return jobs.queue_length(client)
    except redis.RedisError:
        return None
    finally:
        client.close()


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, decode_responses=True, socket_connect_timeout=2, socket_timeout=2)
