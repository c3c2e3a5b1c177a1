"""fastadv: fast adversarial training (Std / Adv / Adv+) and class-wise robustness evaluation."""

__version__ = "0.1.0"
