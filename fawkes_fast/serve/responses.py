"""From a CloakResult to an HTTP answer.

Status mapping (documented in README "Serve"):
  cloaked      200, the image bytes (metadata stripped), X-Fawkes-Status: cloaked
  no_face      200, JSON {"status": "no_face", "message": ...}, no image: nothing needed changing
  over_budget  422, JSON: a face's cloak could not stay within the budget; nothing is returned
  error        422, JSON with the core's one-line message (never a traceback): the photo decoded but
               could not be cloaked with these settings (e.g. JPEG quality too low for the budget)
With `Accept: application/json` a cloaked answer is JSON too, the image base64-encoded.
"""
from __future__ import annotations

import base64
import json

from fastapi.responses import JSONResponse, Response

from .config import FORMATS
from .limits import Problem

MESSAGES = {
    "no_face": "No face was found in this photo, so it was not changed and there is nothing to download.",
    "over_budget": "A face in this photo could not be cloaked without a visible change beyond this mode's "
                   "budget, so no image was produced. Try a higher mode.",
    "error": "This photo could not be cloaked",
}


def face_summary(face, full: bool = False) -> dict:
    """The per-face report: compact for the header, with distances and landmarks when `full`."""
    out = {"box": [round(float(v), 1) for v in face.box], "region": [int(v) for v in face.region],
           "dssim": round(float(face.dssim), 6), "steps": int(face.steps), "target": face.target}
    delta_e = getattr(face, "delta_e", None)
    if delta_e is not None:
        out["delta_e"] = round(float(delta_e), 4)
    seen = getattr(face, "visibility", None)
    if seen:  # the judges' verdict on the saved file: words for people, figures for code
        out["looks_like"] = seen["in_words"]
        out["butteraugli"], out["ssimulacra2"] = round(seen["butteraugli"], 3), round(seen["ssimulacra2"], 2)
    if full:
        out["landmarks"] = face.landmarks
        out["distances"] = face.distances
    return out


def problem_response(p: Problem) -> JSONResponse:
    return JSONResponse({"status": p.status, "message": p.message}, status_code=p.code,
                        headers={"X-Fawkes-Status": p.status, **p.headers})


def result_response(result, *, fmt: str, seed: int, batch_size: int, want_json: bool) -> Response:
    headers = {"X-Fawkes-Status": result.status, "X-Fawkes-Seed": str(seed),
               "X-Fawkes-Batch-Size": str(batch_size)}
    if result.status == "cloaked" and result.encoded:
        faces = [face_summary(f, full=want_json) for f in result.faces]
        target = faces[0]["target"] if faces else None  # the largest face's: pass it as ?target= to
        if target is not None:                           # give a person's other photos the same one
            headers["X-Fawkes-Target"] = target
        if want_json:
            body = {"status": "cloaked", "seed": seed, "format": fmt, "content_type": FORMATS[fmt],
                    "batch_size": batch_size, "target": target, "faces": faces,
                    "image": base64.b64encode(result.encoded).decode("ascii")}
            return JSONResponse(body, headers=headers)
        headers["X-Fawkes-Faces"] = json.dumps(faces, separators=(",", ":"))
        return Response(result.encoded, media_type=FORMATS[fmt], headers=headers)
    if result.status == "no_face":
        return JSONResponse({"status": "no_face", "seed": seed, "message": MESSAGES["no_face"], "faces": []},
                            headers=headers)
    if result.status == "over_budget":
        return JSONResponse({"status": "over_budget", "message": MESSAGES["over_budget"],
                             "faces": [face_summary(f) for f in result.faces]}, status_code=422, headers=headers)
    detail = (result.error or "unknown failure").splitlines()[0]
    headers["X-Fawkes-Status"] = "error"
    return JSONResponse({"status": "error", "message": f"{MESSAGES['error']}: {detail}"},
                        status_code=422, headers=headers)
