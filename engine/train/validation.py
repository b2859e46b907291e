"""Validation loss: held-out images scored at fixed timesteps with fixed noise.

    evaluator = Evaluator.build(config, model, dataset, device=..., autocast=...)
    result = evaluator.evaluate(denoiser, text_encoders)   -> Scores(loss, bands, train_loss, ...)

The training loss of a diffusion model is dominated by the random timestep and noise
drawn at each step, so it says little about how good the LoRA is. Here every image is
scored at the same `validation.timesteps` points of the objective's schedule (evenly
spread: `Objective.validation_timesteps`) with the same noise every time: the noise of
one image at one timestep comes from a seed made of the validation seed, the image's
folder and name, and the timestep, so it does not depend on the batch size, the order of
the images or the device. The number then moves only when the LoRA changes.

The batches are built by the training data's own code (engine.train.data's
`TrainingImages` and `collate_examples`, with every augmentation off and the family's
caption tokens), so an example carries exactly what the family's conditioning reads in
training: the two cannot drift apart. The score is the step's own loss
(`engine.train.step.loss_at`: the objective's target and weighting, the family's
conditioning and denoiser call exactly as in training), computed with no gradients, the
network in eval mode, on latents encoded once. Besides the held-out images, a fixed sample
of training images (`validation.train_sample`) is scored the same way: the gap between
the two shows memorising.
"""
from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from engine.run.advice import ValidationPoint, best_point, evaluations_since_best
from engine.run.events import VALIDATION
from engine.train.data import ExampleRules, LatentCache, TrainingImages, collate_examples
from engine.train.step import batch_to_device, loss_at


def band_name(timestep: float) -> str:
    """The name of a timestep band in events and TensorBoard (`loss/validation_t125`)."""
    return f"t{timestep:g}"


def image_key(item) -> str:
    """What an image's fixed noise is seeded by: its folder and file name, not where the
    dataset lives (a moved dataset keeps its validation numbers)."""
    return f"{item.folder}/{item.path.name}"


