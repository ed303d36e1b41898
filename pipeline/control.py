"""ControlNet in the engine: loading models from models/ControlNet, and the residuals each UNet
call adds.

The engine keeps diffusers' plain pipelines and runs the ControlNet inside the UNet wrapper
(pipeline/guidance.py), so batching, AND, prompt editing and per-job CFG work as without it.
A1111's settings, as its ControlNet extension applies them:
- weight: every residual scaled by it;
- guidance start and end: the residuals are added only while the share of steps done is
  between them;
- control mode: "Balanced" adds the residuals to every row; "My prompt is more important"
  scales the residuals down towards the shallow layers (0.825 per layer from the deepest);
  "ControlNet is more important" does that and adds them to the positive rows only, so CFG
  pushes towards the control.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.control_maps import control_map
from pipeline.control_names import ControlNetFile, find_controlnets, short_hash
from pipeline.errors import ModelLoadError, first_line
from pipeline.request import ControlMode, ControlUse

log = logging.getLogger(__name__)

SOFT_INJECTION = 0.825  # A1111's per-layer factor in the two non-balanced modes
LDM_PREFIX = "control_model."


@dataclass(frozen=True)
class ControlPass:
    """One ControlNet for one pass of a batch: the model, its map at the pass's size."""

    model: Any  # diffusers' ControlNetModel
    hint: torch.Tensor  # (1, 3, height, width), 0 to 1, on the model's device and dtype
    use: ControlUse

    @property
    def reads_row_kinds(self) -> bool:
        """Whether it must know the negative prompt's rows ("ControlNet is more important")."""
        return self.use.mode is ControlMode.CONTROL

    def active(self, done: int, steps: int) -> bool:
        """A1111's guidance window: off before `guidance_start` and after `guidance_end`."""
        share = done / steps if steps else 0.0
        return self.use.guidance_start <= share <= self.use.guidance_end

    def residuals(
        self,
        sample: torch.Tensor,
        timesteps: Any,
        text: torch.Tensor,
        arguments: dict[str, Any],
        negative_rows: torch.Tensor | None,
    ) -> dict[str, Any]:
        """The UNet's extra arguments for these rows; `negative_rows` (rows,) is 1 where a row
        is a negative prompt's (given when `reads_row_kinds`)."""
        rows = sample.shape[0]
        channels = self.model.config.in_channels
        balanced = self.use.mode is ControlMode.BALANCED
        down, mid = self.model(
            sample[:, :channels],
            timesteps,
            encoder_hidden_states=text,
            controlnet_cond=self.hint.expand(rows, -1, -1, -1),
            conditioning_scale=self.use.weight if balanced else 1.0,
            added_cond_kwargs=arguments.get("added_cond_kwargs"),
            return_dict=False,
        )
        if not balanced:
            down, mid = self._soft_injection(list(down), mid, negative_rows)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def _soft_injection(
        self, down: list[torch.Tensor], mid: torch.Tensor, negative_rows: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The two non-balanced modes: each layer weakened towards the shallow ones, and in
        "ControlNet is more important" nothing added to the negative prompt's rows."""
        scales = self._layer_scales(len(down) + 1)
        if negative_rows is not None:
            keep = (1 - negative_rows).to(mid.dtype).view(-1, 1, 1, 1)
            down = [
                residual * (scale * keep) for residual, scale in zip(down, scales, strict=False)
            ]
            return down, mid * (scales[-1] * keep)
        down = [residual * scale for residual, scale in zip(down, scales, strict=False)]
        return down, mid * scales[-1]

    def _layer_scales(self, count: int) -> list[float]:
        weight = self.use.weight
        return [weight * SOFT_INJECTION ** (count - 1 - index) for index in range(count)]


def hint_tensor(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).to(device, dtype)


class ControlNets:
    """The ControlNet models that fit one checkpoint, one resident at a time (the last used),
    and the control pass of a batch: its model and its map at the pass's size."""

    def __init__(self, unet: Any, models_dir: Path) -> None:
        self.unet = unet
        self.models_dir = models_dir
        self._lock = threading.Lock()
        self._resident: tuple[Path, Any] | None = None

    def control_pass(
        self, use: ControlUse, image: Image.Image, size: tuple[int, int]
    ) -> tuple[ControlPass, Image.Image]:
        """The pass's ControlNet and its map (the map is what `--cn-show` sends back)."""
        model = self.model(use.model)
        mapped = control_map(image, use.preprocessor, size, self.models_dir)
        hint = hint_tensor(mapped, self.unet.device, self.unet.dtype)
        return ControlPass(model=model, hint=hint, use=use), mapped

    def model(self, name: str) -> Any:
        file = self._file(name)
        with self._lock:
            if self._resident is not None and self._resident[0] == file.path:
                return self._resident[1]
            self._resident = None  # one in memory at a time
            model = load_controlnet(file, self.unet)
            self._resident = (file.path, model)
            return model

    def short_hash(self, name: str) -> str | None:
        return short_hash(self._file(name))

    def _file(self, name: str) -> ControlNetFile:
        for file in find_controlnets(self.models_dir):
            if file.name.lower() == name.lower():
                return file
        raise ModelLoadError(f"The ControlNet {name} is gone from the models folder.")


def load_controlnet(file: ControlNetFile, unet: Any) -> Any:
    """A ControlNet on the UNet's device and dtype, refused when it does not fit the UNet."""
    from diffusers import ControlNetModel

    try:
        if file.is_folder:
            model = ControlNetModel.from_pretrained(file.path, torch_dtype=unet.dtype)
        else:
            model = _from_single_file(file.path, unet).to(dtype=unet.dtype)
    except ModelLoadError:
        raise
    except Exception as error:
        raise ModelLoadError(
            f"The ControlNet {file.name} could not be loaded: {first_line(error)}"
        ) from error
    if not _fits(model.config, unet.config):
        raise ModelLoadError(
            f"The ControlNet {file.name} does not fit the loaded checkpoint (it was made for "
            "another model family)."
        )
    log.info("Loaded the ControlNet %s", file.name)
    return model.to(unet.device).eval()


def _from_single_file(path: Path, unet: Any) -> Any:
    """A single-file ControlNet (A1111's `control_model.` keys or diffusers' own), shaped as
    the checkpoint's UNet, as A1111's are."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    state = _read_state(path)
    model = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    if any(key.startswith(LDM_PREFIX) or key.startswith("input_blocks.") for key in state):
        state = convert_controlnet_checkpoint(state, dict(model.config))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of another shape
        raise ModelLoadError(
            f"The ControlNet {path.stem} does not fit the loaded checkpoint (it was made for "
            "another model family)."
        ) from error
    if missing or unexpected:
        raise ModelLoadError(
            f"The ControlNet {path.stem} does not fit the loaded checkpoint: "
            f"{len(missing)} weights missing, {len(unexpected)} unknown."
        )
    return model


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    return loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded


def _fits(control: Any, unet: Any) -> bool:
    return control.cross_attention_dim == unet.cross_attention_dim and tuple(
        control.block_out_channels
    ) == tuple(unet.block_out_channels)
