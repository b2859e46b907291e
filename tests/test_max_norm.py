"""network.scale_weight_norms: sd-scripts' max-norm regularisation (networks/lora.py's
apply_max_norm_regularization, rewritten below) for LoRA and LoCon, LyCORIS' own
apply_max_norm for the types it builds, and the update rule for peft's LoHa and LoKr."""
from __future__ import annotations

import copy

import pytest
import torch

from engine.config.network_types import NetworkSpec
from engine.network.max_norm import apply_max_norm
from tests.test_network_types import randomized


def sd_scripts_max_norm(state_dict: dict[str, torch.Tensor], max_norm_value: float):
    """networks/lora.py LoRANetwork.apply_max_norm_regularization, on a file's tensors."""
    downkeys = [key for key in state_dict if "lora_down" in key and "weight" in key]
    norms, keys_scaled = [], 0
    for downkey in downkeys:
        upkey, alphakey = downkey.replace("lora_down", "lora_up"), downkey.replace("lora_down.weight", "alpha")
        down, up, alpha = state_dict[downkey], state_dict[upkey], state_dict[alphakey]
        scale = alpha / down.shape[0]
        if up.shape[2:] == (1, 1) and down.shape[2:] == (1, 1):
            updown = (up.squeeze(2).squeeze(2) @ down.squeeze(2).squeeze(2)).unsqueeze(2).unsqueeze(3)
        elif up.shape[2:] == (3, 3) or down.shape[2:] == (3, 3):
            updown = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        else:
            updown = up @ down
        updown *= scale
        norm = updown.norm().clamp(min=max_norm_value / 2)
        desired = torch.clamp(norm, max=max_norm_value)
        ratio = desired.cpu() / norm.cpu()
        if ratio != 1:
            keys_scaled += 1
            state_dict[upkey] *= ratio ** 0.5
            state_dict[downkey] *= ratio ** 0.5
        norms.append((updown.norm() * ratio).item())
    return keys_scaled, sum(norms) / len(norms), max(norms)


@pytest.mark.parametrize("spec", [NetworkSpec(rank=4, alpha=2.0),
                                  NetworkSpec(type="locon", rank=4, alpha=2.0, conv_dim=4, conv_alpha=2.0)],
                         ids=["lora", "locon"])
