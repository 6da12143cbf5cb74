"""`workbench app`: serve the Gradio workbench (apps/) on loopback."""

from __future__ import annotations

from ..errors import InputError


def register(sub) -> None:
    p = sub.add_parser("app", help="start the web app (Model, Steering, Prefix & Sinks, Latent reasoning, Training)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    p.add_argument("--model", default=None, help="model selected when a page opens (default: smollm2-135m)")
    p.add_argument("--allow-dir", action="append", default=[], metavar="FOLDER",
                   help="folder the app may read files from (local models, head files, recipe folders); repeatable. "
                        "Saved files go to --out-dir, by default workbench-outputs inside the first one")
    p.add_argument("--out-dir", default=None, metavar="FOLDER",
                   help="where the app saves vectors and training runs (default: workbench-outputs in the first "
                        "--allow-dir, else a private temporary folder); nothing is replaced unless 'overwrite' is ticked")
    p.add_argument("--max-vector-mb", type=float, default=None, metavar="MB",
                   help="largest steering-vector file the app reads (default 64)")
    p.add_argument("--max-head-mb", type=float, default=None, metavar="MB",
                   help="largest latent-head file the app reads (default 2048)")
    p.add_argument("--concurrency", type=int, default=4, help="requests run at once (queue concurrency limit, default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default: auto)")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    p.set_defaults(func=_app)


def _app(args) -> int:
    if args.port is not None and not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    if args.concurrency < 1:
        raise InputError(f"--concurrency must be >= 1, got {args.concurrency}")
    from apps.app import build_app, launch

    if args.out_dir is not None:
        from ..errors import check_writable_target

        import os

        if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
            raise InputError(f"--out-dir {args.out_dir!r} is a file; give a folder (created if missing)")
        check_writable_target(args.out_dir, "--out-dir")
    caps = {}
    for flag, key in (("max_vector_mb", "--max-vector-mb"), ("max_head_mb", "--max-head-mb")):
        v = getattr(args, flag)
        if v is not None:
            if not (v > 0 and v != float("inf")):
                raise InputError(f"{key} must be a finite number of megabytes > 0, got {v}")
            caps[flag] = v
    demo = build_app(args.model, args.allow_dir, device=args.device, dtype=args.dtype, out_dir=args.out_dir, **caps)
    launch(demo, host=args.host, port=args.port, share=args.share, concurrency=args.concurrency, share_hint="--share")
    return 0
