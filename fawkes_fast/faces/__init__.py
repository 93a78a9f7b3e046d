"""Face detection, landmarks and differentiable alignment.

Importing this package loads no model and does not import dlib, cv2 or torch; models load
lazily on first use.
"""
from .align import (arcface_chip_matrix, arcface_reference_matrix, chip_matrix, compose,
                    crop_matrix, dlib_chip_matrix, face_chip_matrix, invert_affine,
                    opencv_aligncrop_matrix, points_needed, translate_scale, umeyama, warp_chips)
from .detect import Face, FaceDetector
from .yunet import YuNet, add_yunet_points

__all__ = [
    "Face", "FaceDetector", "chip_matrix", "warp_chips", "dlib_chip_matrix",
    "arcface_chip_matrix", "compose", "crop_matrix", "invert_affine", "translate_scale",
    "umeyama", "arcface_reference_matrix", "opencv_aligncrop_matrix",
    "face_chip_matrix", "points_needed", "YuNet", "add_yunet_points",
]
