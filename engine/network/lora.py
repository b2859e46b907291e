"""The LoRA network: peft adapters on the U-Net and CLIP, saved in the Kohya key layout.

The adapters are injected with the libraries' own `add_adapter` (diffusers for the U-Net,
transformers for CLIP), so the modules stay ordinary diffusers/transformers models that a
pipeline can run as they are. Which layers get one follows sd-scripts' `networks.lora`
for SD1.x: every Linear and 1x1 conv inside the U-Net's transformer blocks
(`Transformer2DModel`) and inside CLIP's attention and MLP.

On disk a LoRA is a `.safetensors` file in Kohya's layout, which diffusers'
`load_lora_weights`, AUTOMATIC1111 and ComfyUI all read:

    lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight   (rank, in, 1, 1)
    lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight     (out, rank, 1, 1)
    lora_unet_down_blocks_0_attentions_0_proj_in.alpha              () = alpha
    lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight ...

The key is the module's dotted path with dots turned into underscores (that is why the
mapping back goes through the model's own module names, not by parsing the key). SDXL's
two text encoders are `lora_te1_*` (CLIP-L) and `lora_te2_*` (OpenCLIP-bigG), as
sd-scripts' SDXL networks.lora names them; its U-Net gets the same Transformer2DModel
layers as SD1.x's (every Linear of every transformer block, at all depths).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from engine.atomic import atomic_path
from engine.errors import LoradeckError

ADAPTER_NAME = "loradeck"
UNET_TARGET_MODULES = ("proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
TEXT_ENCODER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
UNET_PREFIX = "lora_unet"
TEXT_ENCODER_PREFIX = "lora_te"
SDXL_TEXT_ENCODER_PREFIXES = ("lora_te1", "lora_te2")
SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def kohya_name(prefix: str, module_name: str) -> str:
    """`lora_unet_down_blocks_0_attentions_0_proj_in` for `down_blocks.0.attentions.0.proj_in`.

    transformers 5 dropped CLIPTextModel's `text_model.` level; Kohya keys always have it.
    """
    if prefix.startswith(TEXT_ENCODER_PREFIX):
        module_name = "text_model." + module_name.removeprefix("text_model.")
    return f"{prefix}_{module_name.replace('.', '_')}"


def lora_layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(module name, peft LoRA layer) for every layer carrying our adapter."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
            yield name, module


@dataclass
class LoraNetwork:
    """The adapters attached to a base model's U-Net and text encoder (or SDXL's two)."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    rank: int
    alpha: float
    has_unet: bool
    has_text_encoder: bool
    text_encoder_2: torch.nn.Module | None = None

    @property
    def text_encoders(self) -> list[tuple[str, torch.nn.Module]]:
        """(Kohya prefix, module) of each text encoder."""
        if self.text_encoder_2 is None:
            return [(TEXT_ENCODER_PREFIX, self.text_encoder)]
        return list(zip(SDXL_TEXT_ENCODER_PREFIXES, (self.text_encoder, self.text_encoder_2)))

    @classmethod
    def attach(
        cls, unet: torch.nn.Module, text_encoder: torch.nn.Module, *, rank: int, alpha: float,
        train_unet: bool = True, train_text_encoder: bool = True, text_encoder_2: torch.nn.Module | None = None,
    ) -> "LoraNetwork":
        """Inject fresh adapters (down: Kaiming uniform, up: zeros, so training starts at the base)."""
        from peft import LoraConfig, inject_adapter_in_model

        def lora_config(targets: tuple[str, ...]) -> LoraConfig:
            return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=True)

        network = cls(unet, text_encoder, rank, alpha, train_unet, train_text_encoder, text_encoder_2)
        unet.requires_grad_(False)
        for _, encoder in network.text_encoders:
            encoder.requires_grad_(False)
        if train_unet:
            # diffusers' own entry point, so set_adapters()/disable_adapters() work on it later
            unet.add_adapter(lora_config(UNET_TARGET_MODULES), adapter_name=ADAPTER_NAME)
        if train_text_encoder:
            # peft directly: transformers' add_adapter insists on a newer peft than diffusers
            for _, encoder in network.text_encoders:
                inject_adapter_in_model(lora_config(TEXT_ENCODER_TARGET_MODULES), encoder, ADAPTER_NAME)
        # LoRA weights train in fp32 even when the frozen base is fp16/bf16: small updates
        # to low-precision weights round away (diffusers' cast_training_params does the same).
        for parameter in network.parameters():
            parameter.data = parameter.data.float()
        return network

    # ---- parameters

    def unet_parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, layer in lora_layers(self.unet) for p in _adapter_parameters(layer)] if self.has_unet else []

    def text_encoder_parameters(self) -> list[torch.nn.Parameter]:
        if not self.has_text_encoder:
            return []
        return [p for _, encoder in self.text_encoders for _, layer in lora_layers(encoder)
                for p in _adapter_parameters(layer)]

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.unet_parameters() + self.text_encoder_parameters()

    def param_groups(self, unet_lr: float, text_encoder_lr: float,
                     text_encoder_2_lr: float | None = None) -> list[dict[str, Any]]:
        """Optimizer groups, U-Net first, then one per text encoder (SDXL's second at
        `text_encoder_2_lr`, else `text_encoder_lr`); each carries its `name` for logging."""
        groups = []
        if self.has_unet:
            groups.append({"params": self.unet_parameters(), "lr": unet_lr, "name": "unet"})
        if self.has_text_encoder:
            rates = (text_encoder_lr, text_encoder_lr if text_encoder_2_lr is None else text_encoder_2_lr)
            for (_, encoder), rate, name in zip(self.text_encoders, rates, ("text_encoder", "text_encoder_2")):
                parameters = [p for _, layer in lora_layers(encoder) for p in _adapter_parameters(layer)]
                groups.append({"params": parameters, "lr": rate, "name": name})
        return groups

    def freeze_text_encoder(self) -> None:
        """Stop training the text-encoder LoRA (its weights stay in the file as they are)."""
        for parameter in self.text_encoder_parameters():
            parameter.requires_grad_(False)
            parameter.grad = None

    # ---- Kohya layout

    def _modules(self) -> Iterator[tuple[str, torch.nn.Module]]:
        if self.has_unet:
            for name, layer in lora_layers(self.unet):
                yield kohya_name(UNET_PREFIX, name), layer
        if self.has_text_encoder:
            for prefix, encoder in self.text_encoders:
                for name, layer in lora_layers(encoder):
                    yield kohya_name(prefix, name), layer

    def state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Kohya-layout tensors on the CPU in `dtype`, with `.alpha` holding the real alpha."""
        tensors: dict[str, torch.Tensor] = {}
        for key, layer in self._modules():
            down = layer.lora_A[ADAPTER_NAME].weight
            up = layer.lora_B[ADAPTER_NAME].weight
            tensors[f"{key}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
            tensors[f"{key}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(float(self.alpha), dtype=dtype)
        return tensors

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set every adapter from Kohya-layout tensors; the file must fit this network exactly."""
        expected = set()
        with torch.no_grad():
            for key, layer in self._modules():
                down, up = f"{key}.lora_down.weight", f"{key}.lora_up.weight"
                expected.update((down, up, f"{key}.alpha"))
                if down not in tensors or up not in tensors:
                    raise LoradeckError(f"LoRA file has no weights for {key}; it was trained on another model or network")
                target_down, target_up = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
                if tensors[down].shape != target_down.shape or tensors[up].shape != target_up.shape:
                    raise LoradeckError(
                        f"LoRA file's {key} has rank {tensors[down].shape[0]}, this network has {target_down.shape[0]}"
                    )
                target_down.copy_(tensors[down])
                target_up.copy_(tensors[up])
        extra = sorted(set(tensors) - expected)
        if extra:
            raise LoradeckError(f"LoRA file has {len(extra)} keys this network lacks, e.g. {extra[0]}")


