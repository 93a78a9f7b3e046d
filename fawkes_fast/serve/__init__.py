"""`fawkes-fast serve`: cloaking as an HTTP service, with a page for people who do not write code.

    fawkes-fast serve --port 8000
    curl --data-binary @me.jpg -o me_cloaked.png http://127.0.0.1:8000/v1/cloak?seed=1

Modules: `config` (options), `limits` (body and pixel caps, checked before decoding), `batcher`
(gathers concurrent requests into one `Cloaker.cloak` call), `metrics` (Prometheus text format),
`responses` (results to HTTP), `app` (the FastAPI app), `server` (uvicorn with a graceful drain),
`launch` (start a real server as a subprocess: tests and benchmarks).
FastAPI and uvicorn are imported only here, never by `import fawkes_fast`.
"""
