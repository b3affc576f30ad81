"""Hosted FLUX.1 Redux variation: fal (queue and sync), WaveSpeed v3, and fal-compatible aggregators.

No ComfyUI import here; the node in nodes/remote.py adapts this API. Entry point:
`run_remote_variation(images, RemoteRequest(...), settings=ClientSettings(...), on_progress=..., should_abort=...)`.
"""

from ..params import MAX_CONCURRENCY
from .custom import CustomProvider
from .errors import (DownloadError, KeyRejectedError, MissingKeyError, ProviderError, RemoteCancelledError,
                     RemoteError, RemoteTimeoutError, ServiceUnavailableError)
from .fal import FAL_MODELS, FalProvider
from .http import Deadline, HttpClient, RetryPolicy, Timeouts
from .images import ImageTooLargeError, encode_input_image
from .jobs import PROGRESS_STATES, ClientSettings, ProgressEvent, RemoteRequest, RemoteResult
from .keys import KEY_FILE_NAME, KEY_SOURCES, ApiKey, find_key
from .runner import PROVIDER_NAMES, PROVIDERS, make_provider, run_remote_variation
from .wavespeed import WAVESPEED_MODELS, WaveSpeedProvider

__all__ = [
    "run_remote_variation", "make_provider", "RemoteRequest", "RemoteResult", "ClientSettings", "ProgressEvent",
    "PROGRESS_STATES", "PROVIDERS", "PROVIDER_NAMES", "MAX_CONCURRENCY", "FalProvider", "CustomProvider",
    "WaveSpeedProvider", "FAL_MODELS", "WAVESPEED_MODELS", "RetryPolicy", "Timeouts", "Deadline", "HttpClient",
    "find_key", "ApiKey", "KEY_SOURCES", "KEY_FILE_NAME", "encode_input_image", "RemoteError", "MissingKeyError",
    "KeyRejectedError", "ProviderError", "ServiceUnavailableError", "RemoteTimeoutError", "RemoteCancelledError",
    "DownloadError", "ImageTooLargeError",
]
