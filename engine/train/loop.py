"""The training loop: a prepared run folder in, LoRA checkpoints and an event stream out.

    train(run_dir, resume=False) -> exit status

The run folder holds the frozen config (absolute paths); everything the run does is
written beside it (engine.run.folder's layout): events.jsonl, checkpoints/, state/, samples/,
tb/. Under torchrun or `accelerate launch` every process trains its share of the batches and only
the main process writes files.

Reading order: `train` (errors become events), `Training.setup` (the pieces, in order), then
`Training.run_loop` and the methods it calls (`train_epoch`, `after_step`, `end_epoch`); the step
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
from engine.config.schema import RANDOM_SEED, TrainConfig, config_to_dict, load_config, save_config, with_drawn_seed
from engine.errors import LoradeckError, first_line, no_space_reason
from engine.run.events import (CACHING_LATENTS, CACHING_TEXT, ERROR, LOADING_MODEL, RUN_END, RUN_START, SAMPLING,
                               SAVING, TRAINING, VALIDATING, WARNING, EventWriter)
from engine.network.metadata import optimizer_class_path, training_metadata
from engine.network.lora import LoraNetwork, learning_rates
from engine.network.max_norm import apply_max_norm
from engine.model.loading import BaseModel, load_base_model
from engine.train.optimizers import make_lr_scheduler, make_optimizer, optimizer_kernel, scheduler_name
from engine.run.folder import CONTROL_REQUESTS, RunDir
from engine.model.text_conditioning import text_cache_refusal
from engine.train.control import StopSignal, obey_requests
from engine.train.processes import (end_processes, first_failure, gather_from_all, repeats_main, report_failure,
                                     share_from_main, start_processes)
from engine.train.data import EpochBatchSampler, ExampleRules, LatentCache, TrainingImages, check_images, make_loader
from engine.train.log import NonFiniteLoss, StepLog
from engine.train.phase import PhaseReporter
from engine.train.state import capture_rng, load_state, restore_rng
from engine.train.step import TrainStep, apply_speed_settings
from engine.train.validation import Evaluator, ValidationRun, due_after_epoch, due_after_step
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
    """Train the run in `run_dir` (config.toml inside); returns the process exit status.

    Under several processes (engine.train.processes) only the main one reads and writes the
    run folder: the others get the config and the saved state from it, and any failure
    becomes one error event and one run end, written by the main process."""
    run = RunDir(run_dir)
    progress = Progress()
    main = os.environ.get("RANK", "0") == "0"  # until the process group says so
    events: EventWriter | _NoEvents = _NoEvents()
    phases = PhaseReporter(events)  # what the engine is doing, every few seconds (engine.train.phase)
    stop_signal = StopSignal().install()
    config = None
    try:
        processes = start_processes()
        main = processes.is_main_process
        if main:
            events = EventWriter(run.path)  # the one writer of events.jsonl
            phases = PhaseReporter(events)
            phases.start()
        config = share_from_main(processes, lambda: _frozen_config(run))
        accelerator = make_accelerator(config)
        if main:
            run.create()
            run.write_pid()
            if run.remove_temporary_files():
                print("removed the temporary files of a save that was interrupted", flush=True)
            if resume:
                for action in CONTROL_REQUESTS:
                    run.clear_request(action)  # meant for the engine that is gone, not for this one
        training = Training(run, config, accelerator, events, stop_signal, progress, resume, phases)
        training.setup()
        return training.run_loop()
    except (Exception, KeyboardInterrupt) as error:
        phases.close()
        message, trace, status = _failure(error, config, run, progress)
        if trace:
            traceback.print_exc()
        elif not repeats_main(error):
            print(f"loradeck train: {message}", file=sys.stderr, flush=True)
        report_failure(message, trace)
        if main:
            message, trace = first_failure(message, trace)
        _fail(events, progress, message, trace)
        return status
    finally:
        phases.close()  # before the file closes: no heartbeat after the run end
        stop_signal.uninstall()
        events.close()
        if main:
            run.clear_pid()
        end_processes()


def _frozen_config(run: RunDir) -> TrainConfig:
    """The run's config. A random seed (a folder not made by prepare_run) is drawn here and
    frozen into it, so a resume reuses it."""
    config = load_config(run.config)
    if config.training.seed == RANDOM_SEED:
        config = with_drawn_seed(config)
        save_config(config, run.config)
    return config


def _failure(error: BaseException, config: TrainConfig | None, run: RunDir, progress: Progress) -> tuple[str, str, int]:
    """(one-line message, traceback worth keeping, exit status) of what ended the run."""
    if isinstance(error, LoradeckError):
        return str(error), "", error.exit_status
    if isinstance(error, NonFiniteLoss):
        return (f"{error}; stopped instead of training on garbage. Lower the learning rate, or use bf16 "
                f"instead of fp16; the last good checkpoint is in {run.checkpoints}", "", 1)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted twice: stopped without saving", "", 130
    if isinstance(error, torch.cuda.OutOfMemoryError) and config is not None:
        # one line that says what to change, not a CUDA allocator traceback
        return out_of_memory_advice(config, run.path, progress.step), "", 1
    reason = no_space_reason(error)
    if reason is not None:  # a full disk outside a save (events, cache, TensorBoard): one line too
        return f"{reason} at step {progress.step} ({first_line(error)})", "", 1
    return f"{type(error).__name__}: {error}", traceback.format_exc(), 1


def _fail(events, progress: Progress, message: str, trace: str) -> None:
    try:
        events.emit(ERROR, message=message, traceback=trace)
        events.emit(RUN_END, status="failed", step=progress.step, epoch=progress.last_epoch, message=message)
    except OSError:
        pass  # a full disk can refuse even these lines; the caller prints the message to stderr


def make_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cuda = torch.cuda.is_available()
    precision = config.precision.mixed_precision if cuda else "no"  # the CPU trains in fp32
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise LoradeckError("precision.mixed_precision: this GPU has no bf16; use fp16")
    # DDP must look for LoRA parameters a step leaves without a gradient (several processes
    # fail otherwise): a trained text encoder's layers past the hidden state the family reads
    # (clip skip, SDXL's penultimate layers) or after it is frozen mid-run, and the layers
    # module dropout skips. It costs a walk of the graph per step, so only then.
    trains_text_encoder = config.network.train_text_encoder and config.text_encoder_learning_rate > 0
    skips = trains_text_encoder or config.network.module_dropout > 0
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if skips else []
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=config.training.gradient_accumulation_steps,
        cpu=not cuda,
        kwargs_handlers=handlers,
    )


class Training:
    """One training session: `setup` builds every piece in a fixed order (the RNG draws of a
    resumed run depend on it), `run` is the loop. The loop's steps are methods named after
    what they do; nothing else keeps state between steps."""

    def __init__(self, run: RunDir, config: TrainConfig, accelerator, events, stop_signal: StopSignal,
                 progress: Progress, resume: bool, phases: PhaseReporter | None = None):
        self.run, self.config, self.accelerator, self.events = run, config, accelerator, events
        self.stop_signal, self.progress, self.resume = stop_signal, progress, resume
        self.phases = phases or PhaseReporter(events)  # without a thread: phase changes only
        self.main = accelerator.is_main_process
        self.base_dir = run.path  # the frozen config's paths are absolute; anything relative is the run's
        self.device = accelerator.device
        self.weight_dtype = WEIGHT_DTYPES[accelerator.mixed_precision]
        self.seed = config.training.seed
        self.warned: set[str] = set()  # unreadable images already reported
        self.early_stop = False  # validation stopped improving (validation.early_stop_patience)
        self.evaluated_step: int | None = None  # the step of the last evaluation, on every process
        self.stop_pending = False  # a stop was asked for before the sampling in progress began
        self.saved_validation: dict[str, Any] = {}  # the validation curve of the state resumed from

    def log(self, text: str) -> None:
        if self.main:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # ---------------------------------------------------------------- setup, in order

    def setup(self) -> None:
        from accelerate.utils import set_seed

        set_seed(self.seed)
        saved = self._plan_run()
        self._build_network()
        self._restore(saved)
        self._build_data()

    def _plan_run(self):
        """The dataset and the numbers of the run (the plan; the config stays as it was read);
        the saved state when resuming; the run_start event."""
        from engine.plan.training_plan import SaveSchedule, make_plan

        config, accelerator, progress = self.config, self.accelerator, self.progress
        self.dataset, self.instances = load_dataset(config, self.base_dir, accelerator.state)
        plan = self.plan = make_plan(config, self.base_dir, self.dataset, num_processes=accelerator.num_processes)
        self.batches = EpochBatchSampler(self.instances, config.training.batch_size, self.seed,
                                         accelerator.num_processes, accelerator.process_index)
        self.saves = SaveSchedule.of(config, plan.steps_per_epoch, plan.total_steps, plan.epochs)

        saved, start_over = share_from_main(accelerator.state, self._saved_state) if self.resume else (None, "")
        if saved is not None:
            for name in ("step", "epoch", "batch_in_epoch", "started_at", "session_id"):
                setattr(progress, name, saved.progress[name])
        if accelerator.num_processes != config.training.processes:
            self.events.emit(WARNING, code="processes", message=(
                f"training.processes is {config.training.processes}, this launch started "
                f"{accelerator.num_processes}: planned for {accelerator.num_processes}"))
        vram = plan.vram_estimate
        self.events.emit(
            RUN_START, run_name=self.run.name, config=config_to_dict(config), plan=plan.as_json(),
            start_step=progress.step, start_epoch=progress.epoch, resumed=self.resume, seed=self.seed,
            device=str(self.device),
            precision=accelerator.mixed_precision, pid=os.getpid(), vram_estimate_gb=round(vram.total_gb, 3),
        )
        if start_over:
            self.events.emit(WARNING, message=start_over, code="started_over")
            self.log(start_over)
        self.log(f"{plan.images} images, {len(self.instances)} instances per epoch in {len(plan.buckets)} buckets; "
                 f"batch {config.training.batch_size} x {config.training.gradient_accumulation_steps} accumulation x "
                 f"{accelerator.num_processes} processes; {plan.steps_per_epoch} steps per epoch, "
                 f"{plan.total_steps} steps in {plan.epochs} epochs; {self.device}, {accelerator.mixed_precision}")
        self.log(f"VRAM estimate on a GPU: {vram.summary()}")
        return saved

    def _saved_state(self):
        """(the state to resume from, "") or (None, the note that the run starts again from
        step 0); read by the main process, shared with the others."""
        saved = load_state(self.run.state)
        if saved is None:
            return None, self.run.start_over_note()  # raises when the run can neither continue nor start again
        processes, launched = saved.progress.get("processes", 1), self.accelerator.num_processes
        if processes != launched:
            # each process's place in the epoch and its random state belong to that many processes
            raise LoradeckError(f"{saved.folder}: saved by {processes} process(es), this launch has {launched}; "
                                f"resume it with {processes} (training.processes = {processes})")
        return saved, ""

    def _build_network(self) -> None:
        """Base model, LoRA, optimizer, schedule, step log and checkpointer."""
        config, accelerator = self.config, self.accelerator
        self.phases.enter(LOADING_MODEL)
        model = self.model = load_base_model(config, self.base_dir, device=self.device, dtype=self.weight_dtype)
        self.train_text_encoder = config.network.train_text_encoder and config.text_encoder_learning_rate > 0
        self.network = LoraNetwork.from_config(model, config, base_dir=self.base_dir,
                                               train_text_encoder=self.train_text_encoder)
        note = model.family.fp16_vae_note  # a family whose VAE overflows in fp16 says so
        if note and self.weight_dtype == torch.float16 and model.vae.dtype != self.weight_dtype:
            self.log(note)
        apply_speed_settings(model, config, self.device, self.train_text_encoder)
        self.optimizer = make_optimizer(config, self.network.param_groups(learning_rates(config)), self.device)
        self.optimizer_steps = optimizer_kernel(self.optimizer)
        self.lr_scheduler = make_lr_scheduler(config, self.optimizer, self.plan.total_steps)
        self.step_log = StepLog(
            self.events, steps_per_epoch=self.plan.steps_per_epoch, log=self.log,
            images_per_step=config.training.batch_size * config.training.gradient_accumulation_steps
            * accelerator.num_processes,
            tensorboard_dir=self.run.tensorboard if (self.main and config.logging.tensorboard) else None,
            mean_over_processes=(lambda losses: accelerator.reduce(losses, "mean"))
            if accelerator.num_processes > 1 else None,
        )
        self.checkpointer = Checkpointer(self.run, config, self.events, self.network, self._metadata, self.log)

    def _metadata(self, epoch: int, step: int) -> dict[str, str]:
        """The LoRA file's metadata, read at each save."""
        return training_metadata(
            self.config, self.plan, self.dataset, model_name=self.model.name, session_id=self.progress.session_id,
            started_at=self.progress.started_at, epoch=epoch, step=step,
            optimizer_name=optimizer_class_path(self.optimizer), scheduler_name=scheduler_name(self.config),
            num_processes=self.accelerator.num_processes,
        )

    def _restore(self, saved) -> None:
        """On resume: weights, optimizer, schedule, RNG and counters as they were saved. Then
        the step itself, with the text encoder frozen if the run had passed its stop step."""
        progress = self.progress
        if saved is not None:
            try:
                self.network.load_state_dict(saved.lora)
                self.optimizer.load_state_dict(saved.optimizer)
                self.lr_scheduler.load_state_dict(saved.lr_scheduler)
            except (ValueError, KeyError, RuntimeError) as error:
                raise LoradeckError(f"{saved.folder}: the saved state does not fit this config ({error})") from None
            restore_rng(saved.process_rng(self.accelerator.process_index))
            self.step_log.load_state_dict(saved.progress.get("step_log", {}))
            self.checkpointer.saved = saved.progress.get("checkpoints", [])
            self.checkpointer.last_saved_step = progress.step
            self.saved_validation = saved.progress.get("validation", {})
            points = self.saved_validation.get("points") or [[None]]
            self.evaluated_step = points[-1][0]
            self.log(f"resuming from {saved.folder.name}: step {progress.step}, epoch {progress.epoch}")
        self.stop_text_encoder_at = self.config.training.stop_text_encoder_training
        text_encoder_active = self.train_text_encoder and not (
            self.stop_text_encoder_at and progress.step >= self.stop_text_encoder_at)
        if self.train_text_encoder and not text_encoder_active:
            self.network.freeze_text_encoder()
        self.train_step = TrainStep.prepare(
            self.accelerator, self.model, self.network, self.optimizer, self.lr_scheduler, self.config,
            train_text_encoder=self.train_text_encoder, text_encoder_active=text_encoder_active,
        )
        self.optimizer = self.train_step.optimizer

    def _build_data(self) -> None:
        """Caches (latents when no augmentation changes the pixels, text-encoder outputs when
        the text encoder is frozen and the captions fixed; each spares the step a model), the
        loader, and the sampler when prompts are configured."""
        from accelerate.data_loader import prepare_data_loader

        config, accelerator = self.config, self.accelerator
        latents, skip = _cache_latents(self.run, config, self.model, self.dataset, accelerator, self.events, self.log,
                                       self.phases)
        text_states = _cache_text_states(config, self.model, self.instances, self.train_text_encoder, accelerator,
                                         self.log, self.phases)
        model = self.model
        rules = ExampleRules.from_config(config, size_conditioning=model.family.size_conditioning)
        captions = text_states if text_states is not None else model.runtime.caption_tokens(
            model.tokenizers, max_token_length=config.captions.max_token_length,
            weighted=config.captions.weighted_captions, config=config)
        images = TrainingImages(self.instances, rules, captions, latents, skip)
        workers = _loader_workers(config, latents)
        # accelerate's loader wrapper tells `accumulate` where the epoch ends, so a short last
        # accumulation still makes an optimizer step; batches are already sharded per process
        self.loader = prepare_data_loader(
            make_loader(images, self.batches, workers=workers, pin_memory=self.device.type == "cuda"),
            num_processes=1, process_index=0, put_on_device=False,
        )
        self.log(_speed_summary(config, latents, text_states, self.optimizer_steps, workers))
        self.sampler = (_make_sampler(self.run, config, self.base_dir, self.model, self.events, self.device,
                                      self.weight_dtype) if self.main else None)
        self.validation = self._make_validation() if config.validation.enabled and self.main else None

    def _make_validation(self):
        """The held-out images and the train-set sample, encoded once (engine.train.validation)."""
        self.phases.enter(VALIDATING, detail="encoding the held-out images")
        evaluator = Evaluator.build(self.config, self.model, self.dataset, device=self.device,
                                    autocast=self.accelerator.autocast)
        validation = ValidationRun(self.config.validation, evaluator, self.events, self.log,
                                   write_best=lambda epoch, step: self.checkpointer.save_best(epoch=epoch, step=step),
                                   scalars=self.step_log.scalars)
        validation.load_state_dict(self.saved_validation)
        self.log(f"validation: {evaluator.images} held-out images and {evaluator.train_images} training images at "
                 f"timesteps {', '.join(map(str, evaluator.timesteps))}")
        return validation

    # ---------------------------------------------------------------- the loop

    def run_loop(self) -> int:
        """Train to the end (0), or until a stop request (0, resumable)."""
        config, progress, plan = self.config, self.progress, self.plan
        self.phases.step, self.phases.epoch = progress.step, progress.last_epoch
        if config.sampling.at_start and progress.step == 0:
            self.sample(0, 0)
        self.phases.enter(TRAINING, total=plan.total_steps)
        self.generator = torch.Generator(device=self.device)
        self.step_log.restart_clock()
        while progress.epoch < plan.epochs and progress.step < plan.total_steps:
            if self.train_epoch():
                return self.finish() if self.early_stop else self.stopped()
            # an epoch cut short by the step limit still ends as sd-scripts ends it: validation and
            # samples of the epoch (its save is the final file's)
            if self.end_epoch():
                return self.finish() if self.early_stop else self.stopped()
        return self.finish()

    def train_epoch(self) -> bool:
        """The batches of the epoch in progress (from where a resumed run left it); True
        when a stop request ends the run."""
        progress, accelerator = self.progress, self.accelerator
        self.batches.resume_at(progress.epoch, progress.batch_in_epoch)
        self.loader.set_epoch(progress.epoch)
        step_loss, micro_batches = None, 0
        try:
            for batch in self.step_log.timed(self.loader):  # time spent waiting for data shows in the log
                batch_index = progress.batch_in_epoch
                progress.batch_in_epoch += 1
                self._warn_unreadable(batch["failed"])
                if not batch["count"]:
                    continue
                # noise and timesteps depend only on (seed, epoch, batch): a resumed run draws the same
                self.generator.manual_seed(
                    hash((self.seed, progress.epoch, batch_index, accelerator.process_index)) & (2**63 - 1))
                loss = self.train_step(batch, self.generator)  # forward, backward, optimizer; no host sync
                step_loss = loss if step_loss is None else step_loss + loss
                micro_batches += 1
                if not accelerator.sync_gradients:
                    continue
                progress.step += 1
                if self.after_step(step_loss / micro_batches):
                    return True
                step_loss, micro_batches = None, 0
                if progress.step >= self.plan.total_steps:
                    break
        finally:
            _release(self.loader)
        return False

    def _warn_unreadable(self, failed) -> None:
        for path, message in failed:
            if path not in self.warned:
                self.warned.add(path)
                self.events.emit(WARNING, message=message, code="unreadable_image", path=path)

    def after_step(self, loss: torch.Tensor) -> bool:
        """After each optimizer step: log, stop the text encoder, sample, save, obey requests;
        True when a stop request ends the run."""
        config, progress = self.config, self.progress
        epoch = progress.epoch + 1  # the 1-based epoch in progress, as events and file names count
        self.phases.step, self.phases.epoch = progress.step, epoch  # said every few seconds, whatever the log interval
        lr_unet, lr_text_encoder = _learning_rates(self.optimizer, self.lr_scheduler, self.network,
                                                   self.train_step.text_encoder_active)
        # sd-scripts' scale_weight_norms: each layer's update held to the norm after the optimizer step
        norms = apply_max_norm(self.network, config.network.scale_weight_norms)
        self.step_log.add(progress.step, epoch, loss, lr_unet, lr_text_encoder, norms)
        if (self.train_step.text_encoder_active and self.stop_text_encoder_at
                and progress.step >= self.stop_text_encoder_at):
            self.train_step.stop_text_encoder()
            self.log(f"text encoder training stopped at step {progress.step}")
        if progress.step % config.logging.log_every_n_steps == 0:
            self.step_log.flush()  # CPU-GPU sync point: the only one in the loop
        if config.sampling.every_n_steps and progress.step % config.sampling.every_n_steps == 0:
            self.sample(epoch, progress.step)
        if config.validation.enabled and due_after_step(config.validation, progress.step):
            self.evaluate(epoch)
        if self.saves.after_step(progress.step):
            self.save(lora_file_name(config.saving.output_name, step=progress.step))
        return self.early_stop or obey_requests(self)

    def end_epoch(self) -> bool:
        """Count the epoch done, save and sample as scheduled; True when a stop request ends the run."""
        config, progress = self.config, self.progress
        progress.epoch += 1
        progress.batch_in_epoch = 0
        self.step_log.end_epoch(progress.epoch, progress.step)
        final_epoch = progress.epoch >= self.plan.epochs or progress.step >= self.plan.total_steps
        if config.validation.enabled and due_after_epoch(config.validation, progress.epoch):
            self.evaluate(progress.epoch)
        if self.saves.after_epoch(progress.epoch, progress.step):
            self.save(lora_file_name(config.saving.output_name, epoch=progress.epoch))
        if config.sampling.every_n_epochs and progress.epoch % config.sampling.every_n_epochs == 0:
            self.sample(progress.epoch, progress.step)
        return not final_epoch and (self.early_stop or obey_requests(self, epoch_end=True))

    def sample(self, epoch: int, step: int) -> int:
        """Write the configured samples (main process); the number written. A skip request
        or a stop signal ends the sampling after the current denoising step."""
        count = 0
        if self.sampler is not None:
            self.phases.enter(SAMPLING)
            # a stop asked for before this sampling began waits for it (the epoch's samples
            # are part of what a stopped run leaves); one that comes during it ends it
            self.stop_pending = self._stop_asked()
            count = len(self.sampler.sample(epoch, step, progress=self.phases.advance,
                                            interrupted=self._sampling_interrupted))
        self.accelerator.wait_for_everyone()
        self._resume_training()
        return count

    def _stop_asked(self) -> bool:
        return self.stop_signal.triggered or (self.run.control / "stop").exists()

    def _sampling_interrupted(self) -> str | None:
        """Why the sampling in progress must end now: "stop" (a signal or a stop request
        that came during it; the stop itself follows at the step boundary) or "skip" (the
        user's request), else None. Asked after every denoising step: a stat or two."""
        if not self.stop_pending and self._stop_asked():
            return "stop"
        return "skip" if (self.run.control / "skip").exists() else None

    def _resume_training(self) -> None:
        """After a pause (sample, evaluate, save): training again, timed from now."""
        self.phases.enter(TRAINING, total=self.plan.total_steps)
        self.step_log.restart_clock()

    def evaluate(self, epoch: int) -> None:
        """Score the LoRA on the held-out images, once per step (the main process; the others
        wait), and decide on early stop."""
        step = self.progress.step
        if self.evaluated_step == step:
            return
        self.evaluated_step = step
        stop = False
        if self.validation is not None:
            self.phases.enter(VALIDATING, total=self.validation.evaluator.scored_images)
            self.validation.evaluate(self.model.denoiser, self.model.text_encoders, step=step, epoch=epoch,
                                     progress=self.phases.advance)
            stop = self.validation.early_stop
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [stop]
            broadcast_object_list(box)  # every process stops together
            stop = bool(box[0])
        self.early_stop = stop
        self._resume_training()

    def save(self, name: str, *, final: bool = False) -> None:
        """Save the LoRA file (and the state) under `name`, once per step; with validation
        on, the file is evaluated first so its event carries its validation loss."""
        progress = self.progress
        self.step_log.flush()  # a NaN must surface before its weights are saved
        if self.checkpointer.last_saved_step == progress.step and not final:
            return  # saved at this step already (an epoch save, then a stop request)
        if self.config.validation.enabled:
            self.evaluate(progress.last_epoch)
        processes = self.accelerator.num_processes
        # each process's random state, so that each resumes where it was
        rng = gather_from_all(capture_rng()) if processes > 1 else None
        if self.main:
            validation = self.validation
            self.phases.enter(SAVING)
            self.checkpointer.save(
                epoch=progress.last_epoch, step=progress.step, name=name, final=final,
                optimizer=self.optimizer, lr_scheduler=self.lr_scheduler, process_rng=rng,
                progress={**asdict(progress), "processes": processes, "step_log": self.step_log.state_dict(),
                          **({"validation": validation.state_dict()} if validation is not None else {})},
                validation_loss=validation.last_loss if validation is not None else None,
            )
        self.checkpointer.last_saved_step = progress.step  # on every process: they must skip the same saves
        self.accelerator.wait_for_everyone()
        self._resume_training()

    def finish(self) -> int:
        progress = self.progress
        self.save(lora_file_name(self.config.saving.output_name), final=True)
        self.step_log.close()
        self.phases.close()  # no heartbeat after the run end
        message = ""
        if self.early_stop:
            best = self.validation.best_point if self.validation is not None else None
            message = (f"early stop: no better validation loss in {self.config.validation.early_stop_patience} "
                       f"evaluations" + (f"; the best ({best.loss:.5g}, epoch {best.epoch}, step {best.step}) is "
                                         f"{self.validation.best_path}" if best is not None else ""))
        self.events.emit(RUN_END, status="finished", step=progress.step, epoch=progress.last_epoch, message=message)
        self.log(f"finished: {progress.step} steps, {progress.epoch} epochs" + (f"; {message}" if message else ""))
        return 0

    def stopped(self) -> int:
        progress = self.progress
        self.step_log.close()
        self.phases.close()
        self.events.emit(RUN_END, status="stopped", step=progress.step, epoch=progress.last_epoch,
                         message=f"stopped at step {progress.step}; resume with --resume")
        self.log(f"stopped at step {progress.step}")
        return 0


