"""The probe of bench/web_trace.py: on PYTHONPATH of the stack's processes only (never imported
by the app), it wraps the functions a reply passes through and appends `stage wall-clock-time`
lines to $GROKWEB_TRACE_DIR/<pid>.log. Installed once Django is set up, when the app's modules
can be imported."""

import inspect
import os
import time

TRACE_DIR = os.environ.get("GROKWEB_TRACE_DIR")


def _mark(stage: str) -> None:
    with open(os.path.join(TRACE_DIR, f"{os.getpid()}.log"), "a") as out:
        out.write(f"{stage} {time.time():.6f}\n")


def _wrap(owner, name: str, before: str | None, after: str | None, when=None, called=None) -> None:
    """Mark `before` and `after` a call of `owner.name`; only calls `called(*args)` picks, and
    `after` only when `when(result)`."""
    inner = getattr(owner, name)
    if inspect.iscoroutinefunction(inner):

        async def outer(*args, **kwargs):
            picked = called is None or called(*args)
            if before and picked:
                _mark(before)
            result = await inner(*args, **kwargs)
            if after and picked and (when is None or when(result)):
                _mark(after)
            return result
    else:

        def outer(*args, **kwargs):
            picked = called is None or called(*args)
            if before and picked:
                _mark(before)
            result = inner(*args, **kwargs)
            if after and picked and (when is None or when(result)):
                _mark(after)
            return result

    setattr(owner, name, outer)


def _profile(owner, name: str, path: str) -> None:
    import cProfile

    inner, profile = getattr(owner, name), cProfile.Profile()

    def outer(*args, **kwargs):
        try:
            return profile.runcall(inner, *args, **kwargs)
        finally:
            profile.dump_stats(path)

    setattr(owner, name, outer)


def _install() -> None:
    from chat import actions, bridge, consumers, jobs, plans, replies
    from inference import loop

    _wrap(consumers.ChatConsumer, "receive", "receive", None)
    _wrap(consumers.ChatConsumer, "session_holds", None, "session checked")
    _wrap(actions, "do_send_message", "send begins", "send committed, job queued")
    if os.environ.get("GROKWEB_TRACE_PROFILE"):  # not timed then: the profile of each function
        for owner, name in ((actions, "do_send_message"), (replies, "do_start_reply")):
            _profile(owner, name, os.path.join(TRACE_DIR, f"{name}.prof"))
    if os.environ.get("GROKWEB_TRACE_DETAIL"):
        _wrap(plans, "check_can_generate", "quota begins", "quota ends")
        _wrap(jobs, "enqueue", "committed; enqueue begins", "enqueue ends")
        from chat import branches
        _wrap(branches, "tree_of", "tree begins", "tree ends")
        _wrap(replies, "build_prompt", "prompt begins", "prompt ends")
        _wrap(replies, "public_prefix", "prefix begins", "prefix ends")
    _wrap(consumers.ChatConsumer, "reply_delta", "delta event in Daphne", None, called=lambda _, event: event["text"])
    _wrap(consumers.ChatConsumer, "send_json", None, "delta sent to the socket", called=lambda _, frame: frame["type"] == "delta")
    _wrap(jobs.RedisQueue, "take", None, "job taken", when=bool)
    _wrap(replies, "do_start_reply", "start begins", "start ends")
    _wrap(loop.ServingLoop, "_step", None, "step returns")
    _wrap(bridge.Bridge, "deliver", "deliver begins", None)
    _wrap(replies, "do_save_updates", None, "saved")
    _wrap(bridge.Bridge, "_send", None, "published")


if TRACE_DIR:
    import django

    _setup = django.setup

    def setup(*args, **kwargs):
        _setup(*args, **kwargs)
        _install()

    django.setup = setup
