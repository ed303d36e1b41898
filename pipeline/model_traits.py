"""A checkpoint's ModelTraits (pipeline/preparation.py) read from its files, never its weights.

- a diffusers folder: model_index.json, the unet, vae, text encoder and scheduler configs, and
  the tokenizer folder (a copy with every weight file removed gives the same traits);
- an A1111 single file: the keys and shapes in a `.safetensors` header (no tensor is read)
  turned into the family's shipped configs, as the loader does, and the shipped tokenizer;
- a Hugging Face repo: its folder in this machine's hub cache, read as a diffusers folder.
  Nothing is downloaded: a repo whose files are not cached is a ModelLoadError that says so.

Each value is read the way loading the pipeline reads it (pipeline/loading.py), so a job is
checked against the same numbers as on the GPU workers. No torch, no diffusers; transformers
is imported for the tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.checkpoint_names import ModelSource, SourceKind, family_from_configs
from pipeline.checkpoints import (
    INPAINTING_CHANNELS,
    detect_family,
    is_v_prediction,
    read_shapes,
    single_file_configs,
)
from pipeline.errors import ModelLoadError, first_line
from pipeline.families import SD2, ModelFamily
from pipeline.preparation import ModelTraits
from pipeline.tokenizer import build_clip_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

INDEX = "model_index.json"
UNET = "unet/config.json"
VAE = "vae/config.json"
TEXT_ENCODER = "text_encoder/config.json"
SCHEDULER = "scheduler/scheduler_config.json"
# Every file the traits are read from, besides the tokenizer folder.
CONFIG_FILES = (INDEX, UNET, VAE, TEXT_ENCODER, SCHEDULER)

Configs = Mapping[str, dict[str, Any]]


def read_model_traits(source: ModelSource) -> ModelTraits:
    """The traits of the checkpoint at `source`; a ModelLoadError says what is missing."""
    if source.kind is SourceKind.SINGLE_FILE:
        return single_file_traits(Path(source.location))
    if source.kind is SourceKind.HUB:
        return folder_traits(hub_cache_folder(source.location))
    return folder_traits(Path(source.location))


def folder_traits(folder: Path) -> ModelTraits:
    """A diffusers folder's traits, from its configs and its tokenizer."""
    configs = _read_configs(folder)
    index = configs[INDEX]
    family = family_from_configs(index, configs[TEXT_ENCODER], configs[UNET], str(folder))
    # The pipeline loads each part as the class model_index.json names for it.
    scheduler_class = _component(index, "scheduler", folder)[1]
    return _traits(family, configs, scheduler_class, _folder_tokenizer(folder, index), folder)


def single_file_traits(path: Path) -> ModelTraits:
    """An A1111 single file's traits, from its header: the configs the loader writes for it."""
    shapes = read_shapes(path)
    family = detect_family(shapes, path)
    v_prediction = family is SD2 and is_v_prediction(path)
    configs = single_file_configs(shapes, family, v_prediction)
    # The loader builds the scheduler named in that config, and the family's own tokenizer.
    scheduler_class = str(configs[SCHEDULER]["_class_name"])
    tokenizer = build_clip_tokenizer(family.pad_token)
    return _traits(family, configs, scheduler_class, tokenizer, path)


def hub_cache_folder(repo_id: str) -> Path:
    """The repo's folder in this machine's Hugging Face cache; never a download."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"{repo_id} is a Hugging Face repo whose files are not in this machine's hub cache "
            "(nothing is downloaded to check a job). Put the checkpoint in the models folder, "
            f"or fetch its configs and tokenizer into the cache ({first_line(error)})."
        ) from error


def _traits(
    family: ModelFamily,
    configs: Configs,
    scheduler_class: str,
    tokenizer: PreTrainedTokenizerBase,
    where: Path,
) -> ModelTraits:
    unet, vae, text = configs[UNET], configs[VAE], configs[TEXT_ENCODER]
    try:
        # LoadedModel.native_size: the UNet's sample size in latents, times the VAE's scale
        # factor (2 ** (levels - 1), as diffusers' Stable Diffusion pipelines compute it).
        native_size = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        layers = int(text["num_hidden_layers"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(
            f"{where}: a config lacks what Easel reads from it ({type(error).__name__}: "
            f"{first_line(error)})."
        ) from error
    scheduler = configs[SCHEDULER]
    return ModelTraits(
        family=family,
        native_size=native_size,
        max_clip_skip=layers,
        embeds_guidance=unet.get("time_cond_proj_dim") is not None,
        tokenizer=tokenizer,
        text_width=int(unet.get("cross_attention_dim", 768)),
        inpainting=unet.get("in_channels") == INPAINTING_CHANNELS,
        scheduler_config=cache(partial(_loaded_scheduler_config, scheduler_class, scheduler)),
    )


def _loaded_scheduler_config(class_name: str, config: Mapping[str, Any]) -> Mapping[str, Any]:
    from pipeline.samplers import scheduler_config_from_file  # diffusers: when a job is checked

    return scheduler_config_from_file(class_name, config)


def _read_configs(folder: Path) -> dict[str, dict[str, Any]]:
    configs: dict[str, dict[str, Any]] = {}
    for name in CONFIG_FILES:
        try:
            configs[name] = json.loads((folder / name).read_text())
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"{folder} is not a complete diffusers model folder ({first_line(error)}); "
                f"expected {', '.join(CONFIG_FILES)} and tokenizer/."
            ) from error
    return configs


def _component(index: Mapping[str, Any], part: str, folder: Path) -> tuple[str, str]:
    """The (library, class name) model_index.json gives for one part of the pipeline."""
    entry = index.get(part)
    if not isinstance(entry, list | tuple) or len(entry) != 2 or not all(entry):
        raise ModelLoadError(f"{folder / INDEX} names no {part} class.")
    return str(entry[0]), str(entry[1])


def _folder_tokenizer(folder: Path, index: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    """The tokenizer the pipeline loads: model_index.json's class, from tokenizer/."""
    import transformers

    library, name = _component(index, "tokenizer", folder)
    tokenizer_class = getattr(transformers, name, None) if library == "transformers" else None
    if tokenizer_class is None:
        raise ModelLoadError(f"{folder / INDEX} names a tokenizer Easel cannot read: {name}.")
    where = folder / "tokenizer"
    if not where.is_dir():  # else transformers would take the path for a repo id
        raise ModelLoadError(f"{folder} has no tokenizer/ folder.")
    try:
        return tokenizer_class.from_pretrained(str(where), local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise ModelLoadError(
            f"{where} could not be read as a tokenizer: {first_line(error)}"
        ) from error
