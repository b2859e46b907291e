"""The network types a config can train, and what each one is called in a LoRA file.

    lora    LoRA on the attention, projection and feed-forward layers (sd-scripts' networks.lora)
    locon   LoRA there and on the ResNet convolutions, 3x3 included (conv_dim / conv_alpha)
    loha    LyCORIS LoHa: a Hadamard product of two low-rank pairs, attention and ResNets
    lokr    LyCORIS LoKr: a Kronecker product of a small and a low-rank (or full) matrix
    dora    weight-decomposed LoRA (LyCORIS `dora_wd`): a learned magnitude per input column
            (`dora_layout = "input"`, LyCORIS `wd_on_output=False`) or per output row ("output")
    ia3     LyCORIS iA3: one learned scale per output (or input) feature of each layer
    diag-oft  LyCORIS Diag-OFT: a block-diagonal orthogonal rotation of each layer's outputs
    dylora  LyCORIS DyLoRA: LoRA trained block by block of ranks (any leading ranks work alone)
    glora   LyCORIS GLoRA: generalised LoRA, a low-rank scale and a low-rank shift of each weight

`NetworkSpec` is what the trainer builds, the plan counts and the file's metadata records;
it is derived from the config (never stored in it). The `ss_network_module` and
`ss_network_args` values are the ones sd-scripts writes for `networks.lora` and
`lycoris.kohya` (every argument a string, as `--network_args key=value` parses them).

Light module: the standard library only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

NETWORK_TYPES = ("lora", "locon", "loha", "lokr", "dora", "ia3", "diag-oft", "dylora", "glora")
# trained with the LyCORIS library's own modules (engine.network.lycoris_network), with its `full` preset's
# layers; the others with peft's layers (engine.network.lora)
LYCORIS_BUILT_TYPES = ("ia3", "diag-oft", "dylora", "glora")
CONV_TYPES = ("locon", "loha", "lokr", "dora", *LYCORIS_BUILT_TYPES)  # adapt the ResNet blocks and their convolutions
LYCORIS_TYPES = ("loha", "lokr", "dora", *LYCORIS_BUILT_TYPES)  # saved as `lycoris.kohya` networks
# DoRA is LyCORIS' locon with dora_wd
LYCORIS_ALGOS = {"loha": "loha", "lokr": "lokr", "dora": "locon", "ia3": "ia3", "diag-oft": "diag-oft",
                 "dylora": "dylora", "glora": "glora"}
DORA_LAYOUTS = ("input", "output")  # where DoRA's magnitude lives: per input column, per output row
SD_SCRIPTS_MODULE = "networks.lora"
LYCORIS_MODULE = "lycoris.kohya"
# the types that take sd-scripts' / LyCORIS' rank and module dropout
DROPOUT_TYPES = ("lora", "locon", "loha", "lokr", "diag-oft", "dylora", "glora")
MAX_RANK = 1024  # every type but lokr; lokr's rank may be larger, to mean full matrices


@dataclass(frozen=True)
class NetworkSpec:
    """Everything that decides a network's layers and tensors."""

    type: str = "lora"
    rank: int = 32
    alpha: float = 16.0
    conv_dim: int = 0  # rank of the 3x3 convolutions (conv types); 0 leaves them out
    conv_alpha: float = 1.0
    factor: int = -1  # lokr's Kronecker factor; -1 splits each side near its square root
    use_tucker: bool = False  # loha / lokr: CP (Tucker) decomposition of the 3x3 kernels
    network_dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    train_unet: bool = True
    train_text_encoder: bool = True
    train_t5xxl: bool = False  # Flux.1: T5 gets adapters too (with the text encoder); sd-scripts' train_t5xxl
    dora_layout: str = "input"  # dora: "input" (LyCORIS wd_on_output=False) or "output" (peft's)
    train_on_input: bool = False  # ia3: scale each layer's inputs instead of its outputs
    block_size: int = 4  # dylora: ranks trained together (the GUI's "unit")
    constraint: float = 0.0  # diag-oft: the rotation's norm bound (0: none)
    rescaled: bool = False  # diag-oft: a learned scale per output after the rotation

    @classmethod
    def of(cls, config, *, train_text_encoder: bool | None = None) -> "NetworkSpec":
        """The spec of a config's `[network]` (the text encoder as given, when the caller knows
        better than the setting: a text-encoder learning rate of 0 trains none)."""
        net = config.network
        conv = net.type in CONV_TYPES
        return cls(
            type=net.type, rank=net.rank, alpha=net.alpha,
            conv_dim=net.conv_dim if conv else 0, conv_alpha=net.conv_alpha if conv else 1.0,
            factor=net.factor if net.type == "lokr" else -1,
            use_tucker=net.use_tucker and net.type in ("loha", "lokr"),
            # a dropout the type has no use for is left out, not refused (the form hides it)
            network_dropout=net.network_dropout if net.type in ("lora", "locon") else 0.0,
            rank_dropout=net.rank_dropout if net.type in DROPOUT_TYPES else 0.0,
            module_dropout=net.module_dropout if net.type in DROPOUT_TYPES else 0.0,
            train_unet=net.train_unet,
            train_text_encoder=net.train_text_encoder if train_text_encoder is None else train_text_encoder,
            train_t5xxl=getattr(net, "train_t5xxl", False),
            dora_layout=net.dora_layout if net.type == "dora" else "input",
            train_on_input=net.train_on_input and net.type == "ia3",
            block_size=net.block_size if net.type == "dylora" else 4,
            constraint=net.constraint if net.type == "diag-oft" else 0.0,
            rescaled=net.rescaled and net.type == "diag-oft",
        )

    @property
    def built_by_lycoris(self) -> bool:
        """Trained with LyCORIS' modules (its iA3, Diag-OFT, DyLoRA, GLoRA, and DoRA per input)."""
        return self.type in LYCORIS_BUILT_TYPES or (self.type == "dora" and self.dora_layout == "input")

    @property
    def adapts_resnets(self) -> bool:
        return self.type in CONV_TYPES

    def rank_of(self, kernel: int) -> tuple[int, float] | None:
        """(rank, alpha) of a layer with a `kernel`-sided kernel (1: Linear or 1x1), None if
        the layer is left out."""
        if kernel == 1:
            return self.rank, self.alpha
        if self.adapts_resnets and self.conv_dim > 0:
            return self.conv_dim, self.conv_alpha
        return None

    # ---- the file's metadata

    def metadata(self) -> dict[str, str]:
        """`ss_network_module`, `ss_network_args`, dim, alpha and dropout, as sd-scripts writes them."""
        args: dict[str, str] = {}
        if self.type in LYCORIS_TYPES:
            args["algo"] = LYCORIS_ALGOS[self.type]
        if self.adapts_resnets:
            args["conv_dim"] = str(self.conv_dim)
            args["conv_alpha"] = _number(self.conv_alpha)
        if self.type == "lokr":
            args["factor"] = str(self.factor)
        if self.use_tucker:
            args["use_tucker"] = "True"
        if self.type == "dora":
            args["dora_wd"] = "True"
            args["wd_on_output"] = str(self.dora_layout == "output")
        if self.type == "ia3":
            args["train_on_input"] = str(self.train_on_input)
        if self.type == "dylora":
            args["block_size"] = str(self.block_size)
        if self.type == "diag-oft":
            args["constraint"] = _number(self.constraint)
            args["rescaled"] = str(self.rescaled)
        if self.train_t5xxl and self.train_text_encoder:
            args["train_t5xxl"] = "True"
        if self.network_dropout and self.type in LYCORIS_TYPES:
            args["dropout"] = _number(self.network_dropout)
        for name in ("rank_dropout", "module_dropout"):
            if getattr(self, name):
                args[name] = _number(getattr(self, name))
        metadata = {
            "ss_network_module": LYCORIS_MODULE if self.type in LYCORIS_TYPES else SD_SCRIPTS_MODULE,
            "ss_network_dim": str(self.rank),
            "ss_network_alpha": str(float(self.alpha)),
            "ss_network_dropout": _number(self.network_dropout) if self.network_dropout else "None",
        }
        if args:
            metadata["ss_network_args"] = json.dumps(args)
        return metadata

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], *, train_unet: bool, train_text_encoder: bool) -> "NetworkSpec":
        """The spec a file of ours was written with (ValueError when its metadata says otherwise)."""
        module = metadata.get("ss_network_module", SD_SCRIPTS_MODULE)
        try:
            args = json.loads(metadata.get("ss_network_args") or "{}")
            rank = int(metadata["ss_network_dim"])
            alpha = float(metadata["ss_network_alpha"])
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"no usable ss_network_dim / ss_network_alpha / ss_network_args ({error})") from None
        if module == LYCORIS_MODULE:
            algo = args.get("algo", "lora")
            by_algo = {algo_name: kind for kind, algo_name in LYCORIS_ALGOS.items() if kind != "dora"}
            kind = "dora" if _true(args.get("dora_wd")) else by_algo.get(algo)
            if kind is None or (kind == "dora" and algo not in ("lora", "locon")):
                raise ValueError(f"LyCORIS algo {algo!r} is not a type loradeck trains")
        elif module == SD_SCRIPTS_MODULE:
            kind = "locon" if int(args.get("conv_dim", 0) or 0) > 0 else "lora"
        else:
            raise ValueError(f"network module {module!r} is not one loradeck trains")
        conv = kind in CONV_TYPES
        return cls(
            type=kind, rank=rank, alpha=alpha,
            conv_dim=int(args.get("conv_dim", rank if kind in LYCORIS_TYPES else 0)) if conv else 0,
            conv_alpha=float(args.get("conv_alpha", alpha)) if conv else 1.0,
            factor=int(args.get("factor", -1)) if kind == "lokr" else -1,
            use_tucker=_true(args.get("use_tucker")) or _true(args.get("use_cp")),
            train_unet=train_unet, train_text_encoder=train_text_encoder, train_t5xxl=_true(args.get("train_t5xxl")),
            # LyCORIS' own default is per output; files of ours always say which
            dora_layout="output" if kind == "dora" and _true(args.get("wd_on_output", "True")) else "input",
            train_on_input=_true(args.get("train_on_input")),
            block_size=int(args.get("block_size", 4) or 4),
            constraint=float(args.get("constraint", 0) or 0),
            rescaled=_true(args.get("rescaled")),
        )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _true(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")
