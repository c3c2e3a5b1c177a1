"""AutoAttack's attack names and versions: the registry the config validates against (no torch).

It sits below fastadv.config.validation, which checks eval.autoattack_* with it before any attack
runs; auto_attack.py, which runs pyautoattack, imports it too.
"""

from __future__ import annotations

from fastadv.errors import FastadvError

ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")  # pyautoattack's AttackName
VERSIONS = ("standard", "plus", "rand", "custom")


def check_autoattack_names(version: str, attacks: tuple[str, ...]) -> None:
    """One clear line for an unknown version or attack name, or a custom version with no attacks."""
    if version not in VERSIONS:
        raise FastadvError(f"eval.autoattack_version={version!r} is not one of: {', '.join(VERSIONS)}")
    unknown = [a for a in attacks if a not in ATTACK_NAMES]
    if unknown:
        raise FastadvError(f"unknown AutoAttack attack name(s) {', '.join(map(repr, unknown))} in eval.autoattack_attacks; "
                           f"pyautoattack knows: {', '.join(ATTACK_NAMES)}")
    if version == "custom" and not attacks:
        raise FastadvError("eval.autoattack_version=custom needs eval.autoattack_attacks, e.g. apgd-ce,square")
