"""`python -m pipelines serve`: the arguments, and turning them into a ServerConfig.

This module imports nothing heavy, so the main CLI can always build its parser; the server stack
(starlette, uvicorn, huey) is imported only when `serve` runs.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from .. import params
from .config import DEFAULT_PORT, DEFAULT_STATE_DIR, ServerConfig

log = logging.getLogger("flux-redux.server")


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("serve", help="serve the fal / WaveSpeed FLUX.1 Redux APIs from this machine's GPUs",
                       description="Serve fal's queue + sync endpoints and WaveSpeed v3 for FLUX.1 Redux. "
                                   "Keys: REDUX_SERVER_KEYS=name=KEY,... or redux_server_keys.json.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--models-dir", help="ComfyUI's models/ folder (dev and/or schnell Redux weights)")
    s.add_argument("--host", default="127.0.0.1", help="listen address; 0.0.0.0 exposes the server to the network")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="listen port")
    s.add_argument("--tls-cert", help="PEM certificate (chain) to serve https directly; with --tls-key")
    s.add_argument("--tls-key", help="PEM private key of --tls-cert")
    s.add_argument("--gpus", default="auto",
                   help="one worker per entry: auto (every CUDA GPU, else one CPU worker), 0,1 (CUDA indices), "
                        "cpu, cpu,cpu, or none (API only)")
    s.add_argument("--queue", dest="queue_url", help="redis://host:6379/0 to share jobs between several hosts "
                                                     "(default: SQLite files in --state-dir)")
    s.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="where the SQLite job store and queue live")
    s.add_argument("--workers-only", action="store_true", help="run this host's workers only (GPU host of a "
                                                               "Redis setup; the API runs elsewhere)")
    s.add_argument("--result-ttl", type=float, default=3600.0, help="seconds results and output files are kept")
    s.add_argument("--max-jobs-per-key", type=int, default=params.MAX_JOBS_PER_KEY.default, help="unfinished requests one key may have; "
                                                                   "more get 429 + Retry-After")
    s.add_argument("--sync-timeout", type=float, default=300.0, help="seconds the sync endpoints wait")
    s.add_argument("--job-timeout", type=float, default=1800.0,
                   help="seconds a job may run; past that it fails and its worker process is restarted (a hang)")
    s.add_argument("--allow-url-inputs", action="store_true",
                   help="accept http(s) image URLs (off: data URIs only); private addresses stay refused")
    s.add_argument("--url-allow-host", action="append", default=[],
                   help="host or host:port that image URLs may reach even on a private address (repeatable)")
    s.add_argument("--dtype", choices=params.DTYPE_CHOICES, default="auto", help="compute dtype of the workers")
    s.add_argument("--weight-storage", choices=params.WEIGHT_STORAGE_CHOICES, default="default",
                   help="default: the file's own precision (an fp8 file stays fp8); fp8: every Linear weight in "
                        "float8 (about half the memory); compute: all in --dtype")
    s.add_argument("--offload", choices=params.OFFLOAD_CHOICES, default=params.OFFLOAD_CHOICES[0],
                   help="where weights wait between uses on a GPU; auto fits the card (see the README)")
    s.add_argument("--engine", help=argparse.SUPPRESS)  # module:callable stand-in engine (load benchmark)
    s.add_argument("--lease", type=float, default=30.0, help=argparse.SUPPRESS)
    return s


def devices(spec: str) -> tuple[str, ...]:
    spec = spec.strip().lower()
    if spec == "none":
        return ()
    if spec == "auto":
        import torch
        count = torch.cuda.device_count()
        return tuple(f"cuda:{index}" for index in range(count)) or ("cpu",)
    found = []
    for item in (part.strip() for part in spec.split(",")):
        if item == "cpu" or re.fullmatch(r"cuda(:\d+)?", item):
            found.append(item)
        elif item.isdigit():
            found.append(f"cuda:{item}")
        else:
            raise params.ParameterError("gpus", spec, "expected auto, none, cpu or GPU indices like 0,1")
    return tuple(found)


def config_from(args) -> ServerConfig:
    params.SERVER_PORT.validate(args.port)
    params.MAX_JOBS_PER_KEY.validate(args.max_jobs_per_key)
    for name, value in (("result_ttl", args.result_ttl), ("sync_timeout", args.sync_timeout),
                        ("job_timeout", args.job_timeout)):
        if value <= 0:
            raise params.ParameterError(name, value, "must be more than 0 seconds")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise params.ParameterError("tls_cert", args.tls_cert, "--tls-cert and --tls-key go together")
    for name, path in (("tls_cert", args.tls_cert), ("tls_key", args.tls_key)):
        if path and not Path(path).is_file():
            raise params.ParameterError(name, path, "no such file (expected a PEM file)")
    return ServerConfig(state_dir=args.state_dir, queue_url=args.queue_url, host=args.host, port=args.port,
                        tls_cert=args.tls_cert, tls_key=args.tls_key,
                        models_dir=args.models_dir, devices=devices(args.gpus), engine=args.engine, dtype=args.dtype,
                        weight_storage=args.weight_storage, offload=args.offload, result_ttl_s=args.result_ttl,
                        max_active_per_key=args.max_jobs_per_key, sync_timeout_s=args.sync_timeout,
                        url_inputs=args.allow_url_inputs, url_allow_hosts=tuple(args.url_allow_host),
                        lease_s=args.lease, job_timeout_s=args.job_timeout)


def run(args) -> int:
    try:
        config = config_from(args)
        if config.devices and not config.engine:
            _check_models(config)
        keys = None
        if not args.workers_only:
            from .auth import load_keys
            keys = load_keys()
        from .runtime import serve
    except ImportError as exc:  # the server's packages are an optional extra
        print(f"error: serve needs the server packages ({exc.name} is missing): "
              "pip install -r requirements-server.txt", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:  # ParameterError, KeyConfigError, WeightsError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(config, keys, api=not args.workers_only)
    return 0


def _check_models(config: ServerConfig) -> None:
    """Fail at start-up, not on the first job, when the models folder has neither variant."""
    from ..weights import WeightsError, find_weights

    if not config.models_dir:
        raise ValueError("serve needs --models-dir (ComfyUI's models/ folder) for its workers")
    errors = []
    for variant in params.VARIANTS:
        try:
            find_weights(config.models_dir, variant)
            return
        except WeightsError as exc:
            errors.append(str(exc))
    raise ValueError(errors[0])
