"""eval.autoattack_grouping=whole: AutoAttack over all of this rank's evaluated images at once, as the
official call does it, then scored batch by batch through evaluate's ordinary per-batch path.

pyautoattack's `run_standard_evaluation` regroups, before each attack, the still-robust images of
the whole set into chunks of bs, and each attack draws its random start per chunk; one run per eval
batch (grouping=batch) groups them differently, so an image whose outcome hinges on its random start
can differ. Here every batch is loaded first (images on the CPU; pyautoattack moves each chunk of
bs = eval.batch_size to the device), AutoAttackRun runs once over all of them, and the stored
adversarial images and per-image columns are handed back per batch by `Precomputed`, so predictions,
CSV columns and the scoring rule are the per-batch ones. No per-batch resume: an interrupted attack
phase restarts (deterministic: pyautoattack seeds each attack from eval.seed). Under torchrun each rank
runs its own shard as one set, so the equality with the official call holds for one process.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fastadv.attacks.auto_attack import AutoAttackResult, AutoAttackRun
from fastadv.eval.suites import Setting
from fastadv.runtime.device import autocast, to_device


def runs_whole(setting: Setting, cfg) -> bool:
    """An AutoAttack setting under eval.autoattack_grouping=whole."""
    return isinstance(setting.attack, AutoAttackRun) and cfg.eval.autoattack_grouping == "whole"


class Precomputed:
    """The attack callable of a whole-set setting: the stored (x_adv, columns) of the current batch."""

    returns_extras = True

    def __init__(self, run: AutoAttackRun, results: dict[int, AutoAttackResult], channels_last: bool) -> None:
        self.run, self.results, self.channels_last, self.current = run, results, channels_last, -1

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor):
        x_adv, extra = self.run.columns(self.results[self.current])
        return to_device(x_adv, x.device, self.channels_last), extra

    def batches(self, numbered: list[tuple[int, Any]]):
        """(number, batch) as evaluate's _predict iterates them, the current batch set for __call__."""
        for number, batch in numbered:
            self.current = number
            yield number, batch


def attack_whole_set(model, batches, setting: Setting, cfg, device, amp, batch_size: int):
    """(the setting with a Precomputed attack, the (number, batch) pairs to score)."""
    numbered = list(batches)  # every batch of this rank's shard, images on the CPU
    full = [(n, b) for n, b in numbered if b.images.shape[0] > 0]
    results: dict[int, AutoAttackResult] = {}
    if full:
        x = torch.cat([b.images for _, b in full])
        y = torch.cat([b.labels for _, b in full])
        with autocast(device, amp):
            result = setting.attack.run(model, x, y, batch_size=batch_size)
        start = 0
        for number, batch in full:
            rows = slice(start, start + batch.images.shape[0])
            start = rows.stop
            results[number] = AutoAttackResult(result.x_adv[rows], result.robust[rows], result.broken_by[rows],
                                               result.attacked_on[rows])
    attack = Precomputed(setting.attack, results, cfg.train.channels_last)
    return dataclasses.replace(setting, attack=attack), attack.batches(numbered)