# --------------------------------------------------------------------------- setup helpers


def load_dataset(config: TrainConfig, base_dir: Path, processes=None):
    """The dataset and one epoch's instances; refuses to start on images that cannot be
    read (a corrupt file must stop the run now, not hours in). Under several processes
    (`processes`: accelerate's state) the main one reads the images and its refusal is
    every process's, so the check runs once and no process waits for one that gave up."""
    from engine.dataset.folders import scan_dataset
    from engine.plan.preflight import check_dataset

    dataset = scan_dataset(config, base_dir)

    def check() -> None:
        check_dataset(config, dataset, check_images([item.path for item in dataset.items + dataset.validation_items]))

    share_from_main(processes, check) if processes is not None else check()
    return dataset, dataset.training_instances()


def _cache_latents(run: RunDir, config: TrainConfig, model: BaseModel, dataset, accelerator, events, log,
                   phases: PhaseReporter):
    """(LatentCache or None, paths that failed to encode). On disk, the first process of each
    machine writes (the run folder lives on the main machine; another gets a local copy of
    its cache folder), and the others read."""
    if not config.latents_cacheable:
        reason = ("precision.cache_latents is none" if config.precision.cache_latents == "none"
                  else "colour augmentation or random crop changes the pixels every epoch")
        log(f"latents encoded every step: {reason}")
        return None, set()
    on_disk = config.precision.cache_latents == "disk"
    cache = LatentCache(f"{model.source}|{config.model.vae}", folder=run.path / "cache" / "latents" if on_disk else None)
    failed: set[Path] = set()
    if accelerator.is_local_main_process or not on_disk:
        log(f"caching latents of {len(dataset.items)} images ({config.precision.cache_latents})")
        phases.enter(CACHING_LATENTS, total=len(dataset.items))
        last_report = [time.monotonic()]

        def progress(done: int, total: int) -> None:
            phases.advance(done, total)
            if time.monotonic() - last_report[0] > 10:
                last_report[0] = time.monotonic()
                log(f"cached {done}/{total} latents")

        failed = cache.fill(
            dataset.items, model.vae, batch_size=config.training.batch_size, with_flipped=config.augmentation.flip,
            on_failure=lambda path, message: events.emit(WARNING, message=message, code="unreadable_image", path=str(path)),
            on_progress=progress,
        )
    accelerator.wait_for_everyone()
    if on_disk and not accelerator.is_local_main_process:
        failed = {item.path for item in dataset.items if not cache.has(item)}
    return cache, failed


