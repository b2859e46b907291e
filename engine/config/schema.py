"""The training config: typed, frozen, with the help text beside every setting.

One schema serves the trainer, `loradeck plan`, the Kohya importer and the TUI form
(labels, help, advice, ranges and choices are defined here once). A config is parsed from
TOML into frozen dataclasses and never mutated afterwards; derived numbers live in
`engine.plan.training_plan.Plan`.

On disk (TOML), one table per group:

    version = 2
    [model]
    pretrained_model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    [network]
    rank = 32
    alpha = 16.0
    ...

Light module: imports only the standard library (and tomli on Python < 3.11).
"""
from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from engine.config.network_types import CONV_TYPES, DORA_LAYOUTS, DROPOUT_TYPES, MAX_RANK, NETWORK_TYPES
from engine.config.optimizer_args import optimizer_args_problem, parse_optimizer_args
from engine.errors import ConfigError, LoradeckError
from engine.model.families import FAMILY_NAMES
from engine.paths import resolve_path  # noqa: F401 (path settings are resolved with it; many import it from here)

# 2: `model.v2` became `model.family = "sd2"` (engine.model.families names every family)
CONFIG_VERSION = 2
BUCKET_STEPS = (8, 16, 32, 64, 128)


def setting(
    default: Any,
    help: str,
    *,
    label: str = "",
    advice: str = "",
    choices: tuple = (),
    minimum: float | None = None,
    maximum: float | None = None,
    multiline: bool = False,
    path: bool = False,
    network_types: tuple = (),
    families: tuple = (),
) -> Any:
    """A config field with its documentation and limits, read by validation and the TUI form.

    `network_types`: the network types the setting applies to (empty: it always applies);
    `families`: the model families it applies to (engine.model.families' names; empty: every one).
    """
    meta = {
        "help": help,
        "label": label,
        "advice": advice,
        "choices": tuple(choices),
        "minimum": minimum,
        "maximum": maximum,
        "multiline": multiline,
        "path": path,
        "network_types": tuple(network_types),
        "families": tuple(families),
    }
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class ModelSettings:
    pretrained_model: str = setting(
        "",
        "Base model: a diffusers folder, a single-file .safetensors checkpoint, or a hub id.",
        label="Base model",
        advice="A local folder or .safetensors file loads with no network at all. A hub id "
        "(e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) needs the server to be online the first time.",
        path=True,
    )
    family: str = setting(
        "auto",
        f"Model family: auto (read from the base model's files), {', '.join(FAMILY_NAMES)}.",
        label="Model family",
        choices=("auto", *FAMILY_NAMES),
        advice="Leave on auto: a local folder or .safetensors file says what it is. Name the family "
        "for a hub id or a .ckpt (sd2 for SD 2.x, sdxl for SDXL), so the plan and the VRAM estimate "
        "use its sizes before loading.",
    )
    vae: str = setting(
        "",
        "Optional VAE to use instead of the base model's (folder or .safetensors).",
        label="VAE override",
        path=True,
        advice="Only needed when the base model's own VAE gives washed-out or broken colours (some "
        "merges); latents are cached with the VAE chosen here.",
    )
    v_parameterization: bool = setting(
        False,
        "The base model predicts v instead of noise (SD 2.x 768-v models).",
        label="v-parameterization",
        advice="Only for the 768-v SD 2.x models; the 512 base models predict noise.",
    )
    clip_skip: int = setting(
        1,
        "Use the output of the Nth-from-last CLIP layer (1 = last; anime models often use 2).",
        label="CLIP skip",
        advice="Match what the base model was trained with: 1 for SD1.5, 2 for most anime "
        "models. Samples and inference should use the same value.",
        minimum=1,
        maximum=12,
    )
    clip_l: str = setting(
        "",
        "Flux.1: the CLIP-L text encoder file (clip_l.safetensors) beside a single-file transformer.",
        label="CLIP-L file",
        path=True,
        families=("flux",),
        advice="Only for a single-file Flux.1 transformer (flux1-dev.safetensors); a diffusers folder "
        "or hub id has its own. sd-scripts' --clip_l.",
    )
    t5xxl: str = setting(
        "",
        "Flux.1: the T5-XXL text encoder file (t5xxl_fp16 or t5xxl_fp8_e4m3fn.safetensors).",
        label="T5-XXL file",
        path=True,
        families=("flux",),
        advice="Only for a single-file Flux.1 transformer. The fp8 file halves the memory T5 takes "
        "while captions are encoded. sd-scripts' --t5xxl.",
    )
    ae: str = setting(
        "",
        "Flux.1: the autoencoder file (ae.safetensors).",
        label="Autoencoder file",
        path=True,
        families=("flux",),
        advice="Only for a single-file Flux.1 transformer. sd-scripts' --ae.",
    )
    allow_ckpt: bool = setting(
        False,
        "Allow a .ckpt base model, loaded with torch's weights-only loader (never unpickled).",
        label="Allow .ckpt",
        advice="Convert .ckpt files to .safetensors when you can: a .safetensors file cannot carry "
        "code.",
    )


@dataclass(frozen=True)
class DatasetSettings:
    image_dir: str = setting(
        "img",
        "Training image folder holding <repeats>_<class tokens> subfolders (Kohya layout).",
        label="Image folder",
        advice="Each subfolder is named like `10_city photo`: 10 repeats per epoch, and "
        "`city photo` is the caption of any image without a caption file.",
        path=True,
    )
    reg_dir: str = setting(
        "",
        "Optional regularisation image folder, same layout; balanced to the training count.",
        label="Regularisation folder",
        path=True,
        advice="Images of the class (other people, other dogs) keep the class from drifting toward "
        "your subject; they double the steps per epoch. Styles rarely need them.",
    )
    dataset_config: str = setting(
        "",
        "A Kohya dataset TOML ([[datasets]] / [[datasets.subsets]]); when set, its subsets are the "
        "images, instead of the image and regularisation folders.",
        label="Kohya dataset TOML",
        path=True,
        advice="For a dataset already described for sd-scripts: each subset keeps its image folder, "
        "repeats, class tokens and caption extension. Its batch size, resolution, bucket, caption and "
        "augmentation settings must match this config (the Kohya import copies them).",
    )
    dataset_config_base: str = setting(
        "",
        "Folder that relative image_dir paths in the dataset TOML start from (empty: the TOML's own folder).",
        label="Dataset TOML base folder",
        path=True,
        advice="sd-scripts reads a dataset TOML's relative image_dir from its working folder, which is the "
        "Kohya GUI's folder when the GUI starts it; the Kohya import sets this to that folder.",
    )
    resolution: str = setting(
        "512,512",
        "Training resolution as W,H (or one number for a square). Sets the bucket area.",
        label="Resolution",
        advice="512 for SD1.5. Larger costs time and VRAM roughly with the pixel count.",
    )
    enable_buckets: bool = setting(
        True,
        "Group images by aspect ratio instead of cropping every image to the resolution.",
        label="Aspect-ratio buckets",
        advice="Keep buckets on: without them every image is resized and cropped to one "
        "shape, which cuts off heads and feet of portrait and landscape images.",
    )
    min_bucket_resolution: int = setting(
        256, "Smallest bucket side in pixels.", label="Min bucket side", minimum=64, maximum=4096,
        advice="Limits how thin a bucket may get: 256 at 512 allows aspect ratios up to about 1:4.",
    )
    max_bucket_resolution: int = setting(
        1024, "Largest bucket side in pixels.", label="Max bucket side", minimum=64, maximum=8192,
        advice="At least the resolution's longer side; 1024 at 512 leaves room for tall and wide "
        "images.",
    )
    bucket_step: int = setting(
        64,
        "Bucket sides are multiples of this many pixels.",
        label="Bucket step",
        choices=BUCKET_STEPS,
        advice="64 (Kohya's default) keeps few buckets and few half-empty batches; a smaller step "
        "crops less but makes more buckets.",
    )
    bucket_no_upscale: bool = setting(
        False,
        "Never upscale: small images get a bucket of their own size (rounded down to the step).",
        label="No upscale",
        advice="Turn on when many images are smaller than the resolution and should train at their "
        "own size rather than upscaled and soft.",
    )
    alpha_mask: bool = setting(
        False,
        "Use each image's transparency as its loss mask (sd-scripts' alpha_mask): opaque pixels train, "
        "transparent ones do not; an image without transparency trains everywhere.",
        label="Alpha mask",
        advice="For cut-out subjects: the background teaches nothing. The image itself is still composited "
        "onto white.",
    )