def _adapter_parameters(layer: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight]


def save_lora_file(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write a LoRA `.safetensors` atomically; returns its size in bytes."""
    from safetensors.torch import save_file

    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return Path(path).stat().st_size


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a LoRA `.safetensors` file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LoradeckError(f"{path}: no such LoRA file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise LoradeckError(f"{path}: not a readable .safetensors file ({error})") from None
    return tensors, metadata


def network_shape(tensors: dict[str, torch.Tensor]) -> tuple[int, float, bool, bool]:
    """(rank, alpha, has U-Net, has text encoder) of a Kohya-layout LoRA."""
    downs = [key for key in tensors if key.endswith(".lora_down.weight")]
    if not downs:
        raise LoradeckError("not a LoRA in the Kohya layout (no .lora_down.weight keys)")
    first = downs[0].removesuffix(".lora_down.weight")
    rank = tensors[downs[0]].shape[0]
    alpha_tensor = tensors.get(f"{first}.alpha")
    alpha = float(alpha_tensor.item()) if alpha_tensor is not None else float(rank)
    has_unet = any(key.startswith(UNET_PREFIX + "_") for key in downs)
    prefixes = (TEXT_ENCODER_PREFIX, *SDXL_TEXT_ENCODER_PREFIXES)
    has_text_encoder = any(key.startswith(tuple(prefix + "_" for prefix in prefixes)) for key in downs)
    return rank, alpha, has_unet, has_text_encoder


def attach_lora_file(unet: torch.nn.Module, text_encoder: torch.nn.Module, path: str | Path,
                     text_encoder_2: torch.nn.Module | None = None) -> LoraNetwork:
    """Attach the adapters of a LoRA file we wrote to a fresh U-Net and text encoder(s)."""
    tensors, _ = read_lora_file(path)
    rank, alpha, has_unet, has_text_encoder = network_shape(tensors)
    network = LoraNetwork.attach(
        unet, text_encoder, rank=rank, alpha=alpha, train_unet=has_unet, train_text_encoder=has_text_encoder,
        text_encoder_2=text_encoder_2,
    )
    network.load_state_dict(tensors)
    return network