def _cache_text_states(config: TrainConfig, model: BaseModel, instances, train_text_encoder: bool, accelerator, log,
                       phases: PhaseReporter):
    """A TextStateCache of every caption, or None (with the reason in the log)."""
    refusal = text_cache_refusal(config, train_text_encoder)
    if refusal:
        log(f"text encoder outputs computed every step: {refusal}")
        return None
    captions = [item.caption for item in instances]
    distinct = len(set(captions))
    phases.enter(CACHING_TEXT, total=distinct)
    cache = model.runtime.text_state_cache(model, captions, config, autocast=accelerator.autocast,
                                           progress=lambda done: phases.advance(done, distinct))
    phases.advance(distinct)
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
    from engine.model.unet_models import keeps_nchw

    precision = config.precision
    channels_last = "on" if precision.channels_last else "off"
    if keeps_nchw(precision, config.network.type):
        channels_last = f"off ({config.network.type} needs NCHW weights)"
    return (
        f"speed: latents {'cached (' + precision.cache_latents + ')' if latents is not None else 'encoded every step'}, "
        f"text encoder outputs {'cached' if text_states is not None else 'computed every step'}, "
        f"attention {precision.attention}, channels_last {channels_last}, "
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


def _release(loader) -> None:
    """Tell accelerate a loader left early is done (it only notices at the end itself)."""
    if loader in loader.gradient_state.dataloader_references:
        loader.end()


def _make_sampler(run, config, base_dir, model, events, device, dtype):
    if not (config.sampling.prompts.strip() or config.sampling.prompts_file.strip()):
        return None
    from engine.sampling.sampler import TrainingSampler

    return TrainingSampler(run, config, Path(base_dir), model, events, device, dtype)