@dataclass(frozen=True)
class CaptionSettings:
    caption_extension: str = setting(
        ".txt", "Extension of the caption file beside each image.", label="Caption extension",
        advice="The captions screen and auto-captioning write this extension; .txt is what Kohya and"
        " most taggers use.",
    )
    shuffle_caption: bool = setting(
        False,
        "Shuffle the comma-separated tags of each caption every time it is used.",
        label="Shuffle tags",
        advice="Helps tag-style captions; keep the trigger word in place with keep tokens.",
    )
    keep_tokens: int = setting(
        0,
        "Number of leading tags kept in place when shuffling or dropping (e.g. the trigger).",
        label="Keep tokens",
        minimum=0,
        maximum=255,
        advice="1 keeps a trigger word first while the rest is shuffled; it counts comma-separated "
        "tags, not words.",
    )
    caption_dropout_rate: float = setting(
        0.0,
        "Probability of training an image with an empty caption.",
        label="Caption dropout",
        minimum=0.0,
        maximum=1.0,
        advice="A little (0.05-0.1) lets the LoRA work without its trigger words; 0 keeps it "
        "strictly prompt-driven.",
    )
    caption_tag_dropout_rate: float = setting(
        0.0,
        "Probability of dropping each tag (after the kept ones) from a caption, every time it is used.",
        label="Tag dropout",
        minimum=0.0,
        maximum=1.0,
        advice="sd-scripts' caption_tag_dropout_rate: 0.05-0.1 keeps the LoRA from leaning on any one tag; "
        "the kept tokens (the trigger) are never dropped.",
    )
    caption_dropout_every_n_epochs: int = setting(
        0,
        "Train every N-th epoch with empty captions (0 = never).",
        label="Caption dropout every N epochs",
        minimum=0,
        maximum=100000,
        advice="sd-scripts' caption_dropout_every_n_epochs: a whole epoch without text now and then teaches the "
        "look itself; usually 0.",
    )
    keep_tokens_separator: str = setting(
        "",
        "A separator in captions: tags before it stay in place (and after a second one, at the end); the "
        "tags between are shuffled and dropped. Empty: keep tokens counts tags instead.",
        label="Keep tokens separator",
        advice="sd-scripts' keep_tokens_separator, often |||: `sks dog ||| red, outdoors ||| photo` keeps "
        "`sks dog` first and `photo` last whatever the shuffle.",
    )
    weighted_captions: bool = setting(
        False,
        "Read (tag:1.2) weights in captions and scale those tokens' embeddings.",
        label="Weighted captions",
        advice="Only for captions written with (tag:1.2) weights; plain tag lists do not need it.",
    )
    max_token_length: int = setting(
        75,
        "Caption length in CLIP tokens: 75, or 150/225 using several 75-token windows.",
        label="Max token length",
        choices=(75, 150, 225),
        advice="75 covers most tag lists; long natural-language captions are cut at 75 tokens unless"
        " this is raised.",
    )


@dataclass(frozen=True)
class AugmentationSettings:
    flip: bool = setting(
        False,
        "Randomly mirror images left-right (not for asymmetric subjects or text).",
        label="Flip",
        advice="Free variety for styles and symmetric objects; off for faces with a parting, logos, "
        "text or anything one-sided.",
    )
    color: bool = setting(
        False,
        "Randomly shift hue slightly. Disables latent caching.",
        label="Colour augmentation",
        advice="Rarely worth it: every epoch sees different pixels, so latents cannot be cached and "
        "training is much slower.",
    )
    random_crop: bool = setting(
        False,
        "Crop at a random position instead of the centre. Disables latent caching.",
        label="Random crop",
        advice="Rarely worth it with buckets: latents cannot be cached and training is much slower.",
    )


@dataclass(frozen=True)
class NetworkSettings:
    type: str = setting(
        "lora",
        "Network type: lora, locon (LoRA on the ResNet convolutions too), loha, lokr, dora, or LyCORIS' ia3, "
        "diag-oft, dylora and glora.",
        label="Network type",
        choices=NETWORK_TYPES,
        advice="lora for most characters and objects; locon adds the convolutions, which helps styles "
        "and textures; loha packs more capacity into a small file (styles, several concepts); lokr "
        "gives the smallest files at a given quality and suits styles; dora (a learned magnitude per "
        "weight column) follows a full fine-tune more closely at the same rank, a bit slower per step. "
        "ia3 (a scale per feature, tiny files, wants a high learning rate), diag-oft (an orthogonal "
        "rotation: keeps the base model's look), dylora (any leading ranks work alone) and glora are "
        "LyCORIS' own, trained with its library as the Kohya GUI does.",
    )
    rank: int = setting(
        32,
        "LoRA rank (network dim): the capacity of the adapter.",
        label="Rank",
        advice="8-32 is plenty for a character or object, 32-128 for styles. File size and "
        "VRAM grow linearly with rank. loha: 4-32 (its capacity is about the rank squared); lokr: "
        "a rank of half a layer's larger factor or more stores full matrices (LyCORIS presets use "
        "a huge rank such as 100000 for that).",
        minimum=1,
        maximum=100000,
    )
    alpha: float = setting(
        16.0,
        "LoRA alpha; the update is scaled by alpha / rank. Not above rank.",
        label="Alpha",
        advice="alpha = rank trains at full strength; a smaller alpha (often rank / 2, or "
        "slightly below rank) damps updates, so a higher learning rate is needed. lokr layers stored "
        "as full matrices ignore alpha (scale 1), as in LyCORIS.",
        minimum=0.0,
        maximum=1024.0,
    )
    conv_dim: int = setting(
        8,
        "Rank of the ResNet 3x3 convolutions (0 leaves them out).",
        label="Conv rank",
        advice="4-16 is usual: the convolutions carry texture and style. Their linear and 1x1 layers "
        "use the rank above. 0 adapts only those (not for locon, which is LoRA plus the 3x3 "
        "convolutions).",
        minimum=0,
        maximum=100000,
        network_types=CONV_TYPES,
    )
    conv_alpha: float = setting(
        4.0,
        "Alpha of the 3x3 convolutions; their update is scaled by conv alpha / conv rank.",
        label="Conv alpha",
        advice="Half the conv rank, or 1 as many LyCORIS presets use (then raise the learning rate).",
        minimum=0.0,
        maximum=100000.0,
        network_types=CONV_TYPES,
    )
    factor: int = setting(
        -1,
        "LoKr Kronecker factor: the size of the small matrix of each layer (-1: near the square root).",
        label="LoKr factor",
        advice="-1 balances the two factors (smallest file); 4-16 makes the small one that wide and "
        "the large one fuller, which learns more per layer (LyCORIS presets often use 8).",
        minimum=-1,
        maximum=1024,
        network_types=("lokr",),
    )
    use_tucker: bool = setting(
        False,
        "Split each 3x3 kernel with a CP (Tucker) core instead of flattening it (Kohya's use_cp).",
        label="Tucker convs",
        advice="Fewer parameters on the 3x3 convolutions at the same conv rank; usually off.",
        network_types=("loha", "lokr"),
    )
    network_dropout: float = setting(
        0.0,
        "Dropout on the rank activations of each LoRA layer (sd-scripts' network_dropout).",
        label="Network dropout",
        advice="0.1-0.3 fights overfitting on small datasets; it slows learning a little.",
        minimum=0.0,
        maximum=1.0,
        network_types=("lora", "locon"),
    )
    rank_dropout: float = setting(
        0.0,
        "Probability of dropping each rank of a layer in a step (sd-scripts / LyCORIS rank_dropout).",
        label="Rank dropout",
        advice="0.1-0.2 spreads what is learned over all ranks; 0 for most runs.",
        minimum=0.0,
        maximum=1.0,
        network_types=DROPOUT_TYPES,
    )
    module_dropout: float = setting(
        0.0,
        "Probability of skipping a whole adapted layer in a step (module_dropout).",
        label="Module dropout",
        advice="A little (0.1) makes the network robust to its own weight; 0 for most runs.",
        minimum=0.0,
        maximum=1.0,
        network_types=DROPOUT_TYPES,
    )
    scale_weight_norms: float = setting(
        0.0,
        "Hold each layer's weight update to this norm after every step (sd-scripts' max-norm "
        "regularisation; 0 = off).",
        label="Scale weight norms",
        minimum=0.0,
        maximum=1000.0,
        advice="1 is the usual value (Kohya presets): it keeps a few layers from running away, so the LoRA "
        "stays usable at weight 1 and mixes better with others; the step log shows how many layers it "
        "scaled. LyCORIS has no such limit for ia3, dylora and glora.",
        network_types=("lora", "locon", "loha", "lokr", "dora", "diag-oft"),
    )
    dora_layout: str = setting(
        "input",
        "Where DoRA's learned magnitude lives: one per input column (input) or one per output row (output).",
        label="DoRA layout",
        choices=DORA_LAYOUTS,
        advice="input renders exactly in AUTOMATIC1111, ComfyUI and LyCORIS; output is peft's and the Kohya "
        "GUI's (LyCORIS' default), which AUTOMATIC1111 and ComfyUI render wrongly (docs/network_types.md).",
        network_types=("dora",),
    )
    train_on_input: bool = setting(
        False,
        "iA3 scales each layer's inputs instead of its outputs.",
        label="iA3 on inputs",
        advice="Off scales each output feature (LyCORIS' default); the Kohya GUI's iA3 presets turn it on.",
        network_types=("ia3",),
    )
    block_size: int = setting(
        4,
        "DyLoRA: ranks trained together as one block (the Kohya GUI's unit); the rank must be a multiple.",
        label="DyLoRA block",
        minimum=1,
        maximum=1024,
        advice="1 lets every leading rank work alone; 4 (LyCORIS' default) trains faster.",
        network_types=("dylora",),
    )
    constraint: float = setting(
        0.0,
        "Diag-OFT: bound on the norm of each rotation (0 = none; LyCORIS' constraint).",
        label="OFT constraint",
        minimum=0.0,
        maximum=100.0,
        advice="A small bound (1e-4 to 1e-3 per block) keeps the rotation near the base model; 0 leaves it free.",
        network_types=("diag-oft",),
    )
    rescaled: bool = setting(
        False,
        "Diag-OFT: learn a scale per output after the rotation.",
        label="OFT rescaled",
        advice="Lets the rotation change magnitudes too; off keeps Diag-OFT purely orthogonal.",
        network_types=("diag-oft",),
    )
    network_weights: str = setting(
        "",
        "Start from an existing LoRA file of this type, rank and alpha instead of from zero.",
        label="Start from LoRA",
        path=True,
        advice="Continue a finished LoRA with new images or settings. For an interrupted run use "
        "resume instead: it also restores the optimizer and the schedule.",
    )
    train_unet: bool = setting(
        True, "Train LoRA on the U-Net.", label="Train U-Net",
        advice="Keep on: the U-Net learns what things look like; the text encoder only what words "
        "mean.",
    )
    train_text_encoder: bool = setting(
        True,
        "Train LoRA on the CLIP text encoder as well.",
        label="Train text encoder",
        advice="Helps a new trigger word bind; turn it off for pure styles, or stop it "
        "early with `stop text encoder at`. Flux.1: this is CLIP-L only (T5 below).",
    )
    train_t5xxl: bool = setting(
        False,
        "Flux.1: train LoRA on T5-XXL too (lora_te3_), when the text encoder trains.",
        label="Train T5-XXL",
        families=("flux",),
        advice="Off, as sd-scripts has it: T5 is 4.7 G parameters, its outputs can then not be cached, "
        "and diffusers' loader does not read T5 LoRA keys (ComfyUI does). Its rate is text encoder 2 LR.",
    )


