"""Evaluation: from a trained run (or a weights file) to predictions CSVs and eval.json.

Owns the suites, every evaluation setting with its key, runner and scorer (suites.py,
suites_robustness.py), the evaluation run itself (evaluate.py) and its resume across interrupted
runs (resume.py), `fastadv eval --weights` without a training run (evaluate_weights.py),
ImageNet-C generation from the val images (imagenet_c_generate.py) and eval.json summaries
(summary.py: the short tables printed when train, eval and metrics finish). Scoring of the saved predictions lives in fastadv.analysis.

Importing this package registers the robustness suites (AutoAttack, masking checks, paper-code)
into the suites registry, so every user of fastadv.eval.suites sees them; suites.py itself does
not import them (suites_robustness.py imports suites.py: no circle).
"""

from fastadv.eval import suites_robustness  # noqa: F401 (registers its settings and suites)
