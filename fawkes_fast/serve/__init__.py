"""`fawkes-fast serve`: cloaking as an HTTP service, with a page for people who do not write code.

    fawkes-fast serve --port 8000
    curl --data-binary @me.jpg -o me_cloaked.png http://127.0.0.1:8000/v1/cloak?seed=1

Modules: `config` (options), `limits` (body and pixel caps and the body's clock, checked before
decoding), `admission` (what a request holds once its body is in: a queue place, its pixels), `batcher`
(gathers concurrent requests into one `Cloaker.cloak` call, stops batches nobody waits for),
`service` (what the endpoints share), `service_request` (one POST /v1/cloak), `metrics` (Prometheus
text format), `responses` (results to HTTP), `guard` (Host and Origin checks against other web
pages), `page` (the page and its Content-Security-Policy), `threads` (torch's thread count), `app`
(the FastAPI app), `server` (uvicorn with a graceful drain), `launch` (start a real server as a
subprocess: tests and benchmarks).
FastAPI and uvicorn are imported only here, never by `import fawkes_fast`.
"""