# the D-Adaptation family (the dadaptation package), as sd-scripts names them
DADAPTATION_OPTIMIZERS = ("DAdaptAdam", "DAdaptAdaGrad", "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD",
                          "DAdaptAdamPreprint")
OPTIMIZERS = ("AdamW", "AdamW8bit", "Adafactor", "Prodigy", "Lion", "SGD", *DADAPTATION_OPTIMIZERS)
# torch.optim.lr_scheduler classes that take the optimizer and keyword arguments (sd-scripts' lr_scheduler_type)
TORCH_SCHEDULERS = ("CosineAnnealingLR", "CosineAnnealingWarmRestarts", "ExponentialLR", "LinearLR", "StepLR",
                    "MultiStepLR", "PolynomialLR", "ConstantLR", "OneCycleLR", "CyclicLR")
SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "adafactor",
)


@dataclass(frozen=True)
class OptimizerSettings:
    optimizer: str = setting(
        "AdamW",
        "Optimizer. AdamW8bit needs CUDA and bitsandbytes.",
        label="Optimizer",
        advice="Adafactor with `scale_parameter=False relative_step=False warmup_init=False` "
        "uses your learning rate as given; without those args it picks its own and "
        "ignores the scheduler. Prodigy and the D-Adaptation family (DAdaptAdam, ...) find the LR "
        "themselves: set the LR to 1.0.",
        choices=OPTIMIZERS,
    )
    optimizer_args: str = setting(
        "",
        "Extra optimizer arguments, Kohya style: `key=value key=value` (`betas=0.9,0.99` is a pair).",
        label="Optimizer args",
        advice="Adafactor: scale_parameter=False relative_step=False warmup_init=False uses your "
        "learning rate. AdamW: e.g. weight_decay=0.01. Prodigy: e.g. decouple=True "
        "use_bias_correction=True safeguard_warmup=True. Names and values are checked against the "
        "optimizer's own arguments as you type.",
    )
    learning_rate: float = setting(
        1e-4,
        "Base learning rate (used where the U-Net or text-encoder LR is unset).",
        label="Learning rate",
        minimum=0.0,
        maximum=10.0,
        advice="1e-4 is a safe start for AdamW and for Adafactor with a fixed step; Prodigy wants "
        "1.0. Lower it if samples burn (oversaturated, noisy); raise it if nothing changes "
        "after a few epochs.",
    )
    unet_lr: float | None = setting(
        None, "U-Net learning rate (unset = learning rate).", label="U-Net LR", minimum=0.0, maximum=10.0,
        advice="Leave empty to use the learning rate; set it with the text-encoder LR to train the "
        "two at different speeds.",
    )
    text_encoder_lr: float | None = setting(
        None,
        "Text-encoder learning rate (unset = learning rate); often half the U-Net's.",
        label="Text encoder LR",
        minimum=0.0,
        maximum=10.0,
        advice="About half the U-Net's (e.g. 5e-5): a text encoder that learns too fast makes the "
        "trigger word overpower the rest of a prompt.",
    )
    text_encoder_2_lr: float | None = setting(
        None,
        "The second text encoder's learning rate: SDXL's OpenCLIP-bigG, Flux.1's T5 (unset = text-encoder LR).",
        label="Text encoder 2 LR",
        minimum=0.0,
        maximum=10.0,
        families=("sdxl", "flux"),
        advice="The larger encoder usually wants the same or a lower rate than CLIP-L; "
        "leave empty to use the text-encoder LR for both.",
    )
    lr_scheduler: str = setting(
        "cosine", "Learning-rate schedule.", label="LR scheduler", choices=SCHEDULERS,
        advice="cosine or constant_with_warmup suit most runs; constant makes epochs easiest to "
        "compare; adafactor only with Adafactor's own relative step.",
    )
    lr_scheduler_num_cycles: int = setting(
        1, "Restarts of cosine_with_restarts.", label="Scheduler cycles", minimum=1, maximum=1000
    )
    lr_scheduler_power: float = setting(
        1.0, "Power of the polynomial schedule.", label="Scheduler power", minimum=0.0, maximum=100.0
    )
    lr_warmup_steps: int = setting(
        0,
        "Warm-up steps with a rising learning rate (or use warm-up percent).",
        label="Warm-up steps",
        minimum=0,
        advice="A short warm-up (5-10% of the steps) steadies the first updates, most useful with "
        "high learning rates or large batches.",
    )
    lr_warmup_percent: float = setting(
        0.0,
        "Warm-up as a percentage of the total steps (instead of warm-up steps).",
        label="Warm-up %",
        minimum=0.0,
        maximum=100.0,
        advice="5-10% steadies the first updates; the plan panel shows the total it is taken from.",
    )
    lr_scheduler_type: str = setting(
        "",
        "A torch.optim.lr_scheduler class to use instead of the schedule above (sd-scripts' lr_scheduler_type), "
        "e.g. CosineAnnealingLR; empty: the schedule above.",
        label="Scheduler class",
        choices=("", *TORCH_SCHEDULERS),
        advice="For Kohya configs that pass --lr_scheduler_type: it steps once per optimizer step with the "
        "arguments below and no warm-up, as in sd-scripts.",
    )
    lr_scheduler_args: str = setting(
        "",
        "Arguments of the scheduler class, `key=value key=value` (e.g. T_max=1000 eta_min=0).",
        label="Scheduler class args",
        advice="Each value is read as a Python literal, as sd-scripts reads --lr_scheduler_args.",
    )
    max_grad_norm: float = setting(
        1.0,
        "Clip the gradient norm to this value (0 = no clipping).",
        label="Max grad norm",
        minimum=0.0,
        advice="1.0 keeps one bad batch from wrecking the LoRA; 0 turns clipping off.",
    )


