"""The model-family contract: everything a family (SD 1.x/2.x, SDXL, Flux.1, ...) tells the trainer.

A family is one folder, `engine/model/families/<name>/`, registered by one line in
`engine/model/families/__init__.py`. It implements two typed halves of this contract:

* `FamilyDescriptor` (the folder's `__init__.py`; light: no torch, no HF stack): its name
  and label, how to recognise its models (a diffusers folder's configs, a single file's
  tensor names), its parts (denoiser, VAE, text encoders, tokenizers), the LoRA targets and
  their Kohya key prefixes as data, the sizes and memory constants the plan and the VRAM
  estimate use, advice for the plan, the metadata it writes into a LoRA file. The plan,
  the config form, the Kohya import and the TUI read it.
* `FamilyRuntime` (the folder's `runtime.py`; heavy): loading (diffusers folder, hub id,
  single file), single-file export, the objective and training schedule, the tensors a
  training example carries for its captions, text conditioning and its cache, the
  denoiser call, the speed settings, the LoRA file layout, sampling (pipeline, schedulers,
  prompt embeddings, decoding) and the tiny model the tests train.

Who calls what, in the order a training run does (engine.train.loop):

    plan        descriptor.shapes, adapted_layers, frozen_parameters, activation constants,
                system_ram_bytes, plan_notes (engine.plan)
    load        runtime.load_diffusers / load_single_file -> parts; training_scheduler;
                objective (engine.model.loading builds a `BaseModel`)
    network     descriptor.lora_components: which parts get adapters, their Kohya prefixes
                and learning rates (engine.network.lora)
    speed       runtime.apply_speed_settings, once, before the optimizer exists
    data        runtime.text_state_cache (when captions can be cached) or
                runtime.caption_tokens: what each example carries for its caption;
                descriptor.size_conditioning: each example carries its size and crop
    each step   objective.draw -> objective.noisy -> runtime.condition -> runtime.predict
                -> objective.target -> objective.loss (engine.train.step); validation runs
                the same with fixed noise (engine.train.validation)
    save        descriptor.lora_metadata; runtime.lora_file_tensors (engine.network)
    samples     runtime.sampling_scheduler, build_pipeline, prompt_embeddings, decode
                (engine.sampling)

Design choices, made for the families that come after SD and SDXL:

* An abstract class, not a Protocol: the optional parts have defaults here (a LoRA file
  layout that is the module names, VAE decoding by the VAE's own scale and shift, no size
  conditioning), and a family that forgets a required part fails when it is first used
  (`TypeError: Can't instantiate abstract class`), not halfway through a run.
* The objective is not the family (engine.model.objectives): DDPM and flow matching are
  each shared by several families. The family picks one (`runtime.objective`) and maps
  its timesteps onto its denoiser in `predict`, which also packs latents, builds image
  position ids or adds a guidance embedding where its denoiser wants them.
* Conditioning is an open dict of the denoiser's keyword arguments (`condition`), so T5 +
  CLIP states with a pooled output, text ids or size numbers need no new parameter
  anywhere else; a training example carries open named tensors for the same reason
  (`caption_tokens`, `text_state_cache`), stacked and moved by key.
* A loaded model is named parts (`BaseModel.parts`, by the diffusers pipeline's component
  names), never fixed attributes, so "a second text encoder" or "a transformer instead of
  a U-Net" is data.
* LoRA targets are data (`LoraComponent`), the file layout a hook
  (`lora_file_tensors` / `lora_network_tensors`), so a layout whose keys are not one per
  module (sd-scripts' Flux fuses q, k and v into one `qkv` key) fits.

Nothing outside the family folders asks a family's name: code reads what the descriptor
says, and the registry (engine.model.families) finds the descriptor.

Light module: the heavy runtime is imported only by `FamilyDescriptor.runtime()`.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from engine.errors import LoradeckError
from engine.model.shapes import LayerShape, ModelShapes, folder_shapes
from engine.paths import resolve_path

if TYPE_CHECKING:
    import torch

    from engine.model.objectives import Objective


# --------------------------------------------------------------------------- data the descriptor holds


@dataclass(frozen=True)
class LoraComponent:
    """One model part that a network adapts, and how its adapters are named in a file."""

    part: str  # the model part (a diffusers pipeline component name): "unet", "text_encoder", "transformer"
    prefix: str  # Kohya key prefix of its adapters: "lora_unet", "lora_te", "lora_te1", ...
    learning_rate: str  # the config's rate that trains it: "unet", "text_encoder" or "text_encoder_2"
    target_names: tuple[str, ...]  # standard LoRA: peft target_modules (module-name suffixes)
    blocks: tuple[str, ...]  # the other network types: every Linear/Conv2d inside modules of these classes
    conv_blocks: tuple[str, ...] = ()  # the conv types (LoCon, LoHa, ...) add these blocks' layers
    text_model_level: bool = False  # CLIP: Kohya keys keep the `text_model.` level transformers 5 dropped
    switch: str = ""  # a NetworkSpec flag that must be on as well ("train_t5xxl": Flux's T5); empty: none

    @property
    def is_denoiser(self) -> bool:
        """Trained when `network.train_unet` is on (the config's word for the denoiser)."""
        return self.learning_rate == "unet"

    def key(self, module_name: str) -> str:
        """The Kohya key of the module `module_name` of this part:
        `lora_unet_down_blocks_0_attentions_0_proj_in` for `down_blocks.0.attentions.0.proj_in`."""
        if self.text_model_level:
            module_name = "text_model." + module_name.removeprefix("text_model.")
        return f"{self.prefix}_{module_name.replace('.', '_')}"


class CaptionTensors(Protocol):
    """What a training example carries for its caption, by name: token ids per tokenizer
    (`input_ids`, `token_weights`, `input_ids_2`, ...) or cached encoder outputs
    (`text_states`, `pooled_states`, ...). engine.train.data stacks every tensor by key."""

    def example(self, caption: str) -> dict[str, "torch.Tensor"]: ...


# --------------------------------------------------------------------------- the light descriptor


# How descriptor classes are declared: frozen data, compared and hashed by identity, shown by name
descriptor_dataclass = dataclass(frozen=True, eq=False, repr=False)


@descriptor_dataclass
class FamilyDescriptor(ABC):
    """What the plan, the config and the TUI know of a family, without torch.

    A family folder's `__init__.py` defines `DESCRIPTORS`: one instance per model line it
    trains (the `sd` folder has SD 1.x and SD 2.x: one runtime, two descriptors that differ
    in sizes, detection and metadata). A family subclasses it for its methods (declared
    with `@descriptor_dataclass`, as this class is) and instantiates it with its data.
    """

    # ---- identity
    name: str  # `model.family`, the plan's and events' family: "sd15", "sd2", "sdxl"
    label: str  # in words, for the plan and the dashboard: "SD 1.x", "SDXL"
    runtime_path: str  # "module:Class" of the heavy runtime, imported by `runtime()`
    default_resolution: int  # the side its base model was trained at (512, 1024)
    config_folder: Path | None = None  # shipped diffusers configs (engine/model/assets/...): the
    # plan's shapes for a hub id, and the offline configs for a single file and a VAE file

    # ---- parts (diffusers pipeline component names)
    denoiser: str = "unet"
    text_encoders: tuple[str, ...] = ("text_encoder",)
    tokenizers: tuple[str, ...] = ("tokenizer",)
    lora_components: tuple[LoraComponent, ...] = ()  # denoiser first, then the text encoders

    # ---- data
    size_conditioning: bool = False  # each example carries original_size, crop_top_left and target_size

    # ---- memory (engine.plan.vram explains the model)
    frozen_parameters: Mapping[str, int] = field(default_factory=dict)  # part -> parameters of the released model
    activations_per_image: Mapping[bool, float] = field(default_factory=dict)  # GiB per 512² image, by checkpointing
    vae_encode_per_image: float = 0.44  # GiB per 512² image while the VAE encodes
    fp16_vae_note: str = ""  # said once when the family's VAE has to run in fp32 under fp16

    # diffusers' load_lora_weights reads this family's LoRA files at any size (the grid uses
    # it); Flux's Kohya converter assumes the real model's sizes, so a tiny Flux's files go
    # through the trainer's own network there
    lora_loads_in_diffusers: bool = True

    # ---- the Kohya GUI
    kohya_flags: tuple[str, ...] = ()  # GUI JSON keys that, when true, select this family ("sdxl", "v2")
    kohya_settings: Mapping[str, str] = field(default_factory=dict)  # GUI key -> the boolean setting it turns
    # on when this family is selected ("sdxl_cache_text_encoder_outputs" -> precision.cache_text_encoder_outputs)
    kohya_notes: Mapping[str, str] = field(default_factory=dict)  # GUI key -> the note its `true` gets
    # GUI key -> the setting that takes its value, when this family's flag is set (else the key is ignored)
    kohya_values: Mapping[str, str] = field(default_factory=dict)
    # GUI key -> (the values that leave it off, what it would change): this family's settings
    # loradeck does not train, noted in one line when on (as kohya_keys.NOT_BUILT)
    kohya_not_built: Mapping[str, tuple[tuple, str]] = field(default_factory=dict)
    # export-kohya: sd-scripts' script, the GUI's LoRA_type and network module of a plain LoRA
    # ("" keeps the SD ones: Standard, networks.lora), and GUI key -> sd-scripts option for
    # the kohya_values the command line passes ("flux1_cache_text_encoder_outputs" ->
    # "cache_text_encoder_outputs")
    kohya_script: str = "train_network.py"
    kohya_lora_type: str = ""
    kohya_lora_module: str = ""
    kohya_options: Mapping[str, str] = field(default_factory=dict)

    @property
    def kohya_keys(self) -> frozenset[str]:
        """Every GUI key this family reads, notes or refuses to honour."""
        return frozenset({*self.kohya_flags, *self.kohya_settings, *self.kohya_notes, *self.kohya_values,
                          *self.kohya_not_built})

    # ---- detection (registry: the first family that recognises a model is its family)

    @abstractmethod
    def recognizes_folder(self, folder: Path) -> bool:
        """Whether the diffusers folder (or a hub snapshot holding only model_index.json) is
        one of this family's, from its configs alone. Called before loading and by the plan.
        Families must not overlap (tests check each tiny model is recognised once)."""

    @abstractmethod
    def recognizes_checkpoint(self, shapes: Mapping[str, Sequence[int]]) -> bool:
        """Whether a single-file checkpoint with these tensor names and shapes is one of this
        family's (read from a .safetensors header; no tensor is loaded)."""

    # ---- the plan

    def shapes(self, config, base_dir: str | Path) -> ModelShapes:
        """The part configs of the config's base model: its local diffusers folder's, else
        this family's shipped ones (`config_folder`). Called by the plan, the LoRA size and
        the VRAM estimate."""
        local = resolve_path(base_dir, config.model.pretrained_model.strip())
        found = folder_shapes(local, self.denoiser, self.text_encoders) or folder_shapes(
            self.config_folder, self.denoiser, self.text_encoders)
        if found is None:
            raise LoradeckError(f"{self.config_folder}: the {self.label} configs shipped with loradeck are missing")
        return found

    @abstractmethod
    def adapted_layers(self, spec, shapes: ModelShapes) -> list[LayerShape]:
        """Every layer a network of `spec` (engine.config.network_types.NetworkSpec) adapts on
        a model of these shapes, as engine.network builds it (the plan's parameter count and
        file size; tests compare it with the built network)."""

    def activation_scale(self, shapes: ModelShapes) -> float:
        """How this model's activations compare to the real model's the constants were
        measured on (1 for the released architecture; smaller for the tiny test model)."""
        return 1.0

    def text_encoder_activations(self, shapes: ModelShapes, windows: int) -> float:
        """GiB per image of the text encoders' activations when they train, for captions of
        `windows` 75-token windows (engine.plan.vram)."""
        return 0.0

    def system_ram_bytes(self, parameters: Mapping[str, int], weight_bytes: int, config=None) -> int:
        """System memory the model passes through while it loads, for the plan (by default
        every frozen part once, in the compute precision). A family whose loading needs more
        (a text encoder read in fp32 and cast, parts kept on the CPU while training) says so."""
        return sum(parameters.values()) * weight_bytes

    def vae_runs_in_fp16(self, config) -> bool:
        """Whether the VAE may run in fp16 under fp16 training (else it runs in fp32)."""
        return False

    def fp32_under_fp16(self, config) -> tuple[str, ...]:
        """The parts that stay in fp32 when training in fp16, because they overflow there (SD's
        VAE; a T5 encoder would be another). Called when the model loads and by the VRAM
        estimate; bf16 keeps every part in bf16."""
        return () if self.vae_runs_in_fp16(config) else ("vae",)

    def plan_notes(self, config) -> list[str]:
        """One line per setting that departs from what this family needs (shown by the plan
        and the config screen before a run starts)."""
        return []

    def network_problem(self, spec) -> str | None:
        """Why this family cannot train a network of `spec` (engine.config.network_types.NetworkSpec),
        in one line naming the setting; None when it can. The plan shows it, the run refuses it."""
        return None

    def step_activations(self, config, shapes: ModelShapes, *, width: int, height: int, batch: int) -> float | None:
        """GiB of a training step's activations at bf16/fp16 for images of this size, or None
        for engine.plan.vram's rule (pixels × `activations_per_image` × `activation_scale`,
        plus the rank's intermediate and the text encoders'). A family whose activations do
        not follow pixels (a transformer attending over image and text tokens) says here."""
        return None

    def resident_weights(self, config, parameters: Mapping[str, int], weight_bytes: int,
                         in_fp32: tuple[str, ...]) -> float:
        """Bytes of the frozen weights on the GPU while training steps run (by default every
        part, in the compute precision, `in_fp32` parts in fp32). A family that stores
        weights in fp8 or moves parts off the GPU after use says so."""
        return sum(count * (4 if part in in_fp32 else weight_bytes) for part, count in parameters.items())

    def memory_advice(self, config) -> list[str]:
        """Family-specific changes for the out-of-memory message, after the general ones
        about batch size and gradient checkpointing (engine.plan.vram)."""
        return []

    # ---- the LoRA file

    @abstractmethod
    def lora_metadata(self, config) -> dict[str, Any]:
        """Keys this family sets in a LoRA file's metadata: `ss_base_model_version`, `ss_v2`,
        `modelspec.architecture`, and any general key it says otherwise (they are applied
        last; engine.network.metadata writes them at every save)."""

    # ---- the runtime

    def runtime(self) -> "FamilyRuntime":
        """The heavy half (imported on first use, then kept)."""
        cached = _RUNTIMES.get(self.runtime_path)
        if cached is None:
            module_name, class_name = self.runtime_path.split(":")
            runtime_class = getattr(importlib.import_module(module_name), class_name)
            cached = _RUNTIMES[self.runtime_path] = runtime_class()
        return cached

    def __repr__(self) -> str:
        return f"<family {self.name}>"


_RUNTIMES: dict[str, "FamilyRuntime"] = {}


# --------------------------------------------------------------------------- the loaded model


@dataclass
class BaseModel:
    """A loaded base model: its parts by their diffusers pipeline names, frozen, on the device."""

    family: FamilyDescriptor
    parts: dict[str, Any]  # "unet"/"transformer", "vae", "text_encoder"..., "tokenizer"...
    noise_scheduler: Any  # the training schedule (runtime.training_scheduler); samplers start from its config
    objective: "Objective"  # what a step optimises (runtime.objective)
    name: str  # what metadata and sample files call it: file stem, folder name or hub id
    source: str  # resolved path or hub id

    @property
    def runtime(self) -> "FamilyRuntime":
        return self.family.runtime()

    @property
    def denoiser(self) -> Any:
        return self.parts[self.family.denoiser]

    @property
    def vae(self) -> Any:
        return self.parts["vae"]

    @property
    def text_encoders(self) -> list:
        return [self.parts[name] for name in self.family.text_encoders]

    @property
    def tokenizers(self) -> list:
        return [self.parts[name] for name in self.family.tokenizers]

    def modules(self) -> list:
        """Every torch module (denoiser, text encoders, VAE), for eval mode and devices."""
        names = (self.family.denoiser, *self.family.text_encoders, "vae")
        return [self.parts[name] for name in names]

    def __getattr__(self, name: str) -> Any:
        # a part by its pipeline name (model.unet, model.text_encoder_2), as on a diffusers pipeline
        parts = self.__dict__.get("parts")
        if parts is not None and name in parts:
            return parts[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or part {name!r}")


# --------------------------------------------------------------------------- the heavy runtime


class FamilyRuntime(ABC):
    """The heavy half of a family: every method may import torch and the HF stack.

    One instance per runtime class (`FamilyDescriptor.runtime()`), without state: what a
    method needs comes in its arguments, so the SD 1.x and SD 2.x descriptors share one.
    """

    # ---- loading (engine.model.loading, before anything else of a run)

    @abstractmethod
    def load_diffusers(self, source: str, *, local_only: bool, dtype, vae_dtype) -> dict[str, Any]:
        """The parts of a diffusers folder or hub id by pipeline name, plus "scheduler" (its
        noise schedule). The weights in `dtype`, the VAE in `vae_dtype`; a part that fails
        is one LoradeckError line naming it (engine.model.parts.load_parts)."""

    @abstractmethod
    def load_single_file(self, path: Path, *, allow_ckpt: bool, config_dir: Path | None, prediction_type: str | None,
                         dtype) -> dict[str, Any]:
        """The same parts from an original-layout single file, offline: configs from
        `config_dir` (a diffusers folder) or the descriptor's `config_folder`; a .ckpt only
        when `allow_ckpt` (weights-only). `prediction_type` overrides the schedule's."""

    def single_file_companions(self, config, base_dir) -> dict[str, Any]:
        """Extra keyword arguments for `load_single_file` from the config (a family shipped as
        several files names the others here: Flux's clip_l, t5xxl and ae); none by default."""
        return {}

    def place_parts(self, parts: dict[str, Any], config, *, device, dtype, in_fp32: tuple[str, ...]) -> None:
        """Put the loaded parts where training wants them, frozen: by default every module in
        `dtype` (`in_fp32` parts in fp32) on `device`. A family that stores weights otherwise
        (fp8) or keeps parts off the device says so."""
        import torch

        for part, module in parts.items():
            if not isinstance(module, torch.nn.Module):
                continue  # tokenizers and the schedule
            wanted = torch.float32 if part in in_fp32 else dtype
            if module.dtype != wanted:
                module.to(dtype=wanted)
            module.to(device)
            module.requires_grad_(False)

    @abstractmethod
    def export_single_file(self, diffusers_dir: Path, out_path: Path, *, dtype=None) -> Path:
        """Write this family's diffusers folder as one original-layout .safetensors that
        A1111/ComfyUI/sd-scripts read; refuse a folder of another family in one line; check
        every weight survives the round trip before writing (engine.model.single_file)."""

    @abstractmethod
    def training_scheduler(self, scheduler, config) -> Any:
        """The schedule the model trains with, from the one it was loaded with (DDPM with the
        model's betas; a flow-matching schedule). Its config seeds the sampling schedulers."""

    @abstractmethod
    def objective(self, scheduler, config) -> "Objective":
        """The objective a step optimises (engine.model.objectives), built once per run
        from the training schedule and the config's loss settings."""

    # ---- speed (engine.train.step.apply_speed_settings, once, after the network is attached)

    @abstractmethod
    def apply_speed_settings(self, model: BaseModel, precision, *, train_text_encoder: bool, network_type: str) -> None:
        """Gradient checkpointing, the attention kernel (`precision.attention`: sdpa or
        xformers, already checked to be installed) and the memory format, on this family's
        modules. Must not change any number a step computes."""

    # ---- data (engine.train.data, when the dataset is built)

    @abstractmethod
    def caption_tokens(self, tokenizers: Sequence[Any], *, max_token_length: int, weighted: bool,
                       config=None) -> CaptionTensors:
        """What each example carries for its caption when text is encoded every step: the
        token ids of each tokenizer (and emphasis weights). Validation uses the same.
        `config` for a family whose token lengths are its own settings."""

    @abstractmethod
    def text_state_cache(self, model: BaseModel, captions, config, *, autocast: Callable | None = None,
                         progress: Callable[[int], None] | None = None) -> CaptionTensors:
        """Every distinct caption's encoder outputs, computed once (when the text encoders are
        frozen and captions never change: engine.model.text_conditioning.text_cache_refusal),
        under the step's autocast so cached and live conditioning agree. `progress(done)`
        after each batch of captions: the number of distinct captions encoded so far (a
        T5-XXL pass over thousands of captions takes minutes, and the dashboard counts it)."""

    # ---- the step (engine.train.step, every micro-batch; validation the same)

    @abstractmethod
    def condition(self, text_encoders: Sequence[Any], batch: Mapping[str, Any], *, config, train_text_encoder: bool,
                  device) -> dict[str, Any]:
        """The denoiser's conditioning for a batch, as keyword arguments for `predict`: from
        the batch's cached outputs, else by running `text_encoders` (prepared, in the
        family's order) on its tokens, with gradients only when `train_text_encoder`.
        Runs under the step's autocast."""

    @abstractmethod
    def predict(self, denoiser, noisy_latents, timesteps, conditioning: dict[str, Any]):
        """The denoiser's prediction for `noisy_latents` (batch, channels, h, w) at the
        objective's `timesteps`, shaped like the latents: pack and unpack, position ids and
        guidance happen here. Runs under the step's autocast."""

    # ---- the LoRA file (engine.network.lora, at every save and load)

    def lora_file_tensors(self, tensors: dict[str, Any]) -> dict[str, Any]:
        """The network's tensors (one Kohya key per adapted module) in this family's file
        layout; the default is that layout itself. A layout that fuses modules (q, k, v
        into one `qkv` key) converts here."""
        return tensors

    def lora_network_tensors(self, tensors: dict[str, Any]) -> dict[str, Any]:
        """The inverse of `lora_file_tensors`: a file's tensors, one key per adapted module."""
        return tensors

    def adapters_attached(self, component: LoraComponent, module, spec) -> None:
        """Called once a component's adapters are injected, before anything trains: a layout
        that fuses modules ties their adapters here (the default does nothing)."""

    # ---- sampling (engine.sampling: samples during training and `loradeck grid`)

    @abstractmethod
    def sampling_scheduler(self, sampler: str, base_config, *, v_prediction: bool = False) -> Any:
        """A fresh scheduler for one of engine.config.schema.SAMPLERS from the model's schedule
        config; a sampler the family cannot run is one LoradeckError line."""

    @abstractmethod
    def build_pipeline(self, parts: Mapping[str, Any], scheduler) -> Any:
        """A diffusers pipeline around the given (unwrapped, LoRA-carrying) parts: nothing is
        loaded or copied, no safety checker."""

    @abstractmethod
    def prompt_embeddings(self, pipeline, prompt: str, negative_prompt: str, clip_skip: int) -> dict[str, Any]:
        """The pipeline's prompt keyword arguments for a prompt and its negative, with A1111
        emphasis and long-prompt windows as this family's text encoders allow."""

    def sample_arguments(self, pipeline, prompt, clip_skip: int) -> dict[str, Any]:
        """The pipeline's keyword arguments for one SamplePrompt (engine.config.prompts), all but
        the generator and the output type: its embeddings, size, steps and guidance (`--l`
        as classifier-free guidance by default)."""
        return {**self.prompt_embeddings(pipeline, prompt.prompt, prompt.negative_prompt, clip_skip),
                "width": prompt.width, "height": prompt.height, "num_inference_steps": prompt.steps,
                "guidance_scale": prompt.cfg}

    def decode(self, pipeline, latents, *, width: int | None = None, height: int | None = None):
        """Pixels in [-1, 1] of the latents a pipeline returned with output_type="latent",
        in the VAE's own dtype (outside autocast): scale and shift from the VAE's config.
        A family whose pipeline returns packed latents unpacks them first (to `width` x `height`
        pixels)."""
        vae = pipeline.vae
        latents = latents.to(vae.dtype) / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            latents = latents + shift
        return vae.decode(latents, return_dict=False)[0]

    # ---- tests and demos (engine.model.tiny)

    @abstractmethod
    def tiny_pipeline(self, seed: int = 0) -> Any:
        """A pipeline with this family's real module layout at toy width and random weights,
        built offline; `loradeck make-tiny-model --family <name>` saves it, and every
        trainer feature test trains it (tests/conftest.py's `family` fixture)."""
