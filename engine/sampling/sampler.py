"""Sample images while a LoRA trains, without disturbing the training.

`TrainingSampler.sample(epoch, step)` renders every prompt of the config through the model
family's diffusers pipeline (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`, ...),
built around the modules the trainer already holds (so the LoRA layers peft injected are
active and nothing is loaded twice), writes one PNG per prompt into `samples/` with
A1111's `parameters` text, and emits a `sample` event per image. The family gives the
pipeline, its schedulers, the prompt embeddings and the decoding (engine.model.family).

Training must go on exactly as if no sample had been taken: every RNG the trainer draws
from (torch CPU/CUDA, Python `random`, NumPy) is saved before and restored after, each
prompt draws its noise from its own `torch.Generator`, and the train/eval flag of every
submodule and the device of every model are put back as they were.

The pieces the grid command shares (pipeline assembly, rendering, PNG text) are
module-level functions here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from engine.atomic import atomic_path
from engine.config.schema import TrainConfig
from engine.errors import LoradeckError
from engine.run.events import CONTROL, SAMPLE, WARNING, EventWriter
from engine.config.prompts import SamplePrompt, load_prompts
from engine.run.folder import RunDir
from engine.train.state import capture_rng, restore_rng

if TYPE_CHECKING:
    from PIL import Image


# --------------------------------------------------------------------------- pipeline


def unwrap_module(module: Any) -> Any:
    """The plain diffusers/transformers module inside DDP, torch.compile or a PeftModel."""
    while True:
        if hasattr(module, "_orig_mod"):  # torch.compile
            module = module._orig_mod
        elif isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "get_base_model") and hasattr(module, "peft_config"):
            module = module.get_base_model()  # PeftModel; the LoRA layers stay injected inside
        else:
            return module


def build_pipeline(model: Any, scheduler: Any) -> Any:
    """A pipeline of the model's family sharing the model's modules (no copy, no load),
    without a safety checker."""
    parts = {name: unwrap_module(part) if isinstance(part, torch.nn.Module) else part
             for name, part in model.parts.items()}
    pipeline = model.runtime.build_pipeline(parts, scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class SampleInterrupted(Exception):
    """`on_step` asked to end the image early (a skip request, a stop signal)."""


def render(
    pipeline: Any,
    prompt: SamplePrompt,
    *,
    runtime: Any,
    base_scheduler_config: Any,
    clip_skip: int = 1,
    v_prediction: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_step: Callable[[int], bool] | None = None,
) -> "Image.Image":
    """One image for one prompt, with the prompt's sampler, seed, size, steps and CFG, through
    the pipeline of `runtime`'s family (engine.model.family.FamilyRuntime).

    The noise comes from a CPU generator seeded with the prompt's seed, so a seed gives
    the same starting noise on any GPU or on the CPU (in A1111: RNG source = CPU).
    `on_step(steps_done)` is called after each denoising step; True ends the image there
    (the pipeline's own interrupt) and raises SampleInterrupted.
    """
    pipeline.scheduler = runtime.sampling_scheduler(prompt.sampler, base_scheduler_config, v_prediction=v_prediction)
    generator = torch.Generator(device="cpu").manual_seed(prompt.seed)
    device = torch.device(device)
    use_autocast = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    autocast = torch.autocast("cuda", dtype=dtype) if use_autocast else contextlib.nullcontext()
    with torch.no_grad():
        with autocast:
            arguments = runtime.sample_arguments(pipeline, prompt, clip_skip)
            interrupted = []

            def after_step(pipe, index, _timestep, tensors):
                if on_step(index + 1):
                    interrupted.append(index + 1)
                    pipe._interrupt = True  # the pipelines skip the steps left
                return tensors

            latents = pipeline(
                **arguments,
                generator=generator,
                output_type="latent",
                **({"callback_on_step_end": after_step} if on_step is not None else {}),
            ).images
            if interrupted:
                raise SampleInterrupted(f"interrupted after {interrupted[0]} of {prompt.steps} steps")
        # Decoded outside autocast, in the VAE's own dtype: the loader keeps the VAE in
        # fp32 under fp16 training when the family's overflows in fp16.
        pixels = runtime.decode(pipeline, latents, width=arguments["width"], height=arguments["height"])
    return pipeline.image_processor.postprocess(pixels, output_type="pil", do_denormalize=[True])[0]


# --------------------------------------------------------------------------- PNG files


def _infotext_value(value: object) -> str:
    """A value as A1111 writes it: quoted JSON when it holds a comma, colon or newline."""
    text = str(value)
    if any(mark in text for mark in (",", ":", "\n", '"')):
        return json.dumps(text, ensure_ascii=False)
    return text


def a1111_parameters(prompt: SamplePrompt, *, model_name: str = "", clip_skip: int = 1, **extra: object) -> str:
    """The `parameters` PNG text AUTOMATIC1111 writes, so A1111, ComfyUI and viewers read it."""
    lines = [prompt.prompt]
    if prompt.negative_prompt:
        lines.append(f"Negative prompt: {prompt.negative_prompt}")
    fields: dict[str, object] = {
        "Steps": prompt.steps,
        "Sampler": prompt.sampler_label,
        "CFG scale": f"{prompt.cfg:g}",
        "Seed": prompt.seed,
        "Size": f"{prompt.width}x{prompt.height}",
    }
    if model_name:
        fields["Model"] = model_name
    if clip_skip > 1:
        fields["Clip skip"] = clip_skip
    fields["RNG"] = "CPU"
    fields.update({key: value for key, value in extra.items() if value not in (None, "")})
    lines.append(", ".join(f"{key}: {_infotext_value(value)}" for key, value in fields.items()))
    return "\n".join(lines)


def save_png(image: "Image.Image", path: Path, text_chunks: dict[str, str]) -> None:
    """Write the PNG atomically with text chunks (UTF-8 iTXt), e.g. A1111's `parameters`."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text_chunks.items():
        info.add_itxt(key, value)
    with atomic_path(path) as temp:
        image.save(temp, format="PNG", pnginfo=info)


def sample_file_name(epoch: int, step: int, prompt_index: int) -> str:
    return f"e{epoch:04d}-s{step:06d}-p{prompt_index:02d}.png"


def _module_device(module: torch.nn.Module) -> torch.device | None:
    for parameter in module.parameters():
        return parameter.device
    return None


@contextlib.contextmanager
def inference_mode_for(modules: list[torch.nn.Module], device: torch.device) -> Iterator[None]:
    """Eval mode on `device` for the block; then every flag, device and RNG state as before.

    Train/eval flags are restored per submodule: a trainer may keep parts (a frozen text
    encoder, the VAE) in eval mode on purpose, or offload them to the CPU.
    """
    rng_state = capture_rng()
    flags = [(sub, sub.training) for module in modules for sub in module.modules()]
    moved: list[tuple[torch.nn.Module, torch.device]] = []
    try:
        for module in modules:
            module.eval()
            where = _module_device(module)
            if where is not None and where != device:
                moved.append((module, where))
                module.to(device)
        yield
    finally:
        for module, where in moved:
            module.to(where)
        for sub, training in flags:
            sub.training = training
        restore_rng(rng_state)


# --------------------------------------------------------------------------- the sampler


class TrainingSampler:
    """Renders the config's sample prompts with the LoRA as it is at this step."""

    def __init__(
        self,
        run_dir: RunDir,
        config: TrainConfig,
        base_dir: Path,
        model: Any,
        events: EventWriter,
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        self.run_dir = run_dir
        self.config = config
        self.base_dir = Path(base_dir)
        self.model = model
        self.events = events
        self.device = torch.device(device)
        self.dtype = dtype
        self._pipeline: Any = None
        # A prompt without --d keeps the seed chosen the first time it was seen, so the
        # same prompt is comparable from epoch to epoch even though the file is re-read.
        self._chosen_seeds: dict[tuple, int] = {}
        self._reported: set[str] = set()
        self._last: tuple[tuple[int, int], list[SamplePrompt], list[Path]] | None = None

    def prompts(self) -> list[SamplePrompt]:
        """The prompts as of now (the file is re-read); new problems become warning events."""
        try:
            prompts, warnings = load_prompts(self.config, self.base_dir)
        except LoradeckError as error:
            prompts, warnings = [], [f"no samples: {error}"]
        for message in warnings:
            if message not in self._reported:
                self._reported.add(message)
                self.events.emit(WARNING, message=message, code="sample_prompts")
        return [self._stable_seed(prompt) for prompt in prompts]

    def _stable_seed(self, prompt: SamplePrompt) -> SamplePrompt:
        if prompt.seed_given:
            return prompt
        key = (prompt.prompt, prompt.negative_prompt, prompt.width, prompt.height, prompt.steps, prompt.cfg, prompt.sampler)
        seed = self._chosen_seeds.setdefault(key, prompt.seed)
        return prompt if seed == prompt.seed else dataclasses.replace(prompt, seed=seed)

    def sample(self, epoch: int, step: int, *, progress: Callable[[int, int, str], None] | None = None,
               interrupted: Callable[[], str | None] | None = None) -> list[Path]:
        """One PNG per prompt in `samples/`, and a `sample` event for each; their paths.

        Asked again at the same epoch and step with the same prompts (a step that is also
        an epoch end, a sample-now request), the images would be identical: the files
        already written are returned. `progress(done, total, detail)` hears every
        denoising step (of all prompts together); `interrupted()` is asked after each and
        ends the sampling when it names a reason: "skip" (a skip request: a control event
        says where it ended, training goes on) or anything else (a stop signal).
        """
        prompts = self.prompts()
        if not prompts:
            return []
        if self._last is not None and self._last[:2] == ((epoch, step), prompts):
            return list(self._last[2])
        self.run_dir.clear_request("skip")  # a skip meant for an earlier sampling
        modules = [unwrap_module(m) for m in self.model.modules()]
        paths: list[Path] = []
        total = sum(prompt.steps for prompt in prompts)
        done = 0
        with inference_mode_for(modules, self.device):
            pipeline = self._get_pipeline()
            for index, prompt in enumerate(prompts):
                detail = f"image {index + 1}/{len(prompts)}"
                reason: list[str] = []

                def on_step(steps: int, before: int = done, detail: str = detail) -> bool:
                    if progress is not None:
                        progress(before + steps, total, detail)
                    why = interrupted() if interrupted is not None else None
                    if why:
                        reason.append(why)
                    return bool(why)

                done += prompt.steps
                try:
                    image = render(
                        pipeline,
                        prompt,
                        runtime=self.model.runtime,
                        base_scheduler_config=self.model.noise_scheduler.config,
                        clip_skip=self.config.model.clip_skip,
                        v_prediction=self.config.model.v_parameterization,
                        device=self.device,
                        dtype=self.dtype,
                        on_step=on_step if (progress or interrupted) else None,
                    )
                except SampleInterrupted:
                    if reason and reason[0] == "skip":
                        self.run_dir.clear_request("skip")
                        self.events.emit(CONTROL, request="skip",
                                         outcome=f"sampling skipped at {detail} ({len(paths)} written)")
                    return paths  # not remembered: asked again, the samples are made
                except torch.cuda.OutOfMemoryError:
                    # a sample too large for what training leaves free must not end the run
                    torch.cuda.empty_cache()
                    self.events.emit(
                        WARNING,
                        message=f"sample {index} ({prompt.width}x{prompt.height}) ran out of GPU memory; skipped",
                        code="sample_out_of_memory",
                    )
                    continue
                path = self.run_dir.samples / sample_file_name(epoch, step, index)
                save_png(image, path, {"parameters": self._parameters(prompt, epoch, step)})
                paths.append(path)
                self.events.emit(
                    SAMPLE,
                    path=path.relative_to(self.run_dir.path).as_posix(),
                    epoch=epoch,
                    step=step,
                    prompt_index=index,
                    prompt=prompt.prompt,
                    negative_prompt=prompt.negative_prompt,
                    seed=prompt.seed,
                    width=image.width,
                    height=image.height,
                    steps=prompt.steps,
                    cfg=prompt.cfg,
                    sampler=prompt.sampler,
                )
        self._last = ((epoch, step), prompts, paths)
        return paths

    def _get_pipeline(self) -> Any:
        if self._pipeline is None:
            scheduler = self.model.runtime.sampling_scheduler(self.config.sampling.sampler,
                                                             self.model.noise_scheduler.config)
            self._pipeline = build_pipeline(self.model, scheduler)
        return self._pipeline

    def _parameters(self, prompt: SamplePrompt, epoch: int, step: int) -> str:
        return a1111_parameters(
            prompt,
            model_name=self.model.name,
            clip_skip=self.config.model.clip_skip,
            Lora=self.config.saving.output_name,
            Epoch=epoch,
            Step=step,
        )