@dataclass(frozen=True)
class TrainingSettings:
    batch_size: int = setting(
        1, "Images per batch (per GPU).", label="Batch size", minimum=1, maximum=1024,
        advice="Bigger batches give smoother updates and more images per second but fewer steps; add"
        " epochs or learning rate to match. Each bucket is batched on its own, so small "
        "buckets give part-empty batches.",
    )
    epochs: int = setting(
        10, "Number of epochs (passes over images × repeats).", label="Epochs", minimum=1, maximum=100000,
        advice="Save every epoch and compare the samples: the best LoRA is often not the last. "
        "1,500-3,000 total steps is a common range for one subject.",
    )
    max_steps: int = setting(
        0,
        "Stop after this many optimizer steps (0 = run all epochs).",
        label="Max steps",
        minimum=0,
        advice="When set it wins over epochs: the run stops after this many optimizer steps (the "
        "plan panel shows the epochs it takes).",
    )
    gradient_accumulation_steps: int = setting(
        1,
        "Batches accumulated per optimizer step (effective batch = batch × this).",
        label="Gradient accumulation",
        minimum=1,
        maximum=1024,
        advice="A bigger batch when VRAM is short: batch 2 × 4 accumulation updates like batch 8 at "
        "batch-2 memory, with a quarter of the steps.",
    )
    processes: int = setting(
        1, "Training processes, one per GPU (data-parallel: each trains a share of every epoch's batches "
        "and their gradients are averaged). Above 1, loradeck starts the run with torchrun.",
        label="Processes", minimum=1, maximum=64,
        advice="On a machine with several GPUs, one process per GPU: each epoch takes 1/N of the steps and "
        "each step sees N batches (batch size is per process). Without a GPU several processes share the CPU.",
    )
    seed: int = setting(
        42, "Random seed; the same seed and data train the same LoRA. -1 = a random seed, drawn when "
        "the run starts and written into the run.", label="Seed", minimum=-1, maximum=2**32 - 1,
        advice="Keep it fixed while comparing settings, so differences come from the settings and "
        "not from chance. With -1 the seed drawn is in the run's config.toml and run_start event.",
    )
    gui_step_count: bool = setting(
        False,
        "With max steps 0: train as many steps as the Kohya GUI passes sd-scripts, ceil(images × repeats / batch / "
        "accumulation × epochs, × 2 with regularisation images), instead of the per-bucket count.",
        label="Kohya GUI step count",
        advice="Set by the Kohya import, so an imported config trains what the GUI would have run; the plan "
        "says where it differs from the per-bucket count (buckets give part-empty batches).",
    )
    stop_text_encoder_training: int = setting(
        0,
        "Stop training the text encoder after this step (0 = never).",
        label="Stop text encoder at",
        minimum=0,
        advice="Freezing the text encoder part-way (e.g. at half the steps) keeps the trigger word "
        "from overpowering prompts.",
    )
    noise_offset: float = setting(
        0.0,
        "Noise offset (e.g. 0.05-0.1) for darker darks and brighter brights.",
        label="Noise offset",
        minimum=0.0,
        maximum=1.0,
        advice="0.05-0.1 lets the LoRA make truly dark or bright images; much higher washes out the "
        "mid-tones.",
    )
    adaptive_noise_scale: float = setting(
        0.0,
        "Adds this times each latent channel's absolute mean to the noise offset (sd-scripts' "
        "adaptive noise scale; needs a noise offset).",
        label="Adaptive noise scale",
        minimum=-1.0,
        maximum=1.0,
        advice="sd-scripts suggests about a tenth of the noise offset; 0 = off.",
    )
    multires_noise_iterations: int = setting(
        0,
        "Multi-resolution (pyramid) noise: number of coarser noise layers added (0 = off; 6-10 typical).",
        label="Multires noise iterations",
        minimum=0,
        maximum=64,
        advice="Noise at several scales, as sd-scripts' multires noise: like the noise offset it lets "
        "the LoRA change large areas of colour and light.",
    )
    multires_noise_discount: float = setting(
        0.3,
        "Weight of each coarser multires noise layer relative to the one before (sd-scripts' default 0.3).",
        label="Multires noise discount",
        minimum=0.0,
        maximum=1.0,
        advice="0.1-0.3 for LoRAs with few images; higher values give stronger low-frequency noise.",
    )
    ip_noise_gamma: float = setting(
        0.0,
        "Input perturbation noise (Ning et al. 2023): extra noise on the U-Net's input only, not in the "
        "target (0 = off; 0.1 is the paper's value).",
        label="Input perturbation gamma",
        minimum=0.0,
        maximum=1.0,
        advice="A small value (about 0.1) reduces the exposure bias between training and sampling.",
    )
    min_snr_gamma: float = setting(
        0.0,
        "Min-SNR loss weighting gamma (5 is the paper's value; 0 = off).",
        label="Min-SNR gamma",
        advice="Min-SNR weighting (Hang et al. 2023) balances timesteps and usually "
        "converges faster; 5 is a good value.",
        minimum=0.0,
        maximum=100.0,
    )
    noise_offset_random_strength: bool = setting(
        False,
        "Draw the noise offset's strength uniformly between 0 and the noise offset, each step.",
        label="Random offset strength",
        advice="sd-scripts' noise_offset_random_strength: softer on average than a fixed offset, with the "
        "full offset still seen sometimes.",
    )
    ip_noise_gamma_random_strength: bool = setting(
        False,
        "Draw the input perturbation's strength uniformly between 0 and its gamma, each step.",
        label="Random perturbation strength",
        advice="sd-scripts' ip_noise_gamma_random_strength.",
    )
    debiased_estimation_loss: bool = setting(
        False,
        "Weight each timestep's loss by 1/√SNR (1/(SNR+1) for v-prediction), as sd-scripts' debiased "
        "estimation loss.",
        label="Debiased estimation",
        advice="Evens out how much each noise level teaches (Yu et al. 2024); it can stand in for min-SNR, "
        "or go with it.",
    )
    min_timestep: int = setting(
        0,
        "Lowest timestep trained (0 = the schedule's start).",
        label="Min timestep",
        minimum=0,
        maximum=1000,
        advice="Raise it (e.g. 100) to leave out the finest detail; timesteps are drawn from "
        "[min, max) as sd-scripts draws them.",
    )
    max_timestep: int = setting(
        1000,
        "Highest timestep trained, exclusive (1000 = the schedule's end).",
        label="Max timestep",
        minimum=1,
        maximum=1000,
        advice="Lower it (e.g. 900) to leave out the noisiest steps, which decide composition; when it is "
        "not above the min timestep every step trains at the max.",
    )
    loss_type: str = setting(
        "l2",
        "Loss function: l2 (squared error), l1, huber or smooth_l1 (sd-scripts' loss_type).",
        label="Loss",
        choices=("l2", "l1", "huber", "smooth_l1"),
        advice="l2 is the standard; huber and smooth_l1 are l2 for small errors and l1 for large ones "
        "(threshold huber_c, scheduled over the timesteps), which makes outliers in a dataset hurt less.",
    )
    huber_c: float = setting(
        0.1,
        "Huber / smooth-L1 threshold (sd-scripts' huber_c).",
        label="Huber c",
        minimum=0.0,
        maximum=10.0,
        advice="0.1 is sd-scripts' default; with the snr schedule it is the threshold at pure noise.",
    )
    huber_schedule: str = setting(
        "snr",
        "How the Huber threshold changes with the timestep: snr, exponential or constant.",
        label="Huber schedule",
        choices=("snr", "exponential", "constant"),
        advice="snr (sd-scripts' default) is close to l2 where the image is clear and to l1 in noise.",
    )
    huber_scale: float = setting(
        1.0,
        "Scale of the Huber threshold (exponential and constant schedules).",
        label="Huber scale",
        minimum=0.0,
        maximum=100.0,
    )
    masked_loss: bool = setting(
        False,
        "Weight each pixel's loss by the image's mask (sd-scripts' masked_loss): the red channel of its "
        "conditioning image (a dataset TOML subset's conditioning_data_dir) or its transparency "
        "(dataset.alpha_mask); white or opaque trains, black or transparent does not.",
        label="Masked loss",
        advice="Masks keep a subject's background, or a watermark, out of what the LoRA learns.",
    )


