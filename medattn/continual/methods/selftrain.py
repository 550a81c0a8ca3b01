"""Self-training: learn a new domain from its unlabelled images through confident pseudo-labels, with replay.

A label-free method (:attr:`MethodSpec.label_free`): a domain whose training cases have no labels (``medattn adapt
--labelled 0``, or a manifest that gives none) is still trained on. Before each epoch of a domain the current model
segments the domain's unlabelled volumes (``experience.unlabelled``) by sliding window; each voxel whose predicted
class has softmax probability of at least ``confidence`` takes that class as its label, the others are marked
:data:`~medattn.train.losses.IGNORE` and take no part in the loss. The pseudo-labelled volumes then go through the
domain's own patch sampling and augmentation beside any labelled volumes it has (patches are centred on foreground
or unconfident voxels with the plan's foreground ratio, so structures and their uncertain borders are sampled),
and the segmentation loss is the usual one on the confident voxels.

Self-training can reinforce its own mistakes; two things keep it in bounds. The pseudo-labels are recomputed each
epoch (``refresh: epoch``) from the model being adapted, so what it learns on the confident core can spread to the
border; and the replay memory of :mod:`~medattn.continual.methods.replay` (Avalanche's ``ReplayPlugin``, the same
parameters and defaults) keeps drawing the stored labelled patches of the domains learned before, so the old
domains' ground truth stays in every step. Only labelled patches are stored, never pseudo-labels.

A better teacher (``mirror``, default all three axes). The pseudo-labels trained on are the mean of the model's
predictions over every mirroring of the volume (as ``medattn predict --tta`` does: 8 network passes for three axes),
which makes fewer border errors than one pass: on simulated scanner C's 21 val cases the unadapted hippocampus
model's Dice is 0.734 from one pass and 0.748 from the mirrored mean (0.741 with axis 0 alone; docs/results.md, "Few
labels and none"). The passes that only decide (the volume check, the teacher, the volume weights' first estimate)
run once, unmirrored. Mirroring is used only where the network was trained on flipped images
(:func:`~medattn.continual.runner.mirrored_training`); otherwise each labelling pass records why not.

Old labels in every step (``mem_batch``, default 8, twice replay's default beside the 2 x 2 current patches).
Pseudo-labels of a shifted domain pull the network away from the old scanners more than true labels do; on
simulated scanner B's val split 8 memory patches a step kept the original domain at 0.875 against 0.870 with 4
(BWT -0.009 against -0.015), for 0.749 against 0.761 on B (docs/results.md, "Few labels and none").

The new scanner on old labels (``style_share``, default 1). Pseudo-labels carry the model's errors on
the new scanner; the replay memory holds true labels, but shown as the old scanners showed them. With
``style_share`` > 0 the new scanner's acquisition is measured on its unlabelled images (resolution, intensity
curve, noise: :mod:`~medattn.continual.methods._acquisition`) and ``style_share`` x as many stored labelled patches
as there are pseudo-labelled volumes are added to the domain's data, shown as the new scanner would show them;
the measurement goes into the pseudo-labelling record (``acquisition``).

Knowing when not to adapt. With ``medattn adapt --auto`` a domain that has not drifted is left alone
(:mod:`medattn.drift.gate`). A domain that has drifted so far that the model is lost on it (an inverted contrast,
say) would be made worse by its own pseudo-labels; the sign is in the predicted volumes. A structure's size in mm^3
does not depend on the scanner, so before self-training on a domain the mean volume the model predicts for each
class on its unlabelled images (at the plan's spacing, before any confidence filter) is compared with the mean
labelled volume of the domains trained on so far; outside ``1 / volume_ratio`` to ``volume_ratio`` times that, the
pseudo-labels of the images as stored are not used.

Lost, but only in the encoding (``translate``, default true). A contrast inversion loses the model (the
hippocampus model scores 0.25 Dice on simulated scanner B and predicts 0.27x and 0.54x the structures' volumes),
yet the anatomy is all there: with each volume's body intensities mapped onto the labelled domains' through a
decreasing curve (its brightest voxels take the reference's darkest intensities) the unchanged model predicts
0.96x and 0.94x (docs/results.md, "Few labels and none"). So where the images as stored give
implausible volumes, each volume is shown to the model translated (:func:`~._acquisition.translate`: its own body
quantiles onto the mean quantile curve of the labelled volumes learned so far), through an increasing curve
(``matched``) and a decreasing one (``inverted``); the plausible one with the highest mean confidence makes
the pseudo-labels, before every epoch, while the model trains on the images as stored; under ``inverted`` the
styled memory shows the stored patches through a decreasing curve too. Only when neither is plausible is the
domain refused, and without labelled cases not trained on (the run's decisions say why). The test cases choose
nothing: the decision uses the domain's unlabelled training images and the labelled volumes of the domains before
it.

Avalanche hooks used: ``after_train_dataset_adaptation`` (the experience's dataset becomes labelled + pseudo-labelled
patches, before the replay plugin wraps it in its data loader), ``before_training_epoch`` (refresh) and
``after_training_exp`` (the labelled volumes join the reference structure volumes). The runner asks
:meth:`PseudoLabelPlugin.veto` before a domain without labelled cases, and the pass it makes is the one training
uses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from torch.utils.data import Dataset

from medattn.continual.methods import Method, MethodContext, MethodSpec, Param
from medattn.continual.methods import replay as replay_method
from medattn.continual.methods._acquisition import body_quantiles
from medattn.continual.methods._acquisition import translate as translate_body
from medattn.errors import ConfigError
from medattn.train.losses import IGNORE

log = logging.getLogger(__name__)

#: When pseudo-labels are recomputed: at every epoch of a domain, or once at its start.
REFRESH = ("epoch", "experience")
#: How the model is shown a domain's images for their pseudo-labels: as stored, or with their body intensities
#: translated onto the labelled domains' through an increasing or a decreasing curve (the direction of the curve).
TEACHERS = {"as stored": 0, "matched": 1, "inverted": -1}


class PseudoLabelled(Dataset):
    """Unlabelled cached volumes with their current pseudo-labels, through a domain's random patch pipeline.

    ``labels[i]`` is (1, X, Y, Z) uint8 (class indices, :data:`IGNORE` where unconfident), set by
    :class:`PseudoLabelPlugin`; the item is ``transform({"image", "label", "case_id", "domain"})``.
    """

    def __init__(self, volumes: Any, transform: Any) -> None:
        self.volumes = volumes
        self.transform = transform
        self.labels: list[torch.Tensor | None] = [None] * len(volumes)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> Any:
        from monai.transforms import apply_transform

        label = self.labels[index]
        if label is None:
            raise RuntimeError("pseudo-labels are made before the first epoch; none for this volume yet")
        vol = self.volumes[index]
        image = vol["image"]
        item = {
            "image": image.clone() if hasattr(image, "clone") else image,  # the cache stays as it was
            "label": label.float(),
            "case_id": vol.get("case_id"),
            "domain": vol.get("domain"),
        }
        return apply_transform(self.transform, item)


class StyledMemory(Dataset):
    """Stored labelled patches as the new scanner would show them (:class:`~._acquisition.TargetStyle`), then
    augmented as replayed patches are; each of the ``length`` items is ``per_item`` patches drawn at random."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        style: Any,
        augment: Any,
        length: int,
        per_item: int,
        seed: int,
    ) -> None:
        self.images, self.labels, self.style, self.augment = images, labels, style, augment
        self.length, self.per_item = int(length), int(per_item)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        from monai.transforms import apply_transform

        out = []
        for _ in range(self.per_item):
            k = int(self.rng.integers(self.images.shape[0]))
            item = self.style({"image": self.images[k].float(), "label": self.labels[k].float(), "domain": "styled"})
            out.append(item if self.augment is None else apply_transform(self.augment, item))
        return out


