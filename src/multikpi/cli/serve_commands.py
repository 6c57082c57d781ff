"""The `serve` and `export` subcommands (docs/serving.md): their parsers and commands, kept in one
module so that cli/main.py only registers them. Each command returns an exit code (None = 0)."""
from __future__ import annotations

import argparse

BACKENDS = ("torch", "onnx")  # multikpi.serve.backends.BACKENDS (not imported: --help loads no torch)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve a run over HTTP: POST /rank, /predict; GET /health, /metadata, /metrics")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="eager PyTorch, or onnxruntime on RUN_DIR/model.onnx (exported in memory when absent)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per worker (default 1)")
    p.add_argument("--max-candidates", type=int, default=5000, help="candidates per /rank request, rows per /predict")
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="largest request body (413 above)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))

    p = sub.add_parser("export", help="export a run's model (ONNX) after a parity gate against PyTorch")
    p.add_argument("run_dir")
    p.add_argument("--format", default="onnx", help="onnx (the only format)")
    p.add_argument("--out", default=None, help="output .onnx file (default: RUN_DIR/model.onnx, which "
                   "`serve --backend onnx` reads)")
    p.add_argument("--rows", type=int, default=20_000, help="rows of the test split the gate compares (default 20000)")


def serve(args: argparse.Namespace) -> None:
    from multikpi.errors import DataError
    from multikpi.extras import import_extra

    for module in ("fastapi", "uvicorn", "prometheus_client", "orjson"):
        import_extra(module, "multikpi serve")
    if args.backend == "onnx":
        for module in ("onnx", "onnxruntime", "onnxscript"):
            import_extra(module, "multikpi serve --backend onnx")
    from multikpi.service.schema import Limits
    from multikpi.service.server import ServeSettings
    from multikpi.service.server import serve as run_server

    for name in ("port", "workers", "threads", "max_candidates", "max_body_bytes"):
        value = vars(args)[name]
        if value < (0 if name == "port" else 1) or (name == "port" and value > 65535):
            flag = "--" + name.replace("_", "-")
            raise DataError(f"{flag} must be {'a port number 0..65535' if name == 'port' else 'a positive integer'}. "
                            f"Got {value}")
    settings = ServeSettings(args.run_dir, args.backend, args.threads, Limits(args.max_candidates, args.max_body_bytes))
    run_server(settings, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)


def export(args: argparse.Namespace) -> None:
    from multikpi.errors import DataError
    from multikpi.extras import import_extra

    for module in ("onnx", "onnxruntime", "onnxscript"):
        import_extra(module, "multikpi export")
    from multikpi.serve.export import ATOL, RTOL, export_run

    if args.rows < 0:
        raise DataError(f"--rows must be a non-negative integer. Got {args.rows}")
    report = export_run(args.run_dir, args.out, args.format, args.rows)
    checked = (f"{report.rows_checked:,} {report.split} rows and {report.requests_checked:,} requests"
               if report.split else "a probe batch (the run's test/valid file is not there)")
    print(f"parity with PyTorch (fp32) on {checked}: max abs difference {report.max_abs_diff:.2g} "
          f"(rtol {RTOL:g}, atol {ATOL:g} x each output's largest magnitude), same top-k")
    print(f"wrote {report.path} ({report.size_bytes / 2**20:.1f} MiB; inputs categorical int64, dense float32; "
          f"outputs {', '.join(report.outputs)})")