@dataclass(frozen=True)
class PrecisionSettings:
    mixed_precision: str = setting(
        "bf16",
        "Compute precision on the GPU (CPU always trains in fp32).",
        label="Mixed precision",
        advice="bf16 on Ampere or newer (RTX 30xx, A100, H100); fp16 with loss scaling on "
        "older cards; no = fp32, slowest.",
        choices=("no", "fp16", "bf16"),
    )
    save_precision: str = setting(
        "fp16",
        "Precision of the saved LoRA weights.",
        label="Save precision",
        choices=("float", "fp16", "bf16"),
        advice="fp16 halves the file and loads everywhere (AUTOMATIC1111, ComfyUI, diffusers); float"
        " only to train further from it.",
    )
    gradient_checkpointing: bool = setting(
        False,
        "Recompute activations in the backward pass: much less VRAM, about 20-30% slower.",
        label="Gradient checkpointing",
        advice="Turn it on when VRAM runs out (768 px, a large rank or batch); it costs speed, not "
        "quality.",
    )
    cache_latents: str = setting(
        "memory",
        "Encode every image with the VAE once: in memory, on disk, or not at all.",
        label="Cache latents",
        advice="Caching skips the VAE in every step (a large saving); it is turned off "
        "automatically when colour augmentation or random crop is on.",
        choices=("none", "memory", "disk"),
    )
    cache_text_encoder_outputs: bool = setting(
        True,
        "Encode captions once when the text encoder is not trained and captions are fixed.",
        label="Cache text encodings",
        advice="Skips CLIP in every step; it is turned off automatically (and the log says why) when "
        "the text encoder trains or captions are shuffled or dropped.",
    )
    fp8_base: bool = setting(
        False,
        "Flux.1: keep the frozen transformer (and T5) weights in fp8 e4m3fn, computing in bf16.",
        label="fp8 base weights",
        families=("flux",),
        advice="Halves the transformer's 22 GiB to 11, what a 24 GB card needs; an fp8 file loads as it "
        "is. Not with DoRA (it reads the frozen weights itself). sd-scripts' --fp8_base.",
    )
    blocks_to_swap: int = setting(
        0,
        "Flux.1: keep the last N of the transformer's 57 blocks in CPU memory, visiting the GPU in turn.",
        label="Blocks to swap",
        minimum=0,
        maximum=56,
        families=("flux",),
        advice="For 16 GB cards: each swapped block frees about 0.2 GB (fp8) for PCIe traffic every "
        "step; needs gradient checkpointing. sd-scripts' --blocks_to_swap.",
    )
    attention: str = setting(
        "sdpa",
        "Attention kernel: PyTorch SDPA (flash / memory-efficient) or xformers.",
        label="Attention",
        choices=("sdpa", "xformers"),
        advice="sdpa is built into PyTorch and as fast as xformers on current cards; xformers only "
        "where it is installed.",
    )
    channels_last: bool = setting(
        True, "Use the channels-last (NHWC) memory format for the U-Net's convolutions.", label="Channels last",
        advice="Tensor-core convolutions run NHWC natively; the results are the same either way.",
    )
    fused_optimizer: bool = setting(
        True, "AdamW and SGD step all LoRA tensors at once: fused on CUDA, foreach elsewhere.",
        label="Fused optimizer",
        advice="Off steps the hundreds of LoRA tensors one by one (same result, slower).",
    )
    compile_unet: bool = setting(
        False, "torch.compile the U-Net (faster after a slow first step).", label="Compile U-Net",
        advice="Pays off on long runs on a recent GPU; the first steps take minutes while it "
        "compiles.",
    )
    dataloader_workers: int = setting(
        8, "Data-loading worker processes (at most one per CPU core).", label="Loader workers",
        minimum=0, maximum=64,
        advice="Used when images are decoded every step (colour augmentation, random crop) or latents "
        "are cached on disk; one worker decodes about 30 photos a second at 512 px.",
    )


SAMPLERS = ("euler_a", "euler", "ddim", "dpm++_2m", "dpm++_2m_karras", "pndm")


@dataclass(frozen=True)
class SamplingSettings:
    prompts: str = setting(
        "",
        "Sample prompts, one per line, sd-scripts syntax: `prompt --n neg --w 512 --h 512 --d 1`.",
        label="Sample prompts",
        multiline=True,
        advice="Use the trigger word, plus one prompt without it to see how much the LoRA leaks; fix"
        " the seed (--d) so epochs compare.",
    )
    prompts_file: str = setting(
        "",
        "File of sample prompts, re-read at every sampling point (edit it during a run).",
        label="Prompts file",
        path=True,
    )
    every_n_epochs: int = setting(
        1, "Sample every N epochs (0 = never).", label="Sample every N epochs", minimum=0,
        advice="Each sampling point costs a few seconds per prompt; every epoch suits short runs, "
        "every few epochs long ones.",
    )
    every_n_steps: int = setting(
        0, "Sample every N steps (0 = never).", label="Sample every N steps", minimum=0
    )
    at_start: bool = setting(
        False, "Sample before the first step, to see the base model's look.", label="Sample at start"
    )
    sampler: str = setting(
        "euler_a", "Default sampler (a prompt's --ss overrides it).", label="Sampler", choices=SAMPLERS,
        advice="euler_a at 20-30 steps is fast and forgiving; samples are for comparing epochs, not "
        "for final quality.",
    )


@dataclass(frozen=True)
class SavingSettings:
    output_dir: str = setting(
        "runs", "Folder that holds run folders.", label="Output folder", path=True
    )
    output_name: str = setting(
        "lora",
        "Name of the run and of its LoRA files (runs/<name>/).",
        label="Output name",
        advice="A number for new images, a letter for new settings: city-v2, city-v2b.",
    )
    save_every_n_epochs: int = setting(
        1, "Save the LoRA every N epochs (0 = only at the end).", label="Save every N epochs", minimum=0,
        advice="Every epoch lets you pick the best LoRA by its samples; it costs only disk (the plan"
        " panel shows the file size).",
    )
    save_every_n_steps: int = setting(
        0, "Save the LoRA every N steps (0 = never).", label="Save every N steps", minimum=0
    )
    save_last_n: int = setting(
        0,
        "Keep only the last N intermediate LoRA files (0 = keep all).",
        label="Keep last N",
        minimum=0,
        advice="0 keeps every saved LoRA; set it when disk space is short.",
    )
    save_state: bool = setting(
        True,
        "Save resumable trainer state with each LoRA, so a stopped or crashed run resumes.",
        label="Save state",
        advice="Lets a stopped or crashed run resume exactly; the state is several times the size of"
        " the LoRA.",
    )


@dataclass(frozen=True)
class LoggingSettings:
    tensorboard: bool = setting(
        True, "Write TensorBoard scalars to the run's tb/ folder.", label="TensorBoard",
        advice="`tensorboard --logdir runs` compares the loss curves of all runs side by side.",
    )
    log_every_n_steps: int = setting(
        10,
        "Copy losses to the CPU every N steps (one event per step, written in batches).",
        label="Log every N steps",
        advice="Higher keeps the GPU from waiting on the host; 1 is fine on CPU.",
        minimum=1,
        maximum=10000,
    )


@dataclass(frozen=True)
class ValidationSettings:
    image_dir: str = setting(
        "",
        "Held-out image folder (same layout as the training folder; repeats ignored), never trained on.",
        label="Validation folder",
        path=True,
        advice="A few images (5-20) like the training set but not in it. Or leave this empty and hold "
        "out a fraction of the training images below.",
    )
    split_fraction: float = setting(
        0.0,
        "Hold out this fraction of the training images for validation (0 = none), chosen by the seed.",
        label="Validation split",
        minimum=0.0,
        maximum=0.5,
        advice="0.1 holds out one image in ten; they are left out of training and the plan's steps. "
        "With very few images, a separate folder of extra images is better.",
    )
    seed: int = setting(
        0, "Seed of the split and of the fixed validation noise.", label="Validation seed", minimum=0,
        advice="Keep it fixed: the same seed holds out the same images and draws the same noise, so "
        "runs compare.",
    )
    every_n_epochs: int = setting(
        1, "Evaluate every N epochs (0 = not by epoch).", label="Validate every N epochs", minimum=0,
        advice="Every checkpoint is evaluated as well, so its file can be judged by the number.",
    )
    every_n_steps: int = setting(
        0, "Evaluate every N steps (0 = not by step).", label="Validate every N steps", minimum=0,
    )
    timesteps: int = setting(
        4,
        "Fixed timesteps each image is scored at, evenly spread over the noise schedule.",
        label="Validation timesteps",
        minimum=1,
        maximum=50,
        advice="4 covers coarse to fine detail; each costs one U-Net pass per image. The dashboard "
        "shows the loss per timestep band too.",
    )
    batch_size: int = setting(
        8, "Images per validation batch.", label="Validation batch", minimum=1, maximum=1024,
        advice="Only memory: the number is the same for any batch size.",
    )
    train_sample: int = setting(
        8,
        "Training images scored the same way (train-set fixed-noise loss; 0 = off).",
        label="Train-set sample",
        minimum=0,
        maximum=10000,
        advice="The gap between this and the validation loss shows memorising: the training images "
        "keep improving while the held-out ones get worse.",
    )
    early_stop_patience: int = setting(
        0,
        "Stop after this many evaluations without a new best validation loss (0 = never).",
        label="Early-stop patience",
        minimum=0,
        advice="The best file is always kept as <name>-best.safetensors; 3-5 evaluations of patience "
        "ride out noise.",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.image_dir.strip()) or self.split_fraction > 0


