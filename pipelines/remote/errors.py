"""Errors of the remote client. Every message is written for the ComfyUI user and never holds an API key."""

from __future__ import annotations


class RemoteError(RuntimeError):
    """A hosted-API run failed. `provider`, `request_id` and `status` (HTTP) are set when known."""

    def __init__(self, message: str, *, provider: str | None = None, request_id: str | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.provider, self.request_id, self.status = provider, request_id, status


class MissingKeyError(RemoteError):
    """No API key was configured; the message names the variable or file to set."""


class KeyRejectedError(RemoteError):
    """The provider answered 401/403: the key is wrong, revoked or lacks access."""


class ProviderError(RemoteError):
    """The provider refused the request or reported a failed job (validation, moderation, model error)."""


class ServiceUnavailableError(RemoteError):
    """Transient trouble outlasted the retries (5xx, 429, connection errors), or a submit got no clear answer."""


class RemoteTimeoutError(RemoteError, TimeoutError):
    """The overall deadline passed before the images came back; a queued job was cancelled."""


class RemoteCancelledError(RemoteError):
    """The caller aborted (ComfyUI interrupt); jobs still queued or running were cancelled."""


class DownloadError(RemoteError):
    """An output image could not be fetched: too large, not an image, or undecodable."""
