"""Tiny random LoRA files for a pipeline, in the two layouts found in the wild.

- diffusers/peft: `unet.<module>.lora_A.weight` / `lora_B.weight`, and
  `text_encoder.text_model.<module>...` as files saved before transformers 5 spell it.
- kohya / A1111: `lora_unet_<module_with_underscores>.lora_down.weight` / `lora_up.weight` /
  `alpha`, and `lora_te_text_model_...` for the text encoder; the change is alpha/rank * up @ down.

Targets are every attention projection of the UNet (to_q, to_k, to_v, to_out.0) and of the
text encoder (q_proj, k_proj, v_proj, out_proj), with shapes read from the pipeline, so the same
builders serve the tiny test model and the mid-size benchmark model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

UNET_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass(frozen=True)
class LoraTarget:
    component: str  # "unet", "text_encoder" or (SDXL) "text_encoder_2"
    module: str  # its name inside the component, as the flattened transformers 5 model has it
    in_features: int
    out_features: int


@dataclass(frozen=True)
class LoraSpec:
    seed: int = 0
    rank: int = 4
    std: float = 0.3  # large enough that a 2-step image visibly changes
    unet: bool = True
    text_encoder: bool = True
    text_encoder_2: bool = True  # SDXL's second text encoder, where the pipeline has one
    alphas: tuple[float, ...] = (2.0, 4.0)  # kohya only: cycled over the modules
    dtype: torch.dtype = torch.float32  # as saved; published LoRAs are mostly float16


@dataclass(frozen=True)
class LoraPair:
    """One module's random factors: the change is `scale * up @ down`."""

    target: LoraTarget
    down: torch.Tensor  # (rank, in)
    up: torch.Tensor  # (out, rank)
    alpha: float


def lora_targets(pipe: StableDiffusionPipeline, spec: LoraSpec) -> list[LoraTarget]:
    targets: list[LoraTarget] = []
    if spec.unet:
        targets += _linear_targets(pipe.unet, "unet", UNET_PROJECTIONS)
    if spec.text_encoder:
        targets += _linear_targets(pipe.text_encoder, "text_encoder", TEXT_PROJECTIONS)
    second = getattr(pipe, "text_encoder_2", None)
    if spec.text_encoder_2 and second is not None:
        targets += _linear_targets(second, "text_encoder_2", TEXT_PROJECTIONS)
    return targets


def _linear_targets(
    model: torch.nn.Module, component: str, suffixes: tuple[str, ...]
) -> list[LoraTarget]:
    targets = []
    for name, module in model.named_modules():
        linear = getattr(module, "base_layer", module)  # a module that already holds a LoRA
        if isinstance(linear, torch.nn.Linear) and name.endswith(suffixes) and "attn" in name:
            targets.append(LoraTarget(component, name, linear.in_features, linear.out_features))
    return targets


def random_pairs(pipe: StableDiffusionPipeline, spec: LoraSpec) -> list[LoraPair]:
    generator = torch.Generator().manual_seed(spec.seed)
    pairs = []
    for index, target in enumerate(lora_targets(pipe, spec)):
        shape_down = (spec.rank, target.in_features)
        shape_up = (target.out_features, spec.rank)
        down = torch.randn(shape_down, generator=generator) * spec.std
        up = torch.randn(shape_up, generator=generator) * spec.std
        alpha = spec.alphas[index % len(spec.alphas)]
        pairs.append(LoraPair(target, down, up, alpha))
    return pairs


def diffusers_state(pairs: list[LoraPair]) -> dict[str, torch.Tensor]:
    """peft keys; no alphas, so peft's scale is 1 and the change is exactly up @ down."""
    state = {}
    for pair in pairs:
        prefix = _diffusers_prefix(pair.target)
        state[f"{prefix}.lora_A.weight"] = pair.down.contiguous()
        state[f"{prefix}.lora_B.weight"] = pair.up.contiguous()
    return state


def _diffusers_prefix(target: LoraTarget) -> str:
    if target.component.startswith("text_encoder"):
        return f"{target.component}.text_model.{_inside_text_model(target.module)}"
    return f"unet.{target.module}"


def kohya_state(pairs: list[LoraPair]) -> dict[str, torch.Tensor]:
    state = {}
    xl = any(pair.target.component == "text_encoder_2" for pair in pairs)
    for pair in pairs:
        name = kohya_name(pair.target, xl)
        state[f"{name}.lora_down.weight"] = pair.down.contiguous()
        state[f"{name}.lora_up.weight"] = pair.up.contiguous()
        state[f"{name}.alpha"] = torch.tensor(pair.alpha)
    return state


def kohya_name(target: LoraTarget, xl: bool = False) -> str:
    """kohya's names; for SDXL its two text encoders are `lora_te1_` and `lora_te2_`."""
    module = _inside_text_model(target.module).replace(".", "_")
    if target.component == "text_encoder_2":
        return "lora_te2_text_model_" + module
    if target.component == "text_encoder":
        return ("lora_te1_" if xl else "lora_te_") + "text_model_" + module
    return "lora_unet_" + module


def _inside_text_model(module: str) -> str:
    """The module's name under `text_model.`: transformers 5 flattened CLIPTextModel, not
    CLIPTextModelWithProjection (SDXL's second encoder)."""
    return module.removeprefix("text_model.")


def expected_delta(pair: LoraPair, kohya: bool) -> torch.Tensor:
    """The weight change a LoRA applies to its module at weight 1."""
    scale = pair.alpha / pair.down.shape[0] if kohya else 1.0
    return scale * pair.up @ pair.down


def write_lora(
    pipe: StableDiffusionPipeline,
    path: Path,
    spec: LoraSpec = LoraSpec(),
    kohya: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """`metadata`: the safetensors header's `__metadata__` (diffusers' lora_adapter_metadata)."""
    pairs = random_pairs(pipe, spec)
    state = kohya_state(pairs) if kohya else diffusers_state(pairs)
    state = {key: tensor.to(spec.dtype) for key, tensor in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def write_not_a_lora(path: Path, seed: int = 0) -> Path:
    """A valid safetensors file whose tensors are no LoRA at all."""
    generator = torch.Generator().manual_seed(seed)
    state = {"model.weight": torch.randn((8, 8), generator=generator)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_foreign_lora(path: Path, seed: int = 0) -> Path:
    """A LoRA for another architecture: peft keys naming modules this UNet does not have."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        "unet.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(
            (4, 3072), generator=generator
        ),
        "unet.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(
            (3072, 4), generator=generator
        ),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_wrong_size_lora(pipe: StableDiffusionPipeline, path: Path, seed: int = 0) -> Path:
    """A LoRA whose UNet layers fit and whose text-encoder layers are too wide: a LoRA for a
    model with a wider text encoder, which would otherwise load the UNet half and then fail."""
    pairs = []
    for pair in random_pairs(pipe, LoraSpec(seed=seed)):
        if pair.target.component == "text_encoder":
            rank = pair.down.shape[0]
            down = torch.zeros((rank, pair.target.in_features + 32))
            pair = LoraPair(
                pair.target, down, torch.zeros((pair.target.out_features + 32, rank)), 1
            )
        pairs.append(pair)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(diffusers_state(pairs), str(path))
    return path
