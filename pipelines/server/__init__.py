"""Serve the FLUX.1 Redux APIs (fal queue + sync, aggregator paths, WaveSpeed v3) from this machine's GPUs.

    python -m pipelines serve --models-dir ComfyUI/models            # 127.0.0.1:8184, one worker per GPU

Modules: validation (request bodies against params.py), jobs/store/store_redis (the job records),
queue (huey), worker + engine (one process per GPU), supervisor (liveness, crash recovery, drain on SIGTERM),
waits (sync requests waiting on the event loop), routes_* + app (HTTP),
openapi, auth (API keys), runtime (putting it together), cli (the `serve` arguments).
Nothing here is imported by the ComfyUI nodes.
"""