class PseudoLabelPlugin(SupervisedPlugin):
    """Confident pseudo-labels of a domain's unlabelled volumes as training data (see the module docstring).

    Attributes:
        confidence: minimum softmax probability of the predicted class for a voxel to be labelled.
        refresh: ``"epoch"`` or ``"experience"``.
        history: one record per labelling pass: ``domain``, ``epoch``, ``volumes``, ``confident`` (the share of
            voxels labelled), ``foreground`` (the share labelled as a foreground class), and for the first pass of a
            domain ``volume_ratio`` (per class, predicted over labelled mean volume) and ``used``.
        volume_ratio: the plausible range of predicted over labelled structure volume (0: no check).
        match_volumes: scale the class probabilities so the pseudo-labelled structure volumes approach the labelled
            domains' mean (:attr:`weights`, updated after every pass).
        reference: per class, the summed labelled voxel count and the number of volumes it came from; per channel,
            the summed body-intensity quantiles (:data:`~._acquisition.LEVELS`) of those volumes.
        translate: where the images as stored give implausible volumes, try them translated (module docstring);
            one direction for all channels (a multi-channel domain with one channel inverted is refused).
        teacher: how the current domain's images are shown for its pseudo-labels (a key of :data:`TEACHERS`).
        mirror: spatial axes whose mirrorings the pseudo-labels average over (test-time augmentation, 2^n passes
            per volume); the passes that only decide (plausibility, teacher, volume weights) run unmirrored.
        mirror_refused: why the ``mirror`` asked for is not used (the network was not trained on flipped images),
            recorded with every labelling pass that would have used it; None if it is.
    """

    def __init__(
        self,
        confidence: float,
        refresh: str = "epoch",
        class_share: float = 0.0,
        volume_ratio: float = 0.0,
        match_volumes: bool = False,
        style_share: float = 0.0,
        translate: bool = False,
        memory: Any = None,
        samples_per_volume: int = 1,
        seed: int = 0,
        mirror: tuple[int, ...] = (),
        mirror_refused: str | None = None,
    ) -> None:
        super().__init__()
        self.mirror = tuple(int(a) for a in mirror)
        self.mirror_refused = mirror_refused
        self.style_share = float(style_share)
        self.translate = bool(translate)
        self.teacher = "as stored"  # the current domain's (TEACHERS)
        self.memory = memory  # the replay plugin's ForegroundPatchBuffer (labelled patches of the domains learned)
        self.samples_per_volume = int(samples_per_volume)
        self.seed = int(seed)
        self.styled: StyledMemory | None = None
        self.confidence = float(confidence)
        self.class_share = float(class_share)
        self.refresh = refresh
        self.volume_ratio = float(volume_ratio)
        self.match_volumes = bool(match_volumes)
        self.weights: list[float] | None = None
        self.dataset: PseudoLabelled | None = None
        self.history: list[dict[str, Any]] = []
        # "quantiles" sums "quantile_volumes" volumes' curves (a state saved before they were kept has none)
        self.reference: dict[str, Any] = {"voxels": [], "volumes": 0, "quantiles": None, "quantile_volumes": 0}
        self._prepared: tuple[int, str | None] | None = None  # (id of the experience, why its labels are refused)

    # ---- the decision ----------------------------------------------------------------------------------------

    def prepare(self, strategy: Any, exp: Any) -> str | None:
        """Pseudo-label ``exp``'s unlabelled volumes with the current model and check their volumes; returns why
        they are not used, or None. Done once per experience (the veto and the training share it)."""
        if self._prepared is not None and self._prepared[0] == id(exp):
            return self._prepared[1]
        pool = getattr(exp, "unlabelled", None)
        self.dataset, why = None, None
        if pool is not None and len(pool) > 0:
            self.dataset = PseudoLabelled(pool, exp.random_transform)
            self.weights, self.teacher = None, "as stored"
            predicted = self.label(strategy, epoch=0, domain=exp.domain)
            why = self.implausible(predicted, exp.domain)
            self.history[-1]["used"] = why is None
            if why is not None and self.translate:
                if self.reference["quantiles"] is None:
                    log.warning(
                        "selftrain: %s: no intensity curve of the labelled domains to translate onto (a state "
                        "saved before they were kept); the images as stored decide",
                        exp.domain,
                    )
                else:
                    predicted, why = self.try_translated(strategy, exp.domain, why)
            if why is not None:
                log.warning("selftrain: %s", why)
                self.dataset = None
            elif self.match_volumes and self.reference["volumes"]:
                # start the correction from the unscaled prediction's volumes, then label again with it
                self.weights = [1.0] * len(predicted)
                self.update_weights(predicted)
                self.label(strategy, epoch=0, domain=exp.domain, training=True)
            elif self.mirror:  # the labels trained on come from the mirrored pass
                self.label(strategy, epoch=0, domain=exp.domain, training=True)
            if why is None:
                self.styled = self.style_memory(exp)
        self._prepared = (id(exp), why)
        return why

    def try_translated(self, strategy: Any, domain: str, why: str) -> tuple[list[float], str | None]:
        """Pseudo-label the domain with its images translated each way (module docstring); keep the plausible
        teacher with the highest mean confidence. Returns its predicted class volumes and None, or (the last
        prediction, why none is plausible)."""
        found: dict[str, tuple[float, list[float], dict[str, Any]]] = {}
        predicted: list[float] = []
        for name in ("matched", "inverted"):  # the labels held are then the last one's
            self.teacher = name
            predicted = self.label(strategy, epoch=0, domain=domain)
            if self.implausible(predicted, domain) is None:
                found[name] = (float(self.history[-1]["mean_confidence"]), predicted, self.history[-1])
            self.history[-1]["used"] = False
        if not found:
            self.teacher = "as stored"
            shown = "; ".join(
                f"{r['teacher']}: " + ", ".join(f"{x:.2f}x" for x in r.get("volume_ratio", []))
                for r in self.history[-3:]
            )
            return predicted, f"{why}; nor through its intensities translated onto theirs ({shown})"
        self.teacher = max(found, key=lambda k: found[k][0])
        log.warning(
            "selftrain: %s: the model is lost on the images as stored but not on them with their intensities %s "
            "onto the labelled domains'; it pseudo-labels them so while it trains on them as stored",
            domain,
            self.teacher,
        )
        chosen = found[self.teacher][2]
        chosen["used"] = True
        # with match_volumes or mirroring the pass that follows labels again
        if self.teacher != name and not (self.match_volumes and self.reference["volumes"]) and not self.mirror:
            self.label(strategy, epoch=0, domain=domain)
            self.history.pop()  # a repeat of the chosen candidate's pass, which keeps the record
        # the chosen pass last: what follows (the acquisition) belongs to it
        self.history.append(self.history.pop(next(i for i, r in enumerate(self.history) if r is chosen)))
        return found[self.teacher][1], None

    def implausible(self, predicted: list[float], domain: str) -> str | None:
        """Why the predicted mean class volumes (voxels, background first) are implausible, or None."""
        ref, n = self.reference["voxels"], self.reference["volumes"]
        if self.volume_ratio <= 0 or not n:
            return None
        ratios = [p / (r / n) if r > 0 else float("inf") for p, r in zip(predicted[1:], ref[1:])]
        self.history[-1]["volume_ratio"] = [round(x, 4) for x in ratios]
        bad = [i + 1 for i, x in enumerate(ratios) if not 1 / self.volume_ratio <= x <= self.volume_ratio]
        if not bad:
            return None
        shown = ", ".join(f"class {c}: {ratios[c - 1]:.2f}x" for c in bad)
        return (
            f"on {domain}'s unlabelled images the model predicts {shown} the mean labelled volume of the domains "
            f"learned so far (plausible: {1 / self.volume_ratio:.2f}x to {self.volume_ratio:.2f}x); its "
            "pseudo-labels are not used"
        )

    def veto(self, strategy: Any, exp: Any) -> str | None:
        """For the runner: why not to train on ``exp`` at all (no labelled case, and pseudo-labels refused)."""
        volumes = getattr(exp, "volumes", None)
        if volumes is not None and len(volumes) > 0:
            return None
        return self.prepare(strategy, exp)

    # ---- Avalanche hooks -------------------------------------------------------------------------------------

    def after_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        from medattn.continual.scenario import avalanche_dataset

        self.prepare(strategy, strategy.experience)
        if self.dataset is None:
            return
        pseudo = avalanche_dataset(self.dataset)
        if self.styled is not None:
            pseudo = pseudo.concat(avalanche_dataset(self.styled))
        labelled = strategy.adapted_dataset
        strategy.adapted_dataset = pseudo if labelled is None or len(labelled) == 0 else labelled.concat(pseudo)

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        if self.dataset is not None and self.refresh == "epoch" and strategy.clock.train_exp_epochs > 0:
            epoch = int(strategy.clock.train_exp_epochs)
            self.label(strategy, epoch=epoch, domain=strategy.experience.domain, training=True)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Add the experience's labelled volumes to the reference structure volumes and intensity quantiles."""
        volumes = getattr(strategy.experience, "volumes", None)
        k = int(strategy.num_classes)
        if not self.reference["voxels"]:
            self.reference["voxels"] = [0.0] * k
        rng = np.random.default_rng(self.seed)
        for i in range(0 if volumes is None else len(volumes)):
            label = torch.as_tensor(volumes[i]["label"]).long().flatten()  # type: ignore[index]
            counts = torch.bincount(label.clamp(0, k - 1), minlength=k)
            self.reference["voxels"] = [a + float(b) for a, b in zip(self.reference["voxels"], counts.tolist())]
            self.reference["volumes"] += 1
            q = body_quantiles(volumes[i]["image"], rng)  # type: ignore[index]
            self.reference["quantiles"] = q if self.reference["quantiles"] is None else self.reference["quantiles"] + q
            self.reference["quantile_volumes"] += 1
        self.dataset, self.styled, self._prepared, self.teacher = None, None, None, "as stored"

    def style_memory(self, exp: Any) -> StyledMemory | None:
        """The stored labelled patches as ``exp``'s scanner would show them (``style_share`` > 0 and a memory with
        patches), sized ``style_share`` x the pseudo-labelled volumes; the measured acquisition goes into the
        labelling record."""
        from medattn.continual.methods._acquisition import TargetStyle, measure

        groups = [] if self.memory is None else [g for g in self.memory.buffer_groups.values() if len(g.case_ids)]
        if self.style_share <= 0 or not groups or self.dataset is None or exp.plan_spacing is None:
            return None
        images = torch.cat([g.images for g in groups])
        labels = torch.cat([g.labels for g in groups])
        direction = -1 if self.teacher == "inverted" else 1
        acq = measure(
            self.dataset.volumes, exp.unlabelled_spacing, exp.plan_spacing, images, seed=self.seed, direction=direction
        )
        self.history[-1]["acquisition"] = acq.record()
        log.info("selftrain: %s's acquisition as measured on its unlabelled images: %s", exp.domain, acq.record())
        length = max(1, round(self.style_share * len(self.dataset)))
        self.history[-1]["styled_patches"] = length * self.samples_per_volume
        seed = self.seed + len(self.history)
        return StyledMemory(
            images, labels, TargetStyle(acq, seed), self.memory.transform, length, self.samples_per_volume, seed
        )

    def state_dict(self) -> dict[str, Any]:
        q = self.reference["quantiles"]
        return {
            "reference": {
                "voxels": list(self.reference["voxels"]),
                "volumes": int(self.reference["volumes"]),
                "quantiles": None if q is None else q.tolist(),
                "quantile_volumes": int(self.reference["quantile_volumes"]),
            },
            # the passes so far (plain numbers and strings): a resumed run's pseudo_labels.json keeps them
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [dict(r) for r in state.get("history", ())]
        ref = state["reference"]
        q = ref.get("quantiles")
        self.reference = {
            "voxels": [float(v) for v in ref["voxels"]],
            "volumes": int(ref["volumes"]),
            "quantiles": None if q is None else np.asarray(q, dtype=np.float64),
            # a state of the first version with quantiles summed them over every labelled volume
            "quantile_volumes": 0 if q is None else int(ref.get("quantile_volumes", ref["volumes"])),
        }

    def confident(self, confidence: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The voxels whose pseudo-label is kept: confidence at least ``confidence``, or, per predicted class, among
        the ``class_share`` most confident voxels of that class (class-balanced self-training: under a shift the
        structures rarely reach the threshold that the background passes easily, and pseudo-labels of background
        alone would teach the model to shrink them)."""
        keep = confidence >= self.confidence
        if self.class_share > 0:
            for c in range(num_classes):
                mine = classes == c
                n = int(mine.sum())
                if n == 0:
                    continue
                cut = torch.quantile(confidence[mine].float(), 1.0 - self.class_share) if n > 1 else confidence[mine]
                keep |= mine & (confidence >= cut)
        return keep

    def update_weights(self, matched: list[float]) -> None:
        """One damped step of the prior correction: each foreground class's weight times the square root of its
        labelled over pseudo-labelled mean volume, within 1/4 to 4 (background keeps weight 1: its volume depends
        on the field of view, not on the anatomy)."""
        ref, n = self.reference["voxels"], self.reference["volumes"]
        if not self.match_volumes or not n or self.weights is None:
            return
        for c in range(1, len(self.weights)):
            if matched[c] > 0 and ref[c] > 0:
                step = (ref[c] / n / matched[c]) ** 0.5
                self.weights[c] = float(min(4.0, max(0.25, self.weights[c] * step)))

    @torch.no_grad()
    def label(self, strategy: Any, epoch: int, domain: str, training: bool = False) -> list[float]:
        """Pseudo-label every unlabelled volume with the current model (sliding window, eval mode; for the labels
        trained on (``training``), averaged over the :attr:`mirror` axes' mirrorings) before ``epoch`` (0-based) of
        the current experience, its class probabilities scaled by :attr:`weights` (when matching volumes) and
        renormalised; returns the mean voxels per class the unscaled model predicts."""
        mirror = self.mirror if training else ()
        assert self.dataset is not None
        labelled = foreground = total = 0
        k = int(strategy.num_classes)
        predicted = torch.zeros(k, dtype=torch.float64)
        matched = torch.zeros(k, dtype=torch.float64)
        weights = None if self.weights is None else torch.tensor(self.weights, dtype=torch.float32)
        direction = TEACHERS[self.teacher]
        reference = None
        if direction:
            reference = self.reference["quantiles"] / max(1, self.reference["quantile_volumes"])  # the mean curve
        rng = np.random.default_rng(self.seed)
        sure = 0.0
        for i in range(len(self.dataset)):
            image = self.dataset.volumes[i]["image"]
            image = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image)
            if reference is not None:
                image = translate_body(image, reference, direction, rng)
            (result,) = strategy._sliding_window(
                image[None].to(strategy.device), probabilities=True, mirror_axes=mirror
            )
            probs = result.probabilities.float()
            confidence, classes = probs.max(0)
            sure += float(confidence.double().mean())
            counts = torch.bincount(classes.flatten(), minlength=k).double().cpu()
            predicted += counts
            if weights is not None:
                probs = probs * weights.to(probs.device)[:, None, None, None]
                probs = probs / probs.sum(0, keepdim=True).clamp_min(1e-12)
                confidence, classes = probs.max(0)
                counts = torch.bincount(classes.flatten(), minlength=k).double().cpu()
            matched += counts
            label = classes.to(torch.uint8)
            label[~self.confident(confidence, classes, probs.shape[0])] = IGNORE
            self.dataset.labels[i] = label[None].cpu()
            kept = label != IGNORE
            labelled += int(kept.sum())
            foreground += int((kept & (label > 0)).sum())
            total += label.numel()
        record: dict[str, Any] = {
            "domain": domain,
            "epoch": epoch,
            "teacher": self.teacher,
            "volumes": len(self.dataset),
            "mean_confidence": round(sure / max(1, len(self.dataset)), 6),
            "confident": round(labelled / total, 6) if total else 0.0,
            "foreground": round(foreground / total, 6) if total else 0.0,
        }
        if weights is not None:
            record["weights"] = [round(float(w), 4) for w in weights]
        if mirror:
            record["mirror"] = list(mirror)
        elif training and self.mirror_refused:
            record["mirror_refused"] = self.mirror_refused
        self.history.append(record)
        self.update_weights((matched / max(1, len(self.dataset))).tolist())
        log.info(
            "selftrain: %s epoch %d: pseudo-labelled %d volume(s), %.1f%% of voxels confident (%.2f%% foreground)",
            record["domain"],
            record["epoch"],
            record["volumes"],
            100 * record["confident"],
            100 * record["foreground"],
        )
        return (predicted / max(1, len(self.dataset))).tolist()


def build(params: Mapping[str, Any], context: MethodContext) -> MethodSpec:
    confidence, refresh = params["confidence"], params["refresh"]
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence <= 1:
        raise ConfigError(f"selftrain: confidence must be a probability in (0, 1], got {confidence!r}")
    if refresh not in REFRESH:
        raise ConfigError(f"selftrain: refresh must be one of {', '.join(REFRESH)}, got {refresh!r}")
    replay = replay_method.build({p.name: params[p.name] for p in replay_method.METHOD.params}, context)
    share = params["class_share"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ConfigError(f"selftrain: class_share must lie in [0, 1], got {share!r}")
    ratio = params["volume_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (ratio == 0 or ratio > 1):
        raise ConfigError(f"selftrain: volume_ratio must be above 1 (or 0: no check), got {ratio!r}")
    match = params["match_volumes"]
    if not isinstance(match, bool):
        raise ConfigError(f"selftrain: match_volumes must be true or false, got {match!r}")
    if not isinstance(params["translate"], bool):
        raise ConfigError(f"selftrain: translate must be true or false, got {params['translate']!r}")
    mirror = params["mirror"]
    if (
        not isinstance(mirror, (list, tuple))
        or any(isinstance(a, bool) or a not in (0, 1, 2) for a in mirror)
        or len(set(mirror)) != len(mirror)
    ):
        raise ConfigError(
            f"selftrain: mirror must be a list of distinct spatial axes 0, 1, 2 ([]: none), got {mirror!r}"
        )
    trusted, why = context.mirrored_training
    style = params["style_share"]
    if isinstance(style, bool) or not isinstance(style, (int, float)) or style < 0:
        raise ConfigError(f"selftrain: style_share must be a share >= 0 (0: none), got {style!r}")
    pseudo = PseudoLabelPlugin(
        float(confidence),
        refresh,
        float(share),
        float(ratio),
        match,
        style_share=float(style),
        translate=params["translate"],
        memory=replay.plugins[0].storage_policy,
        samples_per_volume=context.samples_per_volume,
        seed=context.seed,
        mirror=tuple(int(a) for a in mirror) if trusted else (),
        mirror_refused=None if trusted or not mirror else f"mirror {list(mirror)} not used: {why}",
    )
    if pseudo.mirror_refused:
        log.warning(
            "selftrain: %s (a network not trained on flipped images predicts worse on them)", pseudo.mirror_refused
        )
    return MethodSpec(
        name="selftrain",
        plugins=[pseudo, *replay.plugins],
        params={**params, **replay.params},
        label_free=True,
        veto=pseudo.veto,
    )


METHOD = Method(
    name="selftrain",
    description="label-free: confident pseudo-labels of the unlabelled cases, with replay of labelled patches",
    params=(
        Param("confidence", 0.9, "a voxel is pseudo-labelled when its class has at least this softmax probability"),
        Param("class_share", 0.5, "and per predicted class, its most confident share of voxels (0: threshold only)"),
        Param(
            "volume_ratio",
            2.0,
            "pseudo-labels used only if predicted class volumes are within this factor of"
            " the labelled ones (0: no check)",
        ),
        Param(
            "match_volumes",
            True,
            "scale class probabilities so pseudo-labelled structure volumes approach the labelled domains' mean",
        ),
        Param(
            "style_share",
            1.0,
            "stored labelled patches shown as the new scanner would show them (its measured resolution, intensity"
            " curve and noise), as a share of its pseudo-labelled volumes (0: none)",
        ),
        Param(
            "translate",
            True,
            "where the images as stored give implausible volumes, pseudo-label them with their body intensities"
            " matched or inverted onto the labelled domains' (false: refuse the domain)",
        ),
        Param(
            "mirror",
            [0, 1, 2],
            "spatial axes whose mirrorings the pseudo-labels average over (test-time augmentation: 2^n network passes"
            " per volume; []: none)",
        ),
        Param("refresh", "epoch", "pseudo-labels recomputed every epoch | once per experience"),
        *(
            Param(
                "mem_batch",
                8,
                "memory patches per step (null: as many as the current domain contributes); 8 chosen from null (4),"
                " 8 and memory_fraction 0.5 on the val splits of scanners B and C",
            )
            if p.name == "mem_batch"
            else p
            for p in replay_method.METHOD.params
        ),
    ),
    build=build,
)