@dataclass(frozen=True)
class FluxSettings:
    """How Flux.1 trains (engine.model.objectives.flow_matching, engine.model.families.flux);
    the names are sd-scripts' flux_train_network options."""

    timestep_sampling: str = setting(
        "sigmoid",
        "Where the noise levels fall: sigmoid (default), shift, flux_shift, uniform or sigma (sd-scripts').",
        label="Timestep sampling",
        choices=("sigmoid", "shift", "flux_shift", "uniform", "sigma"),
        families=("flux",),
        advice="sigmoid centres on mid noise; shift (with discrete flow shift 3.1582, sd-scripts' "
        "recommendation) and flux_shift lean towards noise, flux_shift more for larger images.",
    )
    sigmoid_scale: float = setting(
        1.0, "Spread of the sigmoid (and shift) sampling: larger is closer to uniform.", label="Sigmoid scale",
        minimum=0.01, maximum=100.0, families=("flux",),
    )
    discrete_flow_shift: float = setting(
        3.1582, "The shift of `shift` and `sigma` sampling: shift·s / (1 + (shift - 1)·s).",
        label="Discrete flow shift", minimum=0.01, maximum=100.0, families=("flux",),
        advice="3.1582 is what sd-scripts recommends for Flux.1 dev; 1.0 is no shift.",
    )
    model_prediction_type: str = setting(
        "raw", "How the model's output is read before the loss: raw, additive or sigma_scaled.",
        label="Model prediction type", choices=("raw", "additive", "sigma_scaled"), families=("flux",),
        advice="raw is what Flux predicts (the velocity); the others are sd-scripts' variants.",
    )
    guidance_scale: float = setting(
        1.0, "The guidance Flux.1 [dev] embeds while training (samples use --g).", label="Guidance scale",
        minimum=0.0, maximum=100.0, families=("flux",),
        advice="1.0 trains best, as sd-scripts advises; [schnell] has no guidance embedding.",
    )
    t5xxl_max_token_length: int = setting(
        0, "T5 tokens per caption; 0 = the model's (512 for [dev], 256 for [schnell]).",
        label="T5 max tokens", minimum=0, maximum=512, families=("flux",),
        advice="Captions longer than this are cut; shorter saves memory and time per step.",
    )
    apply_t5_attn_mask: bool = setting(
        False, "Mask T5's padding in T5 and in the transformer's attention.", label="Apply T5 attention mask",
        families=("flux",),
        advice="The Kohya GUI's Flux preset turns it on; the released models were trained without it.",
    )


@dataclass(frozen=True)
class MetadataSettings:
    title: str = setting(
        "", "Title written into the LoRA file (modelspec.title; empty: the output name).", label="Title",
        advice="AUTOMATIC1111, ComfyUI and Civitai show it instead of the file name.",
    )
    author: str = setting("", "Author written into the LoRA file (modelspec.author).", label="Author")
    description: str = setting(
        "", "Description written into the LoRA file (modelspec.description).", label="Description", multiline=True,
    )
    license: str = setting(
        "", "Licence written into the LoRA file (modelspec.license), e.g. CreativeML OpenRAIL-M.", label="Licence",
    )
    tags: str = setting("", "Comma-separated tags written into the LoRA file (modelspec.tags).", label="Tags")
    trigger_phrase: str = setting(
        "", "Trigger phrase written into the LoRA file (modelspec.trigger_phrase).", label="Trigger phrase",
        advice="The words that call the LoRA up, so that users of the file do not have to guess them.",
    )
    usage_hint: str = setting(
        "", "A short usage hint written into the LoRA file (modelspec.usage_hint), e.g. weight 0.8.",
        label="Usage hint",
    )
    training_comment: str = setting(
        "", "A comment written into the LoRA file (ss_training_comment).", label="Training comment",
    )


