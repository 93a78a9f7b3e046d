"""`fawkes-fast serve`: cloaking as an HTTP service (see fawkes_fast/serve and README "Serve")."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from ..serve.config import add_arguments

    p = subparsers.add_parser("serve", help="run the cloaking HTTP service and its page",
                              description="Cloaking as an HTTP service: POST /v1/cloak, GET / for the page.")
    add_arguments(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from ..serve.config import from_args
    from ..serve.server import run  # fastapi and uvicorn only when serving

    return run(from_args(args))
