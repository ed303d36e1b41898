"""Reading single-file checkpoints in the original Stable Diffusion (A1111) layout.

A checkpoint's family is told by its text encoder's keys; its sizes by the shapes of its own
tensors, so fine-tunes with other widths (and the tiny test models) get matching configs.
A `.safetensors` file's keys and shapes come from its header, without torch and without
reading a tensor; torch is imported only to read the tensors (and a `.ckpt`, a pickle).
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from pipeline.errors import ModelLoadError, first_line
from pipeline.families import SD1, SD2, SDXL, ModelFamily

if TYPE_CHECKING:
    import torch

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer.text_model."
OPEN_CLIP = "cond_stage_model.model."
SDXL_MARKER = "conditioner.embedders."
XL_CLIP = "conditioner.embedders.0.transformer.text_model."  # OpenAI CLIP ViT-L
XL_OPEN_CLIP = "conditioner.embedders.1.model."  # OpenCLIP ViT-bigG, with its projection
XL_LABEL_EMBEDDING = UNET + "label_emb.0.0.weight"  # the pooled text and size conditioning
HEAD_WIDTH = 64  # CLIP and SD 2.x attention heads are 64 wide

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class CheckpointFile:
    """The tensors of one checkpoint file, with their shapes for cheap inspection."""

    path: Path
    tensors: dict[str, torch.Tensor]

    @property
    def shapes(self) -> Shapes:
        return {key: tuple(value.shape) for key, value in self.tensors.items()}


def read_shapes(path: Path) -> Shapes:
    """Tensor shapes without loading the weights (safetensors: the header, checked against the
    file's size, and no torch); .ckpt files are read whole."""
    if path.suffix == ".safetensors":
        try:
            # numpy rather than torch: the shapes are the same, and torch stays unimported.
            with safe_open(str(path), framework="numpy") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as error:
            raise _corrupt(path, error) from error
    return read_checkpoint(path).shapes


def read_checkpoint(path: Path) -> CheckpointFile:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            tensors = _read_ckpt(path)
    except ModelLoadError:
        raise
    except Exception as error:  # torch and safetensors raise many kinds for a damaged file
        raise _corrupt(path, error) from error
    return CheckpointFile(path=path, tensors=tensors)


def _read_ckpt(path: Path) -> dict[str, torch.Tensor]:
    import torch

    mmap = zipfile.is_zipfile(path)
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(
            f"{path} holds pickled Python objects besides its tensors, which Easel does not "
            "unpickle because they can run code. Convert it to .safetensors "
            f"({first_line(error)})."
        ) from error
    while isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"{path} holds no state dict; expected a Stable Diffusion checkpoint.")
    return {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def _corrupt(path: Path, error: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{path} could not be read as a checkpoint ({type(error).__name__}); the file may be "
        "incomplete or corrupt. Expected a .safetensors or .ckpt Stable Diffusion checkpoint."
    )


INPAINTING_CHANNELS = 9  # the latents, the mask and the masked image's latents


def check_unet_inputs(in_channels: int, where: str) -> None:
    """Text-to-image (4) and inpainting (9) UNets; depth (5) and instruct-pix2pix (8) UNets
    need inputs Easel cannot give."""
    if in_channels not in (4, INPAINTING_CHANNELS):
        raise ModelLoadError(
            f"{where} is a depth or instruct-pix2pix model ({in_channels} UNet input "
            "channels); Easel runs text-to-image checkpoints (4) and inpainting ones (9)."
        )


def detect_family(shapes: Shapes, path: Path) -> ModelFamily:
    if any(key.startswith(SDXL_MARKER) for key in shapes):
        return _xl_family(shapes, path)
    if not any(key.startswith(UNET) for key in shapes):
        raise ModelLoadError(
            f"{path} has no Stable Diffusion UNet (no model.diffusion_model.* tensors). "
            "If it is a LoRA, put it in models/lora; if it is a VAE or an upscaler, it does "
            "not belong in models/stable-diffusion."
        )
    check_unet_inputs(shapes.get(UNET + "input_blocks.0.0.weight", (0, 4))[1], str(path))
    if any(key.startswith(OPEN_CLIP + "transformer.resblocks.") for key in shapes):
        return SD2
    if any(key.startswith(CLIP) for key in shapes):
        return SD1
    raise ModelLoadError(
        f"{path} has a UNet but no CLIP text encoder (cond_stage_model.*); expected a full "
        "SD 1.x or SD 2.x checkpoint."
    )


def _xl_family(shapes: Shapes, path: Path) -> ModelFamily:
    has_both = any(key.startswith(XL_CLIP) for key in shapes) and any(
        key.startswith(XL_OPEN_CLIP) for key in shapes
    )
    if not has_both or XL_LABEL_EMBEDDING not in shapes:
        raise ModelLoadError(
            f"{path} is an SDXL refiner (one text encoder, an aesthetic score) or an incomplete "
            "SDXL checkpoint; Easel runs SDXL base checkpoints and their fine-tunes."
        )
    check_unet_inputs(shapes.get(UNET + "input_blocks.0.0.weight", (0, 4))[1], str(path))
    return SDXL


def is_v_prediction(path: Path) -> bool:
    """SD 2.x only: v-prediction (768) unless a sidecar .yaml or the file name says otherwise.

    The tensors cannot tell the two apart. A1111 reads `parameterization: "v"` from a `.yaml`
    beside the checkpoint; without one, names such as `v2-1_512-ema-pruned` or `*-base` mark
    the 512-pixel epsilon models and everything else is taken to be a 768-v model.
    """
    sidecar = path.with_suffix(".yaml")
    if sidecar.is_file():
        return (
            re.search(r"parameterization:\s*['\"]?v['\"]?\s*$", sidecar.read_text(), re.M)
            is not None
        )
    stem = path.stem.lower()
    return not ("512" in stem or "base" in stem)


def _count(shapes: Shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({match.group(1) for key in shapes if (match := regex.match(key))})


def unet_config(shapes: Shapes, family: ModelFamily, template: dict) -> dict:
    config = copy.deepcopy(template)
    conv_in = shapes[UNET + "input_blocks.0.0.weight"]
    config["in_channels"] = conv_in[1]
    config["out_channels"] = shapes[UNET + "out.2.weight"][0]
    levels: list[list[bool]] = [[]]
    channels: list[int] = []
    block = 1
    while any(key.startswith(f"{UNET}input_blocks.{block}.") for key in shapes):
        prefix = f"{UNET}input_blocks.{block}."
        if prefix + "0.op.weight" in shapes:
            levels.append([])
        else:
            if not levels[-1]:
                channels.append(shapes[prefix + "0.out_layers.3.weight"][0])
            levels[-1].append(any(key.startswith(prefix + "1.") for key in shapes))
        block += 1
    config["block_out_channels"] = channels
    config["layers_per_block"] = len(levels[0])
    down = ["CrossAttnDownBlock2D" if any(level) else "DownBlock2D" for level in levels]
    config["down_block_types"] = down
    config["up_block_types"] = [name.replace("Down", "Up") for name in reversed(down)]
    attention = [key for key in shapes if key.startswith(UNET) and "attn2.to_k.weight" in key]
    if attention:
        config["cross_attention_dim"] = shapes[attention[0]][1]
        proj_in = next(key for key in shapes if key.startswith(UNET) and "proj_in.weight" in key)
        config["use_linear_projection"] = len(shapes[proj_in]) == 2
    if family is SD2 or family is SDXL:
        config["attention_head_dim"] = [max(1, c // HEAD_WIDTH) for c in channels]
    if family is SDXL:
        config.update(_xl_unet_extras(shapes, len(channels), config["layers_per_block"]))
    return config


def _xl_unet_extras(shapes: Shapes, levels: int, layers: int) -> dict:
    """SDXL's transformer depth per level and its pooled-text-and-size embedding's widths.
    Input block 0 is conv_in; each level then has `layers` blocks and a downsampler."""
    depths = []
    for level in range(levels):
        first_block = 1 + level * (layers + 1)
        prefix = re.escape(f"{UNET}input_blocks.{first_block}.1.transformer_blocks.")
        depths.append(max(1, _count(shapes, prefix + r"(\d+)\.")))  # 1 where it has none
    inputs = shapes[XL_LABEL_EMBEDDING][1]
    pooled = shapes[XL_OPEN_CLIP + "text_projection"][1]
    return {
        "transformer_layers_per_block": depths,
        "projection_class_embeddings_input_dim": inputs,
        "addition_time_embed_dim": (inputs - pooled) // 6,  # six size and crop numbers
    }


def vae_config(shapes: Shapes, template: dict) -> dict:
    config = copy.deepcopy(template)
    levels = _count(shapes, re.escape(VAE) + r"encoder\.down\.(\d+)\.")
    config["block_out_channels"] = [
        shapes[f"{VAE}encoder.down.{level}.block.0.conv2.weight"][0] for level in range(levels)
    ]
    config["down_block_types"] = ["DownEncoderBlock2D"] * levels
    config["up_block_types"] = ["UpDecoderBlock2D"] * levels
    config["layers_per_block"] = _count(
        shapes, re.escape(VAE) + r"encoder\.down\.0\.block\.(\d+)\."
    )
    config["in_channels"] = shapes[VAE + "encoder.conv_in.weight"][1]
    config["latent_channels"] = shapes[VAE + "decoder.conv_in.weight"][1]
    return config


def text_encoder_config(
    shapes: Shapes, family: ModelFamily, template: dict, second: bool = False
) -> dict:
    """The text encoder's config; `second`: SDXL's second (OpenCLIP) encoder."""
    config = copy.deepcopy(template)
    if family is SD2 or second:
        prefix = XL_OPEN_CLIP if second else OPEN_CLIP
        vocab, width = shapes[prefix + "token_embedding.weight"]
        positions = shapes[prefix + "positional_embedding"][0]
        layers = _count(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
        # SD 2.x conditions on OpenCLIP's penultimate layer, so the last block goes unused;
        # SDXL's pooled embedding is read after the last one.
        layers -= 0 if second else 1
        inner = shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
        projection = shapes.get(prefix + "text_projection", (width, width))[1]
    else:
        prefix = XL_CLIP if family is SDXL else CLIP
        vocab, width = shapes[prefix + "embeddings.token_embedding.weight"]
        positions = shapes[prefix + "embeddings.position_embedding.weight"][0]
        layers = _count(shapes, re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
        inner = shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0]
        projection = width
    config.update(
        vocab_size=vocab,
        hidden_size=width,
        max_position_embeddings=positions,
        num_hidden_layers=layers,
        intermediate_size=inner,
        num_attention_heads=max(1, width // HEAD_WIDTH),
        projection_dim=projection,
    )
    return config


def shipped_config(family: ModelFamily, part: str, name: str = "config.json") -> dict:
    """A config of the family's shipped diffusers folder (pipeline/configs/), by its path."""
    folder = resources.files("pipeline.configs").joinpath(family.config_folder)
    return json.loads(folder.joinpath(part, name).read_text())


def single_file_configs(shapes: Shapes, family: ModelFamily, v_prediction: bool) -> dict[str, dict]:
    """The diffusers configs of this checkpoint, by their path in a diffusers folder: the
    family's shipped ones with the sizes read off the checkpoint's shapes."""
    unet = unet_config(shapes, family, shipped_config(family, "unet"))
    vae = vae_config(shapes, shipped_config(family, "vae"))
    text = text_encoder_config(shapes, family, shipped_config(family, "text_encoder"))
    scheduler = shipped_config(family, "scheduler", "scheduler_config.json")
    if family is SD2:
        scheduler["prediction_type"] = "v_prediction" if v_prediction else "epsilon"
        unet["sample_size"] = 96 if v_prediction else 64
        vae["sample_size"] = unet["sample_size"] * 8
    configs = {
        "unet/config.json": unet,
        "vae/config.json": vae,
        "text_encoder/config.json": text,
        "scheduler/scheduler_config.json": scheduler,
        "model_index.json": shipped_config(family, "", "model_index.json"),
    }
    if family is SDXL:
        template = shipped_config(family, "text_encoder_2")
        configs["text_encoder_2/config.json"] = text_encoder_config(shapes, family, template, True)
    return configs


def write_config_folder(
    shapes: Shapes, family: ModelFamily, v_prediction: bool, destination: Path
) -> Path:
    """A diffusers-layout config folder for this checkpoint (no weights or tokenizer)."""
    parts = single_file_configs(shapes, family, v_prediction)
    for name, content in parts.items():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(content, indent=2))
    return destination