@dataclass(frozen=True)
class TrainConfig:
    version: int = CONFIG_VERSION
    model: ModelSettings = field(default_factory=ModelSettings)
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    captions: CaptionSettings = field(default_factory=CaptionSettings)
    augmentation: AugmentationSettings = field(default_factory=AugmentationSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    precision: PrecisionSettings = field(default_factory=PrecisionSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    saving: SavingSettings = field(default_factory=SavingSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    flux: FluxSettings = field(default_factory=FluxSettings)
    metadata: MetadataSettings = field(default_factory=MetadataSettings)

    # derived views (never stored)
    @property
    def resolution_size(self) -> tuple[int, int]:
        return parse_resolution(self.dataset.resolution)

    @property
    def unet_learning_rate(self) -> float:
        lr = self.optimizer.unet_lr
        return self.optimizer.learning_rate if lr is None else lr

    @property
    def text_encoder_learning_rate(self) -> float:
        lr = self.optimizer.text_encoder_lr
        return self.optimizer.learning_rate if lr is None else lr

    @property
    def text_encoder_2_learning_rate(self) -> float:
        """SDXL's second text encoder: its own rate, else the first one's."""
        lr = self.optimizer.text_encoder_2_lr
        return self.text_encoder_learning_rate if lr is None else lr

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        return parse_optimizer_args(self.optimizer.optimizer_args)

    @property
    def latents_cacheable(self) -> bool:
        """Latents can be cached only when every epoch sees the same pixels."""
        return (
            self.precision.cache_latents != "none"
            and not self.augmentation.color
            and not self.augmentation.random_crop
        )


GROUPS: dict[str, str] = {
    "model": "Model",
    "dataset": "Dataset and buckets",
    "captions": "Captions",
    "augmentation": "Augmentation",
    "network": "Network",
    "optimizer": "Optimizer and scheduler",
    "training": "Training",
    "precision": "Precision, memory and speed",
    "sampling": "Sampling",
    "saving": "Saving and resume",
    "logging": "Logging",
    "validation": "Validation",
    "flux": "Flux.1",
    "metadata": "Metadata",
}


# --------------------------------------------------------------------------- schema access


@dataclass(frozen=True)
class FieldSpec:
    """One setting as the form and the validator see it."""

    group: str
    name: str
    type: type
    optional: bool
    default: Any
    help: str
    label: str
    advice: str
    choices: tuple
    minimum: float | None
    maximum: float | None
    multiline: bool
    path: bool
    network_types: tuple = ()
    families: tuple = ()

    @property
    def key(self) -> str:
        return f"{self.group}.{self.name}"

    def applies_to(self, network_type: str) -> bool:
        """Whether the setting means anything for a network of this type."""
        return not self.network_types or network_type in self.network_types

    def applies_to_family(self, family: str) -> bool:
        """Whether the setting means anything for a model of this family (engine.model.families' name)."""
        return not self.families or family in self.families


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _field_type(annotation: str) -> tuple[type, bool]:
    text = annotation.replace(" ", "")
    optional = text.endswith("|None")
    base = text.removesuffix("|None")
    return _TYPES[base], optional


def schema() -> Iterator[FieldSpec]:
    """Every setting, in group order and declaration order."""
    for group_field in dataclasses.fields(TrainConfig):
        if group_field.name == "version":
            continue
        group_class = group_field.default_factory  # type: ignore[misc]
        for f in dataclasses.fields(group_class):
            kind, optional = _field_type(str(f.type))
            meta = f.metadata
            yield FieldSpec(
                group=group_field.name,
                name=f.name,
                type=kind,
                optional=optional,
                default=f.default,
                help=meta["help"],
                label=meta["label"] or f.name.replace("_", " "),
                advice=meta["advice"],
                choices=meta["choices"],
                minimum=meta["minimum"],
                maximum=meta["maximum"],
                multiline=meta["multiline"],
                path=meta["path"],
                network_types=meta["network_types"],
                families=meta["families"],
            )


def field_spec(key: str) -> FieldSpec:
    for spec in schema():
        if spec.key == key:
            return spec
    raise KeyError(key)


def lenient_setting(data: dict[str, Any], key: str) -> Any:
    """One setting of TOML-shaped data, or its default when absent or not allowed by the
    setting's own rules. For configs that do not validate yet: the image folder of a
    workspace whose base model is still unset must still be found."""
    spec = field_spec(key)
    group = data.get(spec.group)
    value = group.get(spec.name) if isinstance(group, dict) else None
    if value is None:
        return spec.default
    try:
        value = _coerce(spec, value, "")
    except ConfigError:
        return spec.default
    return spec.default if _check_field(spec, value) else value


# --------------------------------------------------------------------------- small parsers


def parse_resolution(text: str | int) -> tuple[int, int]:
    """'512' -> (512, 512); '768,512' -> (768, 512). Raises ValueError."""
    parts = [p.strip() for p in re.split(r"[,x×]", str(text).strip())]
    if not all(parts):
        raise ValueError("expected W,H or one number")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError("expected W,H or one number")
    width, height = (int(float(p)) for p in parts)
    if width <= 0 or height <= 0:
        raise ValueError("sides must be positive")
    return width, height


# --------------------------------------------------------------------------- parsing


def _coerce(spec: FieldSpec, value: Any, source: str) -> Any:
    if value is None:
        if spec.optional:
            return None
        raise ConfigError(spec.key, "a value is required", source)
    kind = spec.type
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(spec.key, f"expected true or false, got {value!r}", source)
    if kind is int:
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value != int(value)):
            raise ConfigError(spec.key, f"expected a whole number, got {value!r}", source)
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(spec.key, f"expected a number, got {value!r}", source)
        if math.isnan(value) or math.isinf(value):
            raise ConfigError(spec.key, "must be a finite number", source)
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and spec.key == "dataset.resolution":
        if not math.isfinite(value):
            raise ConfigError(spec.key, f"expected a size such as 512 or \"512,768\", got {value!r}", source)
        return f"{int(value)},{int(value)}"
    if not isinstance(value, str):
        raise ConfigError(spec.key, f"expected text, got {value!r}", source)
    if "\x00" in value:
        # no file name, prompt or argument holds one; the OS refuses it in a path
        raise ConfigError(spec.key, "holds a NUL character (\\u0000)", source)
    return value


def _check_field(spec: FieldSpec, value: Any) -> str | None:
    """The reason a single value is not allowed, or None."""
    if value is None:
        return None
    if spec.choices and value not in spec.choices:
        allowed = ", ".join(str(c) for c in spec.choices)
        return f"{value!r} is not one of: {allowed}"
    if spec.minimum is not None and value < spec.minimum:
        return f"must be at least {_number(spec.minimum)}, got {_number(value)}"
    if spec.maximum is not None and value > spec.maximum:
        return f"must be at most {_number(spec.maximum)}, got {_number(value)}"
    return None


def _number(value: float) -> str:
    """A limit as written: whole numbers in full (a seed's 4294967295), others short."""
    return str(value) if isinstance(value, int) else f"{value:g}"


# what a partial config (a Kohya GUI preset, imported before a base model is chosen) may leave unset;
# `loradeck plan` and `train` refuse it until it is set
PARTIAL_SETTINGS = ("model.pretrained_model",)


def config_from_dict(data: dict[str, Any], source: str = "", notes: list[str] | None = None, *,
                     partial: bool = False) -> TrainConfig:
    """Build a config from TOML-shaped data (migrating old versions). Raises ConfigError.

    Checks types, choices and ranges field by field, then the rules between fields
    (with `partial`, the settings of PARTIAL_SETTINGS may be left empty).
    """
    data = migrate(data, source, notes)
    specs: dict[str, dict[str, FieldSpec]] = {}
    for spec in schema():
        specs.setdefault(spec.group, {})[spec.name] = spec
    groups: dict[str, Any] = {}
    for group_name, values in data.items():
        if group_name == "version":
            continue
        if group_name not in specs:
            raise ConfigError(group_name, f"unknown section; expected one of: {', '.join(specs)}", source)
        if not isinstance(values, dict):
            raise ConfigError(group_name, "expected a table of settings", source)
        for name in values:
            if name not in specs[group_name]:
                raise ConfigError(f"{group_name}.{name}", "unknown setting", source)
    for group_name, group_specs in specs.items():
        values = data.get(group_name, {})
        kwargs = {}
        for name, spec in group_specs.items():
            if name not in values:
                continue
            value = _coerce(spec, values[name], source)
            reason = _check_field(spec, value)
            if reason:
                raise ConfigError(spec.key, reason, source)
            kwargs[name] = value
        group_class = type(getattr(TrainConfig(), group_name))
        groups[group_name] = group_class(**kwargs)
    config = TrainConfig(**groups)
    problems = [(key, reason) for key, reason in cross_field_problems(config)
                if not (partial and key in PARTIAL_SETTINGS)]
    if problems:
        key, reason = problems[0]
        raise ConfigError(key, reason, source)
    return config


def cross_field_problems(config: TrainConfig) -> list[tuple[str, str]]:
    """Rules between fields, as (field key, reason) pairs. Empty when the config is valid."""
    problems: list[tuple[str, str]] = []
    net, data, opt, train = config.network, config.dataset, config.optimizer, config.training
    if net.alpha > net.rank:
        problems.append(
            (
                "network.alpha",
                f"alpha {net.alpha:g} is above rank {net.rank}: the update would be scaled "
                f"up by {net.alpha / net.rank:g}x, which makes training unstable; use at most {net.rank}",
            )
        )
    if net.alpha <= 0:
        problems.append(("network.alpha", "must be above 0 (the update is scaled by alpha / rank)"))
    if net.rank > MAX_RANK and net.type != "lokr":
        problems.append(("network.rank", f"must be at most {MAX_RANK} for {net.type} (only lokr takes a larger "
                                         "rank, meaning full matrices)"))
    if net.type in CONV_TYPES:
        if net.type == "locon" and net.conv_dim == 0:
            problems.append(("network.conv_dim", "locon needs a conv rank above 0; for LoRA without the "
                                                 "convolutions use type lora"))
        if net.conv_dim and net.conv_alpha > net.conv_dim:
            problems.append(("network.conv_alpha", f"conv alpha {net.conv_alpha:g} is above conv rank "
                                                   f"{net.conv_dim}: use at most {net.conv_dim}"))
        if net.conv_dim and net.conv_alpha <= 0:
            problems.append(("network.conv_alpha", "must be above 0 (the update is scaled by conv alpha / conv rank)"))
    if net.type == "dylora" and net.rank % net.block_size:
        problems.append(("network.block_size", f"the rank {net.rank} must be a multiple of the DyLoRA block "
                                               f"{net.block_size}"))
    if net.type == "lokr" and net.factor == 0:
        problems.append(("network.factor", "must be -1 (balanced) or a positive factor"))
    if not net.train_unet and not net.train_text_encoder:
        problems.append(("network.train_unet", "nothing to train: enable the U-Net or the text encoder"))
    try:
        width, height = parse_resolution(data.resolution)
    except ValueError as error:
        problems.append(("dataset.resolution", f"{data.resolution!r}: {error}"))
    else:
        if not data.enable_buckets and (width % 8 or height % 8):
            # with buckets the resolution only sets the area; without, it is the image size
            problems.append(("dataset.resolution", f"{width},{height}: sides must be multiples of 8 when buckets are off"))
        if data.enable_buckets and width * height < data.bucket_step ** 2:
            # the square bucket would have sides of 0 pixels
            problems.append(("dataset.resolution", f"{width},{height}: smaller than one bucket step "
                                                   f"({data.bucket_step}x{data.bucket_step})"))
        if data.enable_buckets and max(width, height) > data.max_bucket_resolution:
            problems.append(
                (
                    "dataset.max_bucket_resolution",
                    f"{data.max_bucket_resolution} is below the resolution's longer side {max(width, height)}",
                )
            )
    if data.min_bucket_resolution > data.max_bucket_resolution:
        problems.append(
            ("dataset.min_bucket_resolution", "must not be above the max bucket side")
        )
    for key, side in (("dataset.min_bucket_resolution", data.min_bucket_resolution),
                      ("dataset.max_bucket_resolution", data.max_bucket_resolution)):
        if side % data.bucket_step:
            problems.append((key, f"{side} is not a multiple of the bucket step {data.bucket_step}"))
    if not config.captions.caption_extension.startswith("."):
        problems.append(("captions.caption_extension", "must start with a dot, e.g. .txt"))
    if train.huber_c <= 0 and train.loss_type in ("huber", "smooth_l1"):
        problems.append(("training.huber_c", f"must be above 0 for the {train.loss_type} loss"))
    if train.adaptive_noise_scale and not train.noise_offset:
        problems.append(("training.adaptive_noise_scale", "needs a noise offset (it scales the offset per channel)"))
    if opt.lr_warmup_steps and opt.lr_warmup_percent:
        problems.append(("optimizer.lr_warmup_percent", "set warm-up steps or warm-up percent, not both"))
    arguments_problem = optimizer_args_problem(opt.optimizer, opt.optimizer_args)
    if arguments_problem:
        problems.append(("optimizer.optimizer_args", arguments_problem))
    if opt.lr_scheduler_type:
        try:
            parse_optimizer_args(opt.lr_scheduler_args)
        except ValueError as error:
            problems.append(("optimizer.lr_scheduler_args", f"{error}; write key=value pairs separated by spaces"))
        if opt.lr_warmup_steps or opt.lr_warmup_percent:
            problems.append(("optimizer.lr_scheduler_type", "a scheduler class takes no warm-up (sd-scripts refuses "
                                                            "one): set warm-up to 0 or clear the class"))
    elif opt.lr_scheduler_args.strip():
        problems.append(("optimizer.lr_scheduler_args", "only used with a scheduler class (lr_scheduler_type)"))
    if opt.lr_scheduler == "adafactor" and opt.optimizer != "Adafactor":
        problems.append(("optimizer.lr_scheduler", "the adafactor schedule needs the Adafactor optimizer"))
    if train.max_steps == 0 and train.epochs == 0:
        problems.append(("training.epochs", "set epochs or max steps"))
    if config.captions.keep_tokens and not (config.captions.shuffle_caption or config.captions.caption_dropout_rate):
        pass  # harmless: keep tokens only matters when shuffling or dropping
    if not config.model.pretrained_model.strip():
        problems.append(("model.pretrained_model", "a base model is required (folder, .safetensors file or hub id)"))
    name_problem = output_name_problem(config.saving.output_name)
    if name_problem:
        problems.append(("saving.output_name", name_problem))
    validation = config.validation
    if validation.image_dir.strip() and validation.split_fraction:
        problems.append(("validation.split_fraction", "give a validation folder or a split fraction, not both"))
    if validation.early_stop_patience and not validation.enabled:
        problems.append(("validation.early_stop_patience",
                         "early stop needs validation: set a validation folder or a split fraction"))
    if config.sampling.prompts_file and config.sampling.prompts.strip():
        problems.append(("sampling.prompts_file", "give inline prompts or a prompts file, not both"))
    return problems


# A file name is at most 255 bytes; the longest loradeck makes from the output name adds 39:
# `.<name>-step00000001.safetensors.XXXXXXXX.tmp`, the temporary file of a step save.
OUTPUT_NAME_MAX_BYTES = 200


def output_name_problem(name: str) -> str | None:
    """Why `saving.output_name` cannot name a run folder and its LoRA files, or None."""
    if not name.strip():
        return f"{name!r} is blank; give the run a name, e.g. city-v1"
    if name != name.strip():
        return f"{name!r} starts or ends with a space"
    if any(unicodedata.category(char) == "Cc" for char in name):
        return f"{name!r} holds a control character (a tab, a newline)"
    if "/" in name or "\\" in name or name.startswith("."):
        return f"{name!r} is not a usable folder name (no slash, no leading dot)"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > OUTPUT_NAME_MAX_BYTES:
        return (f"is {size} bytes long; at most {OUTPUT_NAME_MAX_BYTES} (file names are limited to 255 bytes, "
                "and the LoRA files add to the name)")
    return None


def validate(config: TrainConfig) -> list[tuple[str, str]]:
    """Every problem of an already-built config, field by field then across fields."""
    problems = []
    for spec in schema():
        reason = _check_field(spec, getattr(getattr(config, spec.group), spec.name))
        if reason:
            problems.append((spec.key, reason))
    return problems + cross_field_problems(config)


# --------------------------------------------------------------------------- versions


def migrate(data: dict[str, Any], source: str = "", notes: list[str] | None = None) -> dict[str, Any]:
    """Bring TOML data of any earlier schema version to the current one; what changed
    meaning is appended to `notes` (one line each), for the user to read."""
    notes = [] if notes is None else notes
    version = data.get("version", CONFIG_VERSION)
    if not isinstance(version, int) or version < 0:
        raise ConfigError("version", f"{version!r} is not a config version", source)
    if version > CONFIG_VERSION:
        raise ConfigError(
            "version", f"{version} is newer than this loradeck understands ({CONFIG_VERSION}); upgrade loradeck", source
        )
    data = dict(data)
    if version == 0:
        data = _migrate_flat_v0(data)
    if version <= 1 or "v2" in (data.get("model") if isinstance(data.get("model"), dict) else {}):
        data = _migrate_v2_flag(data, notes)  # also a hand-written file that names no version
    data["version"] = CONFIG_VERSION
    return data


def _migrate_v2_flag(data: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Version 1 said SD 2.x twice: `model.v2 = true` and `model.family = "sd2"`. The flag
    becomes the family (when the family was auto or SD 1.x); a local model's files still
    decide over both, as before."""
    model = data.get("model")
    if not isinstance(model, dict) or "v2" not in model:
        return data
    model = dict(model)
    flag = model.pop("v2")
    data = {**data, "model": model}
    if flag is True and model.get("family", "auto") in ("auto", "sd15"):
        model["family"] = "sd2"
        notes.append('model.v2 = true is now model.family = "sd2" (config version 2); the next save writes it so')
    elif flag is True:
        notes.append(f"model.v2 = true dropped: model.family = {model['family']!r} says what the model is")
    return data


def _migrate_flat_v0(data: dict[str, Any]) -> dict[str, Any]:
    """Version 0 was one flat table of `group_setting = value` keys; nest them."""
    nested: dict[str, dict[str, Any]] = {}
    known = {spec.name: spec.group for spec in schema()}
    known["v2"] = "model"  # a version-1 setting: _migrate_v2_flag turns it into model.family
    for key, value in data.items():
        if key == "version":
            continue
        if isinstance(value, dict):
            nested.setdefault(key, {}).update(value)
        elif key in known:
            nested.setdefault(known[key], {})[key] = value
        else:
            nested.setdefault("unknown", {})[key] = value
    return nested


# --------------------------------------------------------------------------- files


def config_to_dict(config: TrainConfig, *, include_defaults: bool = True) -> dict[str, Any]:
    """TOML-shaped data. Unset optional values are left out (TOML has no null)."""
    data: dict[str, Any] = {"version": CONFIG_VERSION}
    for spec in schema():
        value = getattr(getattr(config, spec.group), spec.name)
        if value is None:
            continue
        if not include_defaults and value == spec.default:
            continue
        data.setdefault(spec.group, {})[spec.name] = value
    return data


def dumps_config(config: TrainConfig) -> str:
    import tomli_w

    return tomli_w.dumps(config_to_dict(config), multiline_strings=True)


def loads_config(text: str, source: str = "", notes: list[str] | None = None) -> TrainConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("toml", f"not valid TOML: {error}", source) from None
    return config_from_dict(data, source, notes)


def load_config(path: str | Path, notes: list[str] | None = None) -> TrainConfig:
    """The config in a TOML file, migrated from an older version (what changed meaning is
    appended to `notes` when given)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file", "no such config file", str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("file", "not a UTF-8 text file", str(path)) from None
    except OSError as error:  # a folder, no permission, an I/O error
        raise ConfigError("file", f"cannot read ({error.strerror or error})", str(path)) from None
    return loads_config(text, str(path), notes)


def save_config(config: TrainConfig, path: str | Path) -> None:
    from engine.atomic import atomic_write_text

    try:
        atomic_write_text(path, dumps_config(config))
    except OSError as error:  # a read-only place, a folder in the way, a full disk
        raise LoradeckError(f"{path}: cannot write the config ({error.strerror or error})") from None


def replace_setting(config: TrainConfig, key: str, value: Any) -> TrainConfig:
    """A new config with one setting changed (the original is untouched). Not validated."""
    group_name, name = key.split(".", 1)
    group = dataclasses.replace(getattr(config, group_name), **{name: value})
    return dataclasses.replace(config, **{group_name: group})


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")  # a base model or VAE in one file
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(value: str) -> bool:
    """`owner/name`, as a model hub names models. A relative path with one slash looks the
    same: a local path that exists is taken first."""
    return bool(_HUB_ID.match(value)) and not value.endswith(SINGLE_FILE_SUFFIXES)


RANDOM_SEED = -1  # `training.seed`: draw one when the run starts (the Kohya GUI's seed 0)


def with_drawn_seed(config: TrainConfig, seed: int | None = None) -> TrainConfig:
    """The config itself, or, when its seed is RANDOM_SEED, a copy with `seed` (default: a
    fresh draw in sd-scripts' range 0..2^32-1) for the frozen copy in a run folder."""
    if config.training.seed != RANDOM_SEED:
        return config
    if seed is None:
        import random

        seed = random.SystemRandom().randrange(2**32)  # never the training's RNG state
    return replace_setting(config, "training.seed", seed)


def with_absolute_paths(config: TrainConfig, base_dir: str | Path) -> TrainConfig:
    """A copy whose local path settings are absolute (for the frozen copy in a run folder).

    A hub id (`owner/name` that does not exist locally) is kept as it is.
    """
    for spec in schema():
        if not spec.path:
            continue
        value = getattr(getattr(config, spec.group), spec.name)
        resolved = resolve_path(base_dir, value)
        if resolved is None:
            continue
        if spec.key == "model.pretrained_model" and not resolved.exists() and looks_like_hub_id(value.strip()):
            continue  # a hub id, not a local path
        config = replace_setting(config, spec.key, str(resolved.resolve()))
    return config
