"""Webhooks: fal's `?fal_webhook=<url>` (fal-client's `webhook_url`) and WaveSpeed's `?webhook=<url>`, POSTed
with the provider's payload once the job ends, and only where the operator switched them on
(`serve --allow-webhooks`): they are the one outbound call a client can aim at any address.

Every try goes through the address guard of URL inputs (inputs.check_destination: the host is resolved again
and a non-public address is refused unless --url-allow-host lists it; redirects are not followed), is bounded
in time (config.webhook_timeout_s, connect to last byte) and in number (one more than config.webhook_retry_s,
the waits between them). A 2xx reply ends it; after the last failed try it is logged and given up. As fal's,
deliveries are at least once: a receiver dedupes on request_id.
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from ..params import ParameterError
from ..remote.http import CallWatch, WatchedAdapter
from . import jobs as J
from .inputs import InputError, check_destination
from .outputs import absolute

log = logging.getLogger("flux-redux.server")
FLAG = "--allow-webhooks"
MAX_URL_LENGTH = 2048


def check_webhook_url(field: str, url: Any, config) -> str:
    """At submit: the URL, or a ParameterError naming the field and why (switched off, not an http(s) URL, a
    non-public address). Resolves the host: call it off the event loop."""
    if not config.webhooks:
        raise ParameterError(field, _short(url), f"webhooks are switched off on this server (serve {FLAG})")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > MAX_URL_LENGTH:
        raise ParameterError(field, _short(url), f"expected an http(s) URL of at most {MAX_URL_LENGTH} characters")
    check_destination(field, url, config.limits())
    return url


def _short(value: Any) -> Any:
    return value[:80] + "..." if isinstance(value, str) and len(value) > 80 else value


def fal_payload(job: J.Job, base_url: str) -> dict:
    """fal's webhook body: request_id, gateway_request_id, status OK/ERROR, payload (the result URL's body),
    error ("Invalid status code: N" when the result is not a 200)."""
    outcome = job.outcome or {"status": 500, "body": None}
    status, body = outcome["status"], outcome["body"]
    if status == 200:
        body = dict(body, images=[dict(image, url=absolute(image["url"], base_url)) for image in body["images"]])
    return {"request_id": job.id, "gateway_request_id": job.id, "status": "OK" if status == 200 else "ERROR",
            "payload": body, "error": None if status == 200 else f"Invalid status code: {status}"}


def payload_for(job: J.Job, base_url: str) -> dict:
    if job.api == "wavespeed":
        from .routes_wavespeed import task_data  # the task object its result URL answers
        return task_data(base_url, job)
    return fal_payload(job, base_url)


def deliver(url: str, payload: dict, config) -> str | None:
    """One try: None when the receiver answered 2xx, else why not (one line)."""
    try:
        check_destination("webhook", url, config.limits())
    except InputError as exc:
        return str(exc)
    budget = config.webhook_timeout_s
    with CallWatch(budget, None) as watch, requests.Session() as session:
        session.trust_env = False  # no proxy or netrc from the server's environment
        for scheme in ("http://", "https://"):
            session.mount(scheme, WatchedAdapter())
        try:
            with session.post(url, json=payload, timeout=(min(5.0, budget), budget), allow_redirects=False,
                              stream=True, headers={"User-Agent": "flux-redux-server"}) as reply:
                status = reply.status_code
        except requests.RequestException as exc:
            return f"could not POST it ({type(exc).__name__})"
        if watch.fired:
            return f"no reply within {budget:g} s"
    return None if 200 <= status < 300 else f"the receiver answered HTTP {status}"
