"""The training loop: a prepared run folder in, LoRA checkpoints and an event stream out.

    train(run_dir, resume=False) -> exit status

The run folder holds the frozen config (absolute paths); everything the run does is
written beside it (engine.run.folder's layout): events.jsonl, checkpoints/, state/, samples/,
tb/. Under `accelerate launch` every process trains its share of the batches and only
the main process writes files.

Reading order: `train` (errors become events), `_train` (setup, then the loop); the step
itself (forward, loss, backward, optimizer) is engine.train.step, which the speed bench
runs too.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.train.checkpoints import Checkpointer, lora_file_name
from engine.config.schema import TrainConfig, config_to_dict, load_config
from engine.errors import LoradeckError
from engine.run.events import ERROR, RUN_END, RUN_START, WARNING, EventWriter
from engine.network.metadata import training_metadata
from engine.network.lora import LoraNetwork
from engine.model.loading import BaseModel, load_base_model
from engine.train.optimizers import make_lr_scheduler, make_optimizer, optimizer_kernel, scheduler_name
from engine.run.folder import CONTROL_REQUESTS, RunDir
from engine.model.text_conditioning import TextStateCache, text_cache_refusal
from engine.train.control import StopSignal, obey_requests
from engine.train.data import EpochBatchSampler, ExampleRules, LatentCache, TrainingImages, check_images, make_loader
from engine.train.log import NonFiniteLoss, StepLog
from engine.train.state import load_state, restore_rng
from engine.train.step import TrainStep, apply_speed_settings
from engine.plan.vram import out_of_memory_advice

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Progress:
    """Where the run is; saved with every state, restored by --resume."""

    step: int = 0  # optimizer steps done (global, never restarts)
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # this process's micro-batches done in the epoch in progress
    started_at: float = field(default_factory=time.time)
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def last_epoch(self) -> int:
        """The 1-based epoch of the last step (events and checkpoints name epochs so)."""
        return self.epoch + (1 if self.batch_in_epoch else 0)


class _NoEvents:
    """What processes other than the main one write: nothing."""

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def train(run_dir: str | Path, *, resume: bool = False) -> int:
    """Train the run in `run_dir` (config.toml inside); returns the process exit status."""
    run = RunDir(run_dir)
    try:
        config = load_config(run.config)
        accelerator = make_accelerator(config)
    except LoradeckError as error:
        with EventWriter(run.path) as events:
            _fail(events, Progress(), str(error), "")
        print(f"loradeck train: {error}", file=sys.stderr, flush=True)
        return error.exit_status
    main = accelerator.is_main_process
    events = EventWriter(run.path) if main else _NoEvents()
    stop_signal = StopSignal().install()
    progress = Progress()
    if main:
        run.create()
        run.write_pid()
        if resume:
            for action in CONTROL_REQUESTS:
                run.clear_request(action)  # meant for the engine that is gone, not for this one
    try:
        return _train(run, config, accelerator, events, stop_signal, progress, resume)
    except LoradeckError as error:
        _fail(events, progress, str(error), "")
        print(f"loradeck train: {error}", file=sys.stderr, flush=True)
        return error.exit_status
    except NonFiniteLoss as error:
        message = (f"{error}; stopped instead of training on garbage. Lower the learning rate, or use bf16 "
                   f"instead of fp16; the last good checkpoint is in {run.checkpoints}")
        _fail(events, progress, message, "")
        print(f"loradeck train: {message}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        _fail(events, progress, "interrupted twice: stopped without saving", "")
        return 130
    except torch.cuda.OutOfMemoryError:
        # one line that says what to change, not a CUDA allocator traceback
        message = out_of_memory_advice(config, run.path, progress.step)
        _fail(events, progress, message, "")
        print(f"loradeck train: {message}", file=sys.stderr, flush=True)
        return 1
    except Exception as error:
        _fail(events, progress, f"{type(error).__name__}: {error}", traceback.format_exc())
        traceback.print_exc()
        return 1
    finally:
        stop_signal.uninstall()
        events.close()
        if main:
            run.clear_pid()


def _fail(events, progress: Progress, message: str, trace: str) -> None:
    events.emit(ERROR, message=message, traceback=trace)
    events.emit(RUN_END, status="failed", step=progress.step, epoch=progress.last_epoch, message=message)


def make_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cuda = torch.cuda.is_available()
    precision = config.precision.mixed_precision if cuda else "no"  # the CPU trains in fp32
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise LoradeckError("precision.mixed_precision: this GPU has no bf16; use fp16")
    # a text encoder frozen mid-run leaves DDP with parameters that get no gradient
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if config.training.stop_text_encoder_training else []
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=config.training.gradient_accumulation_steps,
        cpu=not cuda,
        kwargs_handlers=handlers,
    )


def _train(run: RunDir, config: TrainConfig, accelerator, events, stop_signal: StopSignal,
           progress: Progress, resume: bool) -> int:
    from accelerate.data_loader import prepare_data_loader
    from accelerate.utils import set_seed

    main = accelerator.is_main_process
    log = (lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)) if main else (lambda text: None)
    base_dir = run.path  # the frozen config's paths are absolute; anything relative is the run's
    device = accelerator.device
    weight_dtype = WEIGHT_DTYPES[accelerator.mixed_precision]
    seed = config.training.seed
    set_seed(seed)

    # ---- dataset and the numbers of the run (the plan; the config stays as it was read)
    from engine.plan.training_plan import SaveSchedule, make_plan

    dataset, instances = load_dataset(config, base_dir)
    plan = make_plan(config, base_dir, dataset, num_processes=accelerator.num_processes)
    sampler = EpochBatchSampler(instances, config.training.batch_size, seed, accelerator.num_processes,
                                accelerator.process_index)
    steps_per_epoch, total_steps, epochs = plan.steps_per_epoch, plan.total_steps, plan.epochs
    saves = SaveSchedule.of(config, steps_per_epoch, total_steps, epochs)

    saved = load_state(run.state) if resume else None
    if resume and saved is None:
        raise LoradeckError(f"{run.path}: nothing to resume, {run.state} holds no saved state")
    if saved is not None:
        for name in ("step", "epoch", "batch_in_epoch", "started_at", "session_id"):
            setattr(progress, name, saved.progress[name])
    vram = plan.vram_estimate
    events.emit(
        RUN_START, run_name=run.name, config=config_to_dict(config), plan=plan.as_json(), start_step=progress.step,
        start_epoch=progress.epoch, resumed=resume, device=str(device), precision=accelerator.mixed_precision,
        pid=os.getpid(), vram_estimate_gb=round(vram.total_gb, 3),
    )
    log(f"{plan.images} images, {len(instances)} instances per epoch in {len(plan.buckets)} buckets; "
        f"batch {config.training.batch_size} x {config.training.gradient_accumulation_steps} accumulation x "
        f"{accelerator.num_processes} processes; {steps_per_epoch} steps per epoch, {total_steps} steps in "
        f"{epochs} epochs; {device}, {accelerator.mixed_precision}")
    log(f"VRAM estimate on a GPU: {vram.summary()}")

    # ---- base model and LoRA
    model = load_base_model(config, base_dir, device=device, dtype=weight_dtype)
    unet_lr, text_encoder_lr = config.unet_learning_rate, config.text_encoder_learning_rate
    train_text_encoder = config.network.train_text_encoder and text_encoder_lr > 0
    network = LoraNetwork.attach(
        model.unet, model.text_encoder, rank=config.network.rank, alpha=config.network.alpha,
        train_unet=config.network.train_unet, train_text_encoder=train_text_encoder,
    )
    apply_speed_settings(model, config, device, train_text_encoder)
    optimizer = make_optimizer(config, network.param_groups(unet_lr, text_encoder_lr), device)
    optimizer_steps = optimizer_kernel(optimizer)
    lr_scheduler = make_lr_scheduler(config, optimizer, total_steps)

    step_log = StepLog(
        events, steps_per_epoch=steps_per_epoch, log=log,
        images_per_step=config.training.batch_size * config.training.gradient_accumulation_steps * accelerator.num_processes,
        tensorboard_dir=run.tensorboard if (main and config.logging.tensorboard) else None,
    )
    metadata = lambda epoch, step: training_metadata(  # noqa: E731 - read at each save
        config, plan, dataset, model_name=model.name, session_id=progress.session_id,
        started_at=progress.started_at, epoch=epoch, step=step, optimizer_name=config.optimizer.optimizer,
        scheduler_name=scheduler_name(config), num_processes=accelerator.num_processes,
    )
    checkpointer = Checkpointer(run, config, events, network, metadata, log)

    # ---- resume: weights, optimizer, schedule, RNG and counters as they were saved
    if saved is not None:
        try:
            network.load_state_dict(saved.lora)
            optimizer.load_state_dict(saved.optimizer)
            lr_scheduler.load_state_dict(saved.lr_scheduler)
        except (ValueError, KeyError, RuntimeError) as error:
            raise LoradeckError(f"{saved.folder}: the saved state does not fit this config ({error})") from None
        restore_rng(saved.rng)
        step_log.load_state_dict(saved.progress.get("step_log", {}))
        checkpointer.saved = saved.progress.get("checkpoints", [])
        checkpointer.last_saved_step = progress.step
        log(f"resuming from {saved.folder.name}: step {progress.step}, epoch {progress.epoch}")
    stop_text_encoder_at = config.training.stop_text_encoder_training
    text_encoder_active = train_text_encoder and not (stop_text_encoder_at and progress.step >= stop_text_encoder_at)
    if train_text_encoder and not text_encoder_active:
        network.freeze_text_encoder()
    train_step = TrainStep.prepare(accelerator, model, network, optimizer, lr_scheduler, config,
                                   train_text_encoder=train_text_encoder, text_encoder_active=text_encoder_active)
    optimizer = train_step.optimizer

    # ---- caches: latents when no augmentation changes the pixels, text-encoder outputs
    # when the text encoder is frozen and the captions fixed; each spares the step a model
    latents, skip = _cache_latents(run, config, model, dataset, accelerator, events, log)
    text_states = _cache_text_states(config, model, instances, train_text_encoder, accelerator, log)
    images = TrainingImages(instances, ExampleRules.from_config(config), model.tokenizer, latents, skip, text_states)
    workers = _loader_workers(config, latents)
    # accelerate's loader wrapper tells `accumulate` where the epoch ends, so a short last
    # accumulation still makes an optimizer step; batches are already sharded per process
    loader = prepare_data_loader(
        make_loader(images, sampler, workers=workers, pin_memory=device.type == "cuda"),
        num_processes=1, process_index=0, put_on_device=False,
    )
    log(_speed_summary(config, latents, text_states, optimizer_steps, workers))

    # ---- samples (engine.sampling.sampler), only when prompts are configured
    training_sampler = _make_sampler(run, config, base_dir, model, events, device, weight_dtype) if main else None

    def sample(epoch: int, step: int) -> int:
        count = len(training_sampler.sample(epoch, step)) if training_sampler is not None else 0
        accelerator.wait_for_everyone()
        step_log.restart_clock()
        return count

    def save(name: str, *, final: bool = False) -> None:
        step_log.flush()  # a NaN must surface before its weights are saved
        if checkpointer.last_saved_step == progress.step and not final:
            return  # saved at this step already (an epoch save, then a stop request)
        if main:
            checkpointer.save(
                epoch=progress.last_epoch, step=progress.step, name=name, final=final,
                optimizer=optimizer, lr_scheduler=lr_scheduler,
                progress={**asdict(progress), "step_log": step_log.state_dict()},
            )
        checkpointer.last_saved_step = progress.step  # on every process: they must skip the same saves
        accelerator.wait_for_everyone()
        step_log.restart_clock()

    if config.sampling.at_start and progress.step == 0:
        sample(0, 0)

    # ---- the loop
    generator = torch.Generator(device=device)
    step_log.restart_clock()
    warned: set[str] = set()
    while progress.epoch < epochs and progress.step < total_steps:
        epoch = progress.epoch + 1  # the 1-based epoch in progress, as events and file names count
        sampler.resume_at(progress.epoch, progress.batch_in_epoch)
        loader.set_epoch(progress.epoch)
        step_loss, micro_batches = None, 0
        for batch in step_log.timed(loader):  # time spent waiting for data shows in the log
            batch_index = progress.batch_in_epoch
            progress.batch_in_epoch += 1
            for path, message in batch["failed"]:
                if path not in warned:
                    warned.add(path)
                    events.emit(WARNING, message=message, code="unreadable_image", path=path)
            if not batch["count"]:
                continue
            # noise and timesteps depend only on (seed, epoch, batch): a resumed run draws the same
            generator.manual_seed(hash((seed, progress.epoch, batch_index, accelerator.process_index)) & (2**63 - 1))
            loss = train_step(batch, generator)  # forward, backward, optimizer; no host sync
            step_loss = loss if step_loss is None else step_loss + loss
            micro_batches += 1
            if not accelerator.sync_gradients:
                continue

            # ---- after each optimizer step: log, stop the text encoder, sample, save, obey requests
            progress.step += 1
            lr_unet, lr_text_encoder = _learning_rates(optimizer, lr_scheduler, network, train_step.text_encoder_active)
            step_log.add(progress.step, epoch, step_loss / micro_batches, lr_unet, lr_text_encoder)
            step_loss, micro_batches = None, 0
            if train_step.text_encoder_active and stop_text_encoder_at and progress.step >= stop_text_encoder_at:
                train_step.stop_text_encoder()
                log(f"text encoder training stopped at step {progress.step}")
            if progress.step % config.logging.log_every_n_steps == 0:
                step_log.flush()  # CPU-GPU sync point: the only one in the loop
            last_step = progress.step >= total_steps
            if config.sampling.every_n_steps and progress.step % config.sampling.every_n_steps == 0:
                sample(epoch, progress.step)
            if saves.after_step(progress.step):
                save(lora_file_name(config.saving.output_name, step=progress.step))
            if obey_requests(run, config, accelerator, events, stop_signal, progress, sample, save):
                return _stopped(loader, events, progress, step_log, log)
            if last_step:
                break
        _release(loader)

        # ---- epoch end (an epoch cut short by max_steps does not count as done)
        if progress.batch_in_epoch < plan.batches_per_process:
            break
        progress.epoch += 1
        progress.batch_in_epoch = 0
        step_log.end_epoch(progress.epoch, progress.step)
        final_epoch = progress.epoch >= epochs or progress.step >= total_steps
        if saves.after_epoch(progress.epoch, progress.step):
            save(lora_file_name(config.saving.output_name, epoch=progress.epoch))
        if config.sampling.every_n_epochs and progress.epoch % config.sampling.every_n_epochs == 0:
            sample(progress.epoch, progress.step)
        if not final_epoch and obey_requests(run, config, accelerator, events, stop_signal, progress, sample, save,
                                              epoch_end=True):
            return _stopped(loader, events, progress, step_log, log)

    # ---- the end
    save(lora_file_name(config.saving.output_name), final=True)
    step_log.close()
    events.emit(RUN_END, status="finished", step=progress.step, epoch=progress.last_epoch, message="")
    log(f"finished: {progress.step} steps, {progress.epoch} epochs")
    return 0


# --------------------------------------------------------------------------- setup helpers


def load_dataset(config: TrainConfig, base_dir: Path):
    """The dataset and one epoch's instances; refuses to start on images that cannot be
    read (a corrupt file must stop the run now, not hours in)."""
    from engine.dataset.folders import scan_dataset

    dataset = scan_dataset(config, base_dir)
    unreadable = dataset.unreadable + check_images([item.path for item in dataset.items])
    if unreadable:
        listed = "; ".join(message for _, message in unreadable)
        raise LoradeckError(f"{len(unreadable)} unreadable image(s), training not started (fix or remove them): {listed}")
    instances = dataset.training_instances()
    if not instances:
        raise LoradeckError(f"dataset.image_dir: no training images in {dataset.root} (folders must be named <repeats>_<name>)")
    return dataset, instances


def _cache_latents(run: RunDir, config: TrainConfig, model: BaseModel, dataset, accelerator, events, log):
    """(LatentCache or None, paths that failed to encode). On disk, the main process writes."""
    if not config.latents_cacheable:
        reason = ("precision.cache_latents is none" if config.precision.cache_latents == "none"
                  else "colour augmentation or random crop changes the pixels every epoch")
        log(f"latents encoded every step: {reason}")
        return None, set()
    on_disk = config.precision.cache_latents == "disk"
    cache = LatentCache(f"{model.source}|{config.model.vae}", folder=run.path / "cache" / "latents" if on_disk else None)
    failed: set[Path] = set()
    if accelerator.is_main_process or not on_disk:
        log(f"caching latents of {len(dataset.items)} images ({config.precision.cache_latents})")
        last_report = [time.monotonic()]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last_report[0] > 10:
                last_report[0] = time.monotonic()
                log(f"cached {done}/{total} latents")

        failed = cache.fill(
            dataset.items, model.vae, batch_size=config.training.batch_size, with_flipped=config.augmentation.flip,
            on_failure=lambda path, message: events.emit(WARNING, message=message, code="unreadable_image", path=str(path)),
            on_progress=progress,
        )
    accelerator.wait_for_everyone()
    if on_disk and not accelerator.is_main_process:
        failed = {item.path for item in dataset.items if not cache.has(item)}
    return cache, failed


def _cache_text_states(config: TrainConfig, model: BaseModel, instances, train_text_encoder: bool, accelerator, log):
    """A TextStateCache of every caption, or None (with the reason in the log)."""
    refusal = text_cache_refusal(config, train_text_encoder)
    if refusal:
        log(f"text encoder outputs computed every step: {refusal}")
        return None
    cache = TextStateCache()
    captions = config.captions
    cache.fill(
        (item.caption for item in instances), model.tokenizer, model.text_encoder,
        max_token_length=captions.max_token_length, weighted=captions.weighted_captions,
        clip_skip=config.model.clip_skip, autocast=accelerator.autocast,
    )
    log(f"cached the text encoder's outputs for {len(cache)} captions")
    return cache


# --------------------------------------------------------------------------- loop helpers


def _loader_workers(config: TrainConfig, latents) -> int:
    """Loader processes: none when latents are in memory (an example is then a dictionary
    lookup, workers would only add copies), else as configured, at most one per CPU core."""
    if latents is not None and latents.folder is None:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(config.precision.dataloader_workers, cores)


def _speed_summary(config: TrainConfig, latents, text_states, optimizer_steps: str, workers: int) -> str:
    """One line of engine.log saying which speed settings are in effect (see docs/speed.md)."""
    precision = config.precision
    return (
        f"speed: latents {'cached (' + precision.cache_latents + ')' if latents is not None else 'encoded every step'}, "
        f"text encoder outputs {'cached' if text_states is not None else 'computed every step'}, "
        f"attention {precision.attention}, channels_last {'on' if precision.channels_last else 'off'}, "
        f"optimizer {optimizer_steps}, U-Net {'compiled' if precision.compile_unet else 'eager'}, "
        f"{workers} loader workers, losses to the CPU every {config.logging.log_every_n_steps} steps"
    )


def _learning_rates(optimizer, lr_scheduler, network: LoraNetwork, text_encoder_active: bool) -> tuple[float, float]:
    """(U-Net LR, text-encoder LR) as applied; Prodigy's LR is scaled by its estimate d."""
    rates = {}
    last = lr_scheduler.get_last_lr()
    for index, group in enumerate(optimizer.param_groups):
        rate = last[index] if index < len(last) else group.get("lr") or 0.0
        rates[group.get("name")] = float(rate or 0.0) * float(group.get("d", 1.0))
    return rates.get("unet", 0.0), rates.get("text_encoder", 0.0) if text_encoder_active else 0.0


def _stopped(loader, events, progress: Progress, step_log: StepLog, log) -> int:
    _release(loader)
    step_log.close()
    events.emit(RUN_END, status="stopped", step=progress.step, epoch=progress.last_epoch,
                message=f"stopped at step {progress.step}; resume with --resume")
    log(f"stopped at step {progress.step}")
    return 0


def _release(loader) -> None:
    """Tell accelerate a loader left early is done (it only notices at the end itself)."""
    if loader in loader.gradient_state.dataloader_references:
        loader.end()


def _make_sampler(run, config, base_dir, model, events, device, dtype):
    if not (config.sampling.prompts.strip() or config.sampling.prompts_file.strip()):
        return None
    from engine.sampling.sampler import TrainingSampler

    return TrainingSampler(run, config, Path(base_dir), model, events, device, dtype)
