"""Start the MIML Scenes web app.

    python visualization.py [--host 127.0.0.1] [--port 5000] [--model DIR] [--data DIR] [--server waitress|flask]
                            [--runtime auto|openvino|litert|keras]
                            [--precision auto|f32|bf16|int8] [--workers N] [--feedback DIR] [--no-explore]
                            [--runs DIR] [--max-runs-gb 10] [--allowed-host NAME ...]
                            [--jobs local|ray] [--ray-address ADDRESS]

Loads the shipped model (or --model), takes the dataset from --data or $MIML_DATA
when present, and serves on 127.0.0.1:5000. Flask's debugger is never enabled.
Full-mode training jobs run on this machine, or with --jobs ray on a Ray cluster (docs/deploy.md).
With a dataset, the embeddings of its photos (similar photos, /map) are computed in the
background after start-up, or read from the cache.
"""

import argparse
import gc
import os
import socket
import sys
from pathlib import Path

from model.cli import add_runtime_flags, add_verbose_flag, quiet_tensorflow

# waitress, set deliberately (see docs/security.md); a public deployment goes behind a reverse proxy.
WAITRESS = {
    "connection_limit": 500,  # open connections, slow ones included (waitress's default, 100, let 100 idle clients
    # lock everyone out); kept under the usual limit of 1024 open files
    "asyncore_use_poll": True,  # poll(), not select(): no limit on file descriptor numbers
    "channel_timeout": 30,  # seconds a connection may sit idle...
    "cleanup_interval": 5,  # ...checked this often, so it is closed 30 to 35 s after its last byte
    "backlog": 1024,  # connections waiting to be accepted
}


def check_port(host, port):
    """Raise OSError if host:port cannot be listened on (in use, or an unknown address), before the model loads."""
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no obstacle
            s.bind(address)


def check_ray(address):
    """For --jobs ray: False (after saying why) without Ray's job client; a warning when the cluster does not
    answer (it may come up later: jobs started before that fail, saying so)."""
    try:
        from workspace.ray_jobs import RayJobError, connect
    except ImportError as e:
        print(f"error: --jobs ray needs ray[default]: pip install -r requirements-scale.txt ({e})", file=sys.stderr)
        return False
    try:
        connect(address)
    except RayJobError as e:
        print(f"warning: {e}", file=sys.stderr)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(prog="python visualization.py", description="Serve the MIML Scenes web app.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--model", help="model directory (default: the shipped model)")
    p.add_argument("--data", help="dataset directory for the test gallery (default: $MIML_DATA, if set)")
    p.add_argument(
        "--server",
        choices=["waitress", "flask"],
        default="waitress",
        help="waitress (default: production WSGI server, 8 threads) or flask's development server",
    )
    p.add_argument("--threads", type=int, default=8, help="waitress worker threads")
    add_runtime_flags(p)
    p.add_argument("--workers", type=int, help="forward passes that run at once (default 2)")
    p.add_argument(
        "--no-explore",
        action="store_true",
        help="skip the dataset's embeddings (similar photos, the map): nothing runs in the background",
    )
    p.add_argument(
        "--feedback",
        metavar="DIR",
        help="let users correct the labels of uploaded photos; stored in DIR as a dataset (labels.csv + original/)",
    )
    p.add_argument(
        "--runs",
        default=str(Path(__file__).resolve().parent / "runs"),
        help="folder for uploaded datasets and trained models (default: runs/ beside this file)",
    )
    p.add_argument(
        "--max-runs-gb",
        type=float,
        default=10,
        help="most gigabytes the runs folder may hold; a dataset upload that would go over is refused (default 10)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host header to answer besides localhost, 127.0.0.1, [::1] and --host (repeatable)",
    )
    p.add_argument(
        "--jobs",
        choices=["local", "ray"],
        default="local",
        help="where full-mode training runs: on this machine (default), or submitted to a Ray cluster as Ray jobs "
        "(its nodes must see this project and --runs at the same paths; quick mode always runs here)",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="the Ray cluster's dashboard, for --jobs ray (default: $RAY_ADDRESS, else http://127.0.0.1:8265)",
    )
    add_verbose_flag(p)
    args = p.parse_args(argv)
    if args.ray_address and args.jobs != "ray":
        p.error("--ray-address is for --jobs ray")
    data = args.data or os.environ.get("MIML_DATA") or None
    try:
        check_port(args.host, args.port)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2

    if args.jobs == "ray" and not check_ray(args.ray_address):
        return 2

    from model.data import DataError
    from model.modeldir import ModelDirError, read_model_dir
    from workspace import FeedbackError, WorkspaceError  # WorkspaceError: a store a newer version wrote

    try:
        read_model_dir(args.model)  # a bad model directory: one line before TensorFlow starts
        quiet_tensorflow(args.verbose, on_demand=True)  # imported only if a Keras model is loaded (not cached)
        from app import create_app

        app = create_app(
            args.model,
            data,
            allowed_hosts=[args.host, *args.allowed_host],
            runtime=args.runtime,
            precision=args.precision,
            workers=args.workers,
            explore=not args.no_explore,
            feedback_dir=args.feedback,
            runs_dir=args.runs,
            runs_quota_bytes=int(args.max_runs_gb * (1 << 30)),
            jobs=args.jobs,
            ray_address=args.ray_address,
        )
    except (ModelDirError, DataError, FeedbackError, WorkspaceError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if app.config["LABEL_MISMATCH"]:
        print(f"warning: {app.config['LABEL_MISMATCH']}", file=sys.stderr)
    # What start-up built (TensorFlow's modules, the model, the app: about 430,000 objects) lives as long as the
    # process, so the cyclic collector stops scanning it: a full collection over it took 0.2-0.3 s, a pause in
    # whichever request triggered it.
    gc.collect()
    gc.freeze()
    url = f"http://{'localhost' if args.host in ('127.0.0.1', 'localhost') else args.host}:{args.port}/"
    if args.server == "waitress":
        from waitress import create_server

        # The largest route's limit (a dataset ZIP), and 1 MB for the multipart framing: a larger body is refused
        # by waitress from its Content-Length before it is read; a smaller one over its route's limit gets the
        # app's 413 (JSON under /api/).
        body_limit = max(app.config["MAX_CONTENT_LENGTH"], app.config.get("MAX_DATASET_BYTES", 0)) + (1 << 20)
        server = create_server(
            app, host=args.host, port=args.port, threads=args.threads, max_request_body_size=body_limit, **WAITRESS
        )
        print(f"MIML Scenes ready at {url}", flush=True)
        server.run()
    else:
        print(f"MIML Scenes ready at {url}", flush=True)
        app.run(host=args.host, port=args.port, debug=False, use_reloader=False, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
