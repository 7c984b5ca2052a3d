"""Start the MIML Scenes web app.

    python visualization.py [--host 127.0.0.1] [--port 5000] [--model DIR] [--data DIR] [--server waitress|flask]

Loads the shipped model (or --model), takes the dataset from --data or $MIML_DATA
when present, and serves on 127.0.0.1:5000. Flask's debugger is never enabled.
"""
import argparse
import os
import sys

from model.cli import add_verbose_flag, quiet_tensorflow


def main(argv=None):
    p = argparse.ArgumentParser(prog="python visualization.py", description="Serve the MIML Scenes web app.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--model", help="model directory (default: the shipped model)")
    p.add_argument("--data", help="dataset directory for the test gallery (default: $MIML_DATA, if set)")
    p.add_argument("--server", choices=["waitress", "flask"], default="waitress",
                   help="waitress (default: production WSGI server, 8 threads) or flask's development server")
    p.add_argument("--threads", type=int, default=8, help="waitress worker threads")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    data = args.data or os.environ.get("MIML_DATA") or None

    quiet_tensorflow(args.verbose)
    from app import create_app
    from model.data import DataError
    from model.modeldir import ModelDirError
    try:
        app = create_app(args.model, data)
    except (ModelDirError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    url = f"http://{'localhost' if args.host in ('127.0.0.1', 'localhost') else args.host}:{args.port}/"
    if args.server == "waitress":
        from waitress import create_server
        server = create_server(app, host=args.host, port=args.port, threads=args.threads,
                               channel_timeout=30, max_request_body_size=app.config["MAX_CONTENT_LENGTH"] + 65536)
        print(f"MIML Scenes ready at {url}", flush=True)
        server.run()
    else:
        print(f"MIML Scenes ready at {url}", flush=True)
        app.run(host=args.host, port=args.port, debug=False, use_reloader=False, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
