"""Models: the network a run trains and evaluates, and the files it is saved to or loaded from.

Owns build_model (build.py: a torchvision or timm network by name with its K+M head and
Normalize inside), the architecture lookup and per-family defaults (zoo.py), the field's weight
file layouts, each with its one unwrapping rule (weights.py), and fastadv's own training
checkpoints (checkpoint.py: atomic save, `weights_only` load, resume fingerprint).
"""

from fastadv.models.build import Normalize, RobustClassifier, build_model, predict_k  # noqa: F401