def test_lora_and_locon_are_scaled_as_sd_scripts_scales_them(pipeline_factory, spec):
    network = randomized(pipeline_factory(), spec)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(3.0)  # large enough that some layers are above the limit
    before = network.state_dict()
    limit = sd_scripts_max_norm(copy.deepcopy(before), 1e9)[1]  # the mean norm: some layers above it, some below
    expected = sd_scripts_max_norm(copy.deepcopy(before), limit)
    keys_scaled, mean_norm, max_norm = apply_max_norm(network, limit)
    assert 0 < expected[0] < len([key for key in before if key.endswith("alpha")])  # some scaled, not all
    assert int(keys_scaled) == expected[0]
    assert float(mean_norm) == pytest.approx(expected[1], rel=1e-5)
    assert float(max_norm) == pytest.approx(expected[2], rel=1e-5)
    sd_scripts_result = copy.deepcopy(before)
    sd_scripts_max_norm(sd_scripts_result, limit)
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, sd_scripts_result[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("spec", [
    NetworkSpec(type="loha", rank=4, alpha=2.0, conv_dim=2, conv_alpha=1.0),
    NetworkSpec(type="lokr", rank=2, alpha=2.0, conv_dim=2, conv_alpha=1.0, factor=4),
    NetworkSpec(type="dora", rank=4, alpha=2.0, dora_layout="output"),
    NetworkSpec(type="dora", rank=4, alpha=2.0),
    NetworkSpec(type="diag-oft", rank=4, alpha=1.0),
], ids=["loha", "lokr", "dora-output", "dora-input", "diag-oft"])
def test_other_types_get_lycoris_rule(pipeline_factory, spec):
    """‖ΔW‖ (Diag-OFT: ‖blocks‖) becomes min(‖ΔW‖, max) per layer; LyCORIS' own modules, where
    loradeck builds them with LyCORIS, give the same numbers."""
    network = randomized(pipeline_factory(), spec)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(3.0)
    references = [copy.deepcopy(layer) for layer in network.layers()] if spec.built_by_lycoris else None
    norms_before = [_norm(layer, spec) for layer in network.layers()]
    keys_scaled, mean_norm, max_norm = apply_max_norm(network, 0.4)
    norms_after = [_norm(layer, spec) for layer in network.layers()]
    for before, after in zip(norms_before, norms_after):
        assert after == pytest.approx(min(before, 0.4) if before > 0.2 else before, rel=1e-4)
    assert int(keys_scaled) == sum(before > 0.4 for before in norms_before) > 0
    assert float(max_norm) == pytest.approx(max(norms_after), rel=1e-4)
    assert float(mean_norm) == pytest.approx(sum(norms_after) / len(norms_after), rel=1e-4)
    if references is not None:
        lycoris = [reference.apply_max_norm(0.4) for reference in references]
        assert sum(bool(scaled) for scaled, _ in lycoris) == int(keys_scaled)
        assert [float(norm) for _, norm in lycoris] == pytest.approx(norms_after, rel=1e-4)


def _norm(layer, spec) -> float:
    from engine.network.lora import ADAPTER_NAME

    with torch.no_grad():
        if spec.type == "diag-oft":
            return float(layer.oft_blocks.norm())
        if spec.built_by_lycoris:
            return float((layer.lora_up.weight.flatten(1) @ layer.lora_down.weight.flatten(1)).norm() * layer.scale)
        if spec.type == "dora":
            down, up = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
            return float((up.flatten(1) @ down.flatten(1)).norm() * layer.scaling[ADAPTER_NAME])
        return float(layer.get_delta_weight(ADAPTER_NAME).norm())


@pytest.mark.parametrize("kind", ["ia3", "dylora", "glora"])
def test_types_lycoris_does_not_scale_are_left_alone(pipeline_factory, kind):
    spec = NetworkSpec(type=kind, rank=4, alpha=2.0)
    network = randomized(pipeline_factory(), spec)
    before = network.state_dict()
    assert apply_max_norm(network, 0.01) is None
    assert all(torch.equal(value, before[key]) for key, value in network.state_dict().items())


def test_a_run_holds_every_layer_to_the_norm_and_logs_it(tmp_path, tiny_dataset, make_run):
    from engine.network.lora import read_lora_file
    from engine.run.events import read_events
    from engine.train.loop import train

    run = make_run(tiny_dataset, "normed", network={"scale_weight_norms": 0.02}, training={"epochs": 1},
                   optimizer={"learning_rate": 0.05}, logging={"tensorboard": True})
    assert train(run.path) == 0
    steps = [event for event in read_events(run.events) if event["type"] == "step"]
    assert steps and all({"keys_scaled", "mean_norm", "max_norm"} <= set(event) for event in steps)
    assert steps[-1]["keys_scaled"] > 0 and steps[-1]["max_norm"] <= 0.02 + 1e-6
    tensors, metadata = read_lora_file(run.checkpoints / "normed.safetensors")
    assert metadata["ss_scale_weight_norms"] == "0.02"
    keys = {key.split(".", 1)[0] for key in tensors}
    worst = max(float(sd_scripts_max_norm({k: v for k, v in tensors.items() if k.startswith(key + ".")}, 1e9)[2])
                for key in keys)
    assert worst <= 0.02 * (1 + 1e-5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run.tensorboard))
    accumulator.Reload()
    assert {"max_norm/keys_scaled", "norm/avg_key_norm", "max_norm/max_key_norm"} <= set(accumulator.Tags()["scalars"])