def fixed_noise(seed: int, key: str, timestep: float, shape: tuple[int, ...]) -> torch.Tensor:
    """The noise of one image at one timestep: the same for the same (seed, key, timestep)."""
    digest = hashlib.sha256(f"validation-noise:{seed}:{key}:{timestep}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randn(shape, generator=generator)  # on the CPU: the same numbers on every device


def train_sample(items: list, count: int, seed: int) -> list:
    """A fixed sample of training images for the train-set loss, by the seed."""
    ordered = sorted(items, key=image_key)
    if count >= len(ordered):
        return ordered
    return random.Random(f"validation-train-sample:{seed}").sample(ordered, count)


@dataclass(frozen=True)
class Scores:
    loss: float  # mean over images and timesteps
    bands: dict[str, float]  # band name -> mean over images at that timestep
    train_loss: float | None  # the same on the train-set sample (None when there is none)
    seconds: float
    images: int
    train_images: int


@dataclass
class _Batch:
    latents: torch.Tensor  # (B, C, h, w) on the device
    tensors: dict[str, Any]  # what the family's conditioning reads (engine.train.step.batch_to_device)
    noise: dict[float, torch.Tensor]  # timestep -> (B, C, h, w) on the device


class Evaluator:
    """Scores the current LoRA on fixed batches built once (latents, tokens and noise)."""

    def __init__(self, config, model, validation: list[_Batch], training: list[_Batch], timesteps: list,
                 images: int, train_images: int, autocast: Callable | None):
        self.config, self.model = config, model
        self.validation, self.training = validation, training
        self.timesteps = timesteps
        self.images, self.train_images = images, train_images
        self.autocast = autocast

    @property
    def scored_images(self) -> int:
        """Images scored per evaluation: the held-out ones, then the training sample."""
        return self.images + self.train_images

    @classmethod
    def build(cls, config, model, dataset, *, device: torch.device, autocast: Callable | None = None) -> "Evaluator":
        """Encode the held-out images and the train-set sample once, and draw their noise."""
        settings = config.validation
        timesteps = list(model.objective.validation_timesteps(settings.timesteps))
        sample = train_sample(dataset.train_items, settings.train_sample, settings.seed)
        items = list(dataset.validation_items) + sample
        latents = LatentCache(f"{model.source}|{config.model.vae}|validation")
        failed = latents.fill(items, model.vae, batch_size=settings.batch_size, with_flipped=False,
                              on_failure=lambda path, message: None)
        if failed:  # the pre-flight check read them; they broke since
            raise OSError(f"cannot read validation image(s): {', '.join(sorted(map(str, failed)))}")
        captions = model.runtime.caption_tokens(model.tokenizers, max_token_length=config.captions.max_token_length,
                                                weighted=config.captions.weighted_captions, config=config)
        rules = ExampleRules.fixed(config, size_conditioning=model.family.size_conditioning)

        def batches(group: list) -> list[_Batch]:
            by_bucket: dict[tuple[int, int], list] = {}
            for item in sorted(group, key=image_key):
                by_bucket.setdefault(item.bucket, []).append(item)
            built = []
            for bucket in sorted(by_bucket):
                bucket_items = by_bucket[bucket]
                for start in range(0, len(bucket_items), settings.batch_size):
                    chunk = bucket_items[start:start + settings.batch_size]
                    # the training data's own examples and collate: what training's conditioning reads
                    images = TrainingImages(chunk, rules, captions, latents)
                    tensors = batch_to_device(collate_examples([images[index] for index in range(len(chunk))]),
                                              device, config)
                    shape = tuple(tensors["latents"].shape[1:])
                    noise = {t: torch.stack([fixed_noise(settings.seed, image_key(item), t, shape)
                                             for item in chunk]).to(device) for t in timesteps}
                    built.append(_Batch(tensors["latents"], tensors, noise))
            return built

        return cls(config, model, batches(dataset.validation_items), batches(sample), timesteps,
                   len(dataset.validation_items), len(sample), autocast)

    def evaluate(self, denoiser, text_encoders, progress: Callable[[int, int], None] | None = None) -> Scores:
        """The current LoRA's scores; the models are put back in the mode they were in.
        `progress(done, total)` after each batch, counting images (held-out, then the
        training sample)."""
        start = time.perf_counter()
        modes = [(module, module.training) for module in (denoiser, *text_encoders)]
        for module, _ in modes:
            module.eval()
        try:
            with torch.no_grad():
                total = self.scored_images
                report = progress or (lambda done, total: None)
                bands = self._score(self.validation, denoiser, text_encoders,
                                    lambda done: report(done, total))
                train = (self._score(self.training, denoiser, text_encoders,
                                     lambda done: report(self.images + done, total)) if self.training else None)
        finally:
            for module, mode in modes:
                module.train(mode)
        named = {band_name(t): value for t, value in bands.items()}
        return Scores(
            loss=sum(bands.values()) / len(bands), bands=named,
            train_loss=sum(train.values()) / len(train) if train else None,
            seconds=time.perf_counter() - start, images=self.images, train_images=self.train_images,
        )

    def _score(self, batches: list[_Batch], denoiser, text_encoders,
               progress: Callable[[int], None]) -> dict[float, float]:
        """Per timestep, the mean loss over every image of `batches`; `progress(images done)`
        after each batch (no device sync: the totals stay on the device)."""
        totals: dict[float, Any] = {t: 0.0 for t in self.timesteps}
        count = 0
        objective = self.model.objective
        for batch in batches:
            size = batch.latents.shape[0]
            count += size
            for t in self.timesteps:
                timesteps = objective.timesteps_tensor(t, size, batch.latents.device)
                # the step's own loss, so the validation number means what the training loss means
                loss = loss_at(self.model, denoiser, text_encoders, batch.latents, batch.tensors, batch.noise[t],
                               timesteps, config=self.config, train_text_encoder=False, autocast=self.autocast)
                totals[t] = totals[t] + loss.float() * size
            progress(count)
        # one device-to-host copy for the whole evaluation
        values = torch.stack([torch.as_tensor(totals[t]).reshape(()) for t in self.timesteps]).cpu().tolist()
        return {t: value / count for t, value in zip(self.timesteps, values)}


# --------------------------------------------------------------------------- during a run


def due_after_step(settings, step: int) -> bool:
    """An evaluation after optimizer step `step` (`validation.every_n_steps`)."""
    return bool(settings.every_n_steps) and step % settings.every_n_steps == 0


def due_after_epoch(settings, epoch: int) -> bool:
    """An evaluation when epoch `epoch` ends (`validation.every_n_epochs`); checkpoints
    are evaluated whatever these say."""
    return bool(settings.every_n_epochs) and epoch % settings.every_n_epochs == 0


class ValidationRun:
    """When to evaluate, the curve so far, the best file and early stop, for the trainer.

    `evaluate` scores the LoRA, writes a `validation` event (and TensorBoard scalars), and
    on a new best writes `<output_name>-best.safetensors` through `write_best`. The curve
    is saved in the trainer state (`state_dict`), so a resumed run keeps its best and its
    count towards early stop.
    """

    def __init__(self, settings, evaluator: Evaluator, events, log, *, write_best: Callable[[int, int], str],
                 scalars: Callable[[dict[str, float], int], None]):
        self.settings = settings
        self.evaluator = evaluator
        self.events, self.log = events, log
        self.write_best, self.scalars = write_best, scalars
        self.points: list[ValidationPoint] = []
        self.best_path = ""

    @property
    def best_point(self) -> ValidationPoint | None:
        return best_point(self.points)

    @property
    def last_loss(self) -> float | None:
        return self.points[-1].loss if self.points else None

    @property
    def early_stop(self) -> bool:
        """True when the patience ran out: no new best in that many evaluations."""
        patience = self.settings.early_stop_patience
        return bool(patience) and evaluations_since_best(self.points) >= patience

    def evaluate(self, denoiser, text_encoders, *, step: int, epoch: int,
                 progress: Callable[[int, int], None] | None = None) -> Scores:
        scores = self.evaluator.evaluate(denoiser, text_encoders, progress)
        previous_best = best_point(self.points)
        self.points.append(ValidationPoint(step, epoch, scores.loss, scores.train_loss))
        improved = previous_best is None or scores.loss < previous_best.loss
        if improved:
            self.best_path = self.write_best(epoch, step)
        best = best_point(self.points)
        since = evaluations_since_best(self.points)
        self.events.emit(
            VALIDATION, step=step, epoch=epoch, loss=scores.loss, train_loss=scores.train_loss, bands=scores.bands,
            images=scores.images, train_images=scores.train_images, seconds=round(scores.seconds, 3),
            best=improved, best_step=best.step, best_epoch=best.epoch, best_loss=best.loss,
            evaluations_since_best=since, best_path=self.best_path,
        )
        tags = {"loss/validation": scores.loss}
        tags.update({f"loss/validation_{name}": value for name, value in scores.bands.items()})
        if scores.train_loss is not None:
            tags["loss/train_fixed"] = scores.train_loss
        self.scalars(tags, step)
        train = f", train-set {scores.train_loss:.5f}" if scores.train_loss is not None else ""
        self.log(f"validation at step {step}: loss {scores.loss:.5f}{train}, best {best.loss:.5f} at step {best.step}"
                 f"{' (new best)' if improved else f', {since} evaluations since'}; {scores.seconds:.1f}s for "
                 f"{scores.images}+{scores.train_images} images x {len(self.evaluator.timesteps)} timesteps")
        return scores

    def state_dict(self) -> dict[str, Any]:
        return {"points": [[p.step, p.epoch, p.loss, p.train_loss] for p in self.points], "best_path": self.best_path}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.points = [ValidationPoint(*entry) for entry in state.get("points", [])]
        self.best_path = str(state.get("best_path", ""))
