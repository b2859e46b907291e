"""peft's adapter layers as loradeck names them: the adapter name, which peft attribute holds
each tensor of a LoRA file, and the peft config of each network type. Shared machinery
below engine.network and the families (a family whose file layout fuses modules reads
the same tensors). Heavy module (peft is imported by `peft_config`).
"""
from __future__ import annotations

from engine.errors import LoradeckError

ADAPTER_NAME = "loradeck"

# file name of each tensor -> the peft attribute (a dict by adapter name) that holds it
_LORA = (("lora_down.weight", "lora_A"), ("lora_up.weight", "lora_B"))
TENSORS: dict[str, tuple[tuple[str, str], ...]] = {
    "lora": _LORA,
    "locon": _LORA,
    "dora": _LORA + (("dora_scale", "lora_magnitude_vector"),),
    "loha": tuple((name, name) for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")),
    "lokr": tuple((name, name) for name in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b",
                                             "lokr_t2")),
}


def peft_config(spec, targets, ranks: dict, alphas: dict):
    """The peft config of `spec` (engine.config.network_types.NetworkSpec) for these targets."""
    common = dict(target_modules=list(targets), rank_pattern=ranks, alpha_pattern=alphas)
    if spec.type in ("lora", "locon", "dora"):
        from peft import LoraConfig

        return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, init_lora_weights=True, use_dora=spec.type == "dora",
                          **common)
    if spec.type == "loha":
        from peft import LoHaConfig

        return LoHaConfig(r=spec.rank, alpha=spec.alpha, rank_dropout=spec.rank_dropout,
                          module_dropout=spec.module_dropout, use_effective_conv2d=spec.use_tucker, init_weights=True,
                          **common)
    if spec.type == "lokr":
        from peft import LoKrConfig

        return LoKrConfig(r=spec.rank, alpha=spec.alpha, rank_dropout=spec.rank_dropout,
                          module_dropout=spec.module_dropout, use_effective_conv2d=spec.use_tucker,
                          decompose_factor=spec.factor, init_weights="lycoris", **common)
    raise LoradeckError(f"network.type: {spec.type!r} is not a network type loradeck builds")
