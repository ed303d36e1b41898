"""LoRA files: finding them by name, A1111's short hash, and making a job's LoRAs active.

`LoraManager.activate` loads LoRAs into the one shared pipeline as peft adapters (diffusers'
`load_lora_weights`), keeps a few resident and switches between them with `set_adapters`, so a
job that reuses a LoRA pays nothing to load it. The file's tensors stay cached in memory after an
adapter is evicted, so loading it again never reads the disk.

What the installed diffusers 0.42 / peft 0.21 / transformers 5 do, and what is done here about it:
- kohya / A1111 files (`lora_unet_*`, `lora_te_*` with `.alpha`) are converted by diffusers, but
  their per-layer alphas are turned into peft `alpha_pattern` keys that match no layer (UNet keys
  keep `processor.to_q_lora.down.weight`, text-encoder keys are cut to `...self_attn` and keep
  `text_model.`). peft warns and ignores them, so every layer gets the most common alpha. Each
  layer's alpha/rank is therefore baked into its `lora_down` weight before conversion.
- transformers 5's CLIPTextModel has no `text_model` level; diffusers 0.42 strips `text_model.`
  from the state dict itself, and it is stripped here too, so the fit check below sees the
  layer names the model has.
- A state dict passed in memory loses the `lora_adapter_metadata` (lora_alpha, alpha_pattern)
  diffusers writes into the files it saves; that scale is baked into `lora_A` as well.
- A LoRA whose UNet part loads and whose text-encoder part fails stays half-loaded; every layer is
  checked against the model before loading, and a failed load is undone with `delete_adapters`.
- An adapter name that is an attribute of torch modules ("half", "float"...) breaks loading, so
  adapters are named `lora<n>_<stem>`, never the bare file name.

Fusing: a LoRA set is merged into the layers' weights from its first batch on (peft's `merge`,
which diffusers' `fuse_lora` calls too), so its jobs run the plain layers with no LoRA matmuls.
Unmerging (`W + BA - BA`) is not exact in floating point, so before merging, the weight (and
bias) of every layer the set touches is copied to the CPU, and unfusing copies them back bit for
bit: no LoRA, or weight 0, still gives exactly the plain model's image after a fuse/unfuse
cycle. The copy costs CPU memory for those layers only, none on the GPU: in float16, about 190
MiB for SD 1.5's UNet attention projections, up to about 650 MiB for a LoRA that also covers the
feed-forward layers and the text encoder. A fused image differs from the same job run unfused by
rounding only: `x(W + BA)` is not summed in the same order as `xW + (xA)B`. That is why a set is
fused from its first batch rather than once it has been in use a while: a job's image then never
depends on which batches ran before it (a seed gives its image), at the cost of one fuse per
change of set. While fused, nothing may call `set_adapters` / `disable_lora`
(peft would unmerge inexactly), so `activate` unfuses first whenever the set changes.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.state_dict_utils import (
    StateDictType,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import get_pattern_key
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from pipeline.errors import InvalidRequestError, ModelLoadError, first_line
from pipeline.lora_names import (  # names and hashes need no torch; kept importable from here
    HASH_DIGITS,
    ActiveLora,
    ActiveLoras,
    FileStamp,
    LoraFile,
    LoraFolder,
    find_loras,
    lookup_lora,
    lora_hash,
    lora_set,
    requested_loras,
    unknown_lora,
)
from pipeline.request import LoraUse  # what a job asks for

__all__ = [
    "HASH_DIGITS",
    "ActiveLora",
    "ActiveLoras",
    "FileStamp",
    "LoraFile",
    "LoraManager",
    "LoraUse",
    "find_loras",
    "lookup_lora",
    "lora_hash",
    "lora_set",
    "requested_loras",
    "unknown_lora",
]

log = logging.getLogger(__name__)


DEFAULT_CACHE_BYTES = 2 << 30  # in-memory copies of LoRA files, for adapters evicted and reloaded
# A LoRA set activated this many times in a row is fused into the weights from the next
# activation on. 0: from its first batch, so that fused and unfused images (which differ by
# rounding) never mix for one set; fusing costs about one extra pass over the LoRA weights.
FUSE_AFTER_BATCHES = 0
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")  # the last: SDXL's second encoder
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_LYCORIS_MARKERS = ("hada_w", "lokr_w", "lora_mid", ".oft_")
_FACTOR = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_magnitude_vector)(?P<tail>\.\w+)?$"
)
# Loggers that print a page per load (transformers' load report, "no keys for the text encoder").
_NOISY_LOGGERS = (
    "transformers.integrations.peft",
    "diffusers.loaders.lora_base",
    "diffusers.loaders.peft",
    "diffusers.utils.peft_utils",
)

StateDict = dict[str, torch.Tensor]


# ----- reading and converting files


@dataclass(frozen=True)
class LoraContents:
    tensors: StateDict
    adapter_metadata: str | None  # diffusers' `lora_adapter_metadata` JSON, when the file has it


def read_lora_file(path: Path) -> LoraContents:
    """A LoRA file's tensors, on the CPU."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                metadata = (handle.metadata() or {}).get("lora_adapter_metadata")
            return LoraContents(load_file(str(path)), metadata)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, SafetensorError, RuntimeError, ValueError) as error:
        raise ModelLoadError(
            f"LoRA file {path.name} cannot be read: {first_line(error)}"
        ) from error
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise ModelLoadError(f"LoRA file {path.name} does not hold a plain dictionary of tensors.")
    return LoraContents(loaded, None)


def to_peft_state(contents: LoraContents, pipe: StableDiffusionPipeline, path: Path) -> StateDict:
    """`unet.<layer>.lora_A.weight`-style keys with every scale baked into `lora_A`, ready for
    `load_lora_weights`, or ModelLoadError when the file is no LoRA for this pipeline."""
    raw = contents.tensors
    xl = _is_xl(pipe)
    _refuse_unsupported(raw, path, xl)
    if all(key.startswith(_KOHYA_PREFIXES) for key in raw):
        state = _from_kohya(raw, path, pipe)
    else:
        state = _bake_metadata_scale(_bake_alphas(raw), contents.adapter_metadata)
    state = _split_and_convert(state)
    for encoder in ("text_encoder", "text_encoder_2"):
        if not hasattr(getattr(pipe, encoder, None), "text_model"):
            state = {
                key.replace(f"{encoder}.text_model.", f"{encoder}.", 1): v
                for key, v in state.items()
            }
    dtype = pipe.unet.dtype
    state = {key: v.to(dtype) if v.is_floating_point() else v for key, v in state.items()}
    check_fits(state, pipe, path)
    return state


def _is_xl(pipe: StableDiffusionPipeline) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def _components(pipe: StableDiffusionPipeline) -> list[torch.nn.Module]:
    return [getattr(pipe, part) for part in COMPONENTS if getattr(pipe, part, None) is not None]


def _refuse_unsupported(raw: StateDict, path: Path, xl: bool) -> None:
    if not raw:
        raise ModelLoadError(f"LoRA file {path.name} holds no tensors.")
    if not any("lora" in key for key in raw):
        raise ModelLoadError(
            f"{path.name} is not a LoRA: none of its {len(raw)} tensors is a LoRA layer "
            f"(e.g. {next(iter(raw))!r}). Put checkpoints in models/stable-diffusion."
        )
    if any(marker in key for key in raw for marker in _LYCORIS_MARKERS):
        raise ModelLoadError(
            f"{path.name} is a LyCORIS network (LoHa, LoKr, ...), which Easel cannot apply; "
            "plain LoRA and LoCon files work."
        )
    if not xl and any(key.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for key in raw):
        raise ModelLoadError(f"{path.name} is an SDXL LoRA; this model is SD 1.x/2.x.")


def _bake_alphas(raw: StateDict) -> StateDict:
    """Scale each `lora_down`/`lora_A` by its layer's alpha/rank and drop the alphas, so that
    peft's own scale is 1 (kohya: a missing alpha means alpha = rank)."""
    state = {}
    for key, tensor in raw.items():
        if key.endswith(".alpha"):
            continue
        for suffix in (".lora_down.weight", ".lora_A.weight"):
            alpha = raw.get(key.removesuffix(suffix) + ".alpha") if key.endswith(suffix) else None
            if alpha is not None:
                tensor = tensor * (float(alpha) / tensor.shape[0])
        state[key] = tensor
    return state


def _from_kohya(raw: StateDict, path: Path, pipe: StableDiffusionPipeline) -> StateDict:
    """kohya's names to diffusers' with diffusers' own converter (SDXL's `lora_te1_`,
    `lora_te2_` and `input_blocks` names included), the alphas baked in first."""
    try:
        state, _no_alphas = type(pipe).lora_state_dict(
            _bake_alphas(raw), unet_config=pipe.unet.config
        )
    except (ValueError, KeyError) as error:
        raise ModelLoadError(
            f"LoRA file {path.name} has layers Easel cannot map: {first_line(error)}"
        ) from error
    return state


def _bake_metadata_scale(state: StateDict, metadata: str | None) -> StateDict:
    """Apply the lora_alpha / alpha_pattern / use_rslora diffusers saves as file metadata."""
    if not metadata:
        return state
    try:
        config = json.loads(metadata)
    except ValueError:
        return state
    baked = dict(state)
    for key, tensor in state.items():
        component, _, rest = key.partition(".")
        alpha = config.get(f"{component}.lora_alpha")
        if alpha is None or not key.endswith(".lora_A.weight"):
            continue
        module = rest.removesuffix(".lora_A.weight")
        pattern = config.get(f"{component}.alpha_pattern") or {}
        matched = get_pattern_key(list(pattern), module)
        alpha = pattern.get(matched, alpha)
        rank = tensor.shape[0]
        root = math.sqrt(rank) if config.get(f"{component}.use_rslora") else rank
        baked[key] = tensor * (float(alpha) / root)
    return baked


def _split_and_convert(state: StateDict) -> StateDict:
    """diffusers' older spellings (`to_q_lora.down`, `lora_linear_layer`) to peft's, per part.

    Keys with no `unet.` / `text_encoder.` / `text_encoder_2.` prefix are old
    attention-processor files: UNet."""
    unet: StateDict = {}
    texts: dict[str, StateDict] = {"text_encoder": {}, "text_encoder_2": {}}
    for key, tensor in state.items():
        encoder, _, rest = key.partition(".")
        if encoder in texts:
            texts[encoder][rest] = tensor
        else:
            unet[key.removeprefix("unet.")] = tensor
    converted = {f"unet.{k}": v for k, v in convert_unet_state_dict_to_peft(unet).items()}
    for encoder, text in texts.items():
        peft = convert_state_dict_to_peft(text, original_type=StateDictType.DIFFUSERS_OLD)
        converted |= {f"{encoder}.{k}": v for k, v in peft.items()}
    return converted


@dataclass(frozen=True)
class _Layer:
    component: str
    module: str


def check_fits(state: StateDict, pipe: StableDiffusionPipeline, path: Path) -> None:
    """Every LoRA layer must name a layer of this model with matching sizes; a file for another
    family would otherwise load in part, or fail half-way through."""
    factors: dict[_Layer, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        component, _, rest = key.partition(".")
        match = _FACTOR.match(rest)
        if component not in COMPONENTS or match is None:
            raise ModelLoadError(
                f"{path.name} is not a LoRA for this model: unexpected key {key!r}."
            )
        parts = factors.setdefault(_Layer(component, match["module"]), {})
        if match["tail"] in (None, ".weight"):
            parts[match["part"]] = tensor
    misfits = [layer for layer, parts in factors.items() if not _fits(pipe, layer, parts)]
    if misfits:
        example = f"{misfits[0].component}.{misfits[0].module}"
        raise ModelLoadError(
            f"{path.name} does not fit this model: {len(misfits)} of its {len(factors)} layers are "
            f"missing from it or differ in size (e.g. {example}). Is it a LoRA for another "
            "model family (SD 1.x, SD 2.x, SDXL)?"
        )


def _fits(pipe: StableDiffusionPipeline, layer: _Layer, parts: dict[str, torch.Tensor]) -> bool:
    try:
        module = getattr(pipe, layer.component).get_submodule(layer.module)
    except AttributeError:
        return False
    module = getattr(module, "base_layer", module)  # a layer that holds other LoRAs already
    down, up = parts.get("lora_A"), parts.get("lora_B")
    if down is None or up is None:
        return False
    if isinstance(module, torch.nn.Linear):
        sizes = (module.in_features, module.out_features)
    elif isinstance(module, torch.nn.Conv2d):
        sizes = (module.in_channels, module.out_channels)
    else:
        return False
    return down.ndim >= 2 and (down.shape[1], up.shape[0]) == sizes


# ----- the manager


@dataclass(frozen=True)
class LoraMemory:
    adapter_bytes: int  # LoRA weights inside the pipeline, on its device
    cached_bytes: int  # the in-memory copies of files, on the CPU
    total_bytes: int  # both, once per storage: on the CPU peft may keep the cached tensors
    fused_copy_bytes: int = 0  # original weights of the layers a fused set changed, on the CPU


@dataclass
class _Resident:
    file: LoraFile
    stamp: FileStamp
    adapter: str
    components: tuple[str, ...]  # the parts it changes: "unet", "text_encoder"


@dataclass(frozen=True)
class _SavedLayer:
    """A LoRA layer's base weights as they were before a set was merged into them."""

    module: BaseTunerLayer
    weight: torch.Tensor
    bias: torch.Tensor | None


# What makes two activations the same set: each file's version and the weights, in order.
_SetKey = tuple[tuple[FileStamp, float, float], ...]


class _StateCache:
    """Converted state dicts by file, least recently used dropped beyond `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._states: OrderedDict[FileStamp, StateDict] = OrderedDict()

    def get(self, stamp: FileStamp) -> StateDict | None:
        state = self._states.get(stamp)
        if state is not None:
            self._states.move_to_end(stamp)
        return state

    def put(self, stamp: FileStamp, state: StateDict) -> None:
        for old in [key for key in self._states if key.path == stamp.path]:
            del self._states[old]
        self._states[stamp] = state
        while len(self._states) > 1 and self.total_bytes() > self.max_bytes:
            self._states.popitem(last=False)

    def total_bytes(self) -> int:
        return sum(tensor.nbytes for tensor in self)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (tensor for state in self._states.values() for tensor in state.values())


class LoraManager:
    """The LoRAs resident in one pipeline, and which of them the next generation uses.

    Not for concurrent jobs: call `activate` right before the pipeline call it prepares.
    """

    def __init__(
        self,
        pipe: StableDiffusionPipeline,
        models_dir: Path,
        max_resident: int = 4,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if max_resident < 1:
            raise ValueError("max_resident must be at least 1")
        self.pipe = pipe
        self.models_dir = models_dir
        self.max_resident = max_resident
        self._folder = LoraFolder(models_dir)
        self._resident: OrderedDict[Path, _Resident] = OrderedDict()  # least recent first
        self._cache = _StateCache(cache_bytes)
        self._active: list[tuple[_Resident, LoraUse]] = []
        self._names = itertools.count()
        self._lock = threading.Lock()
        self._fused: list[_SavedLayer] | None = None  # set while the active set is merged
        self._streak_key: _SetKey | None = None  # the last activated set
        self._streak = 0  # how many activations in a row it has had
        self._unfusable: _SetKey | None = None  # a set whose fusing failed: not tried again

    def files(self) -> list[LoraFile]:
        return self._folder.files()

    def lookup(self, name: str) -> LoraFile:
        """The file called `name`; the folders are scanned again when it is not known yet."""
        return self._folder.lookup(name)

    def resident(self) -> list[str]:
        """Names of the LoRAs loaded in the pipeline, least recently used first."""
        return [entry.file.name for entry in self._resident.values()]

    def fused(self) -> list[str]:
        """Names of the LoRAs merged into the weights now (empty when none are)."""
        return [] if self._fused is None else _names(self._active)

    def unfuse(self) -> None:
        """Give the layers back their original weights, bit for bit; the active LoRAs stay
        active as adapters."""
        with self._lock:
            self._unfuse()

    def memory(self) -> LoraMemory:
        adapter = {
            parameter.untyped_storage().data_ptr(): parameter.nbytes
            for component in _components(self.pipe)
            for name, parameter in component.named_parameters()
            if ".lora_A." in name or ".lora_B." in name
        }
        cached = {tensor.untyped_storage().data_ptr(): tensor.nbytes for tensor in self._cache}
        return LoraMemory(
            adapter_bytes=sum(adapter.values()),
            cached_bytes=sum(cached.values()),
            total_bytes=sum((adapter | cached).values()),
            fused_copy_bytes=sum(
                layer.weight.nbytes + (layer.bias.nbytes if layer.bias is not None else 0)
                for layer in self._fused or ()
            ),
        )

    def activate(self, uses: Sequence[LoraUse]) -> ActiveLoras:
        """Make exactly these LoRAs active, with these weights, for the next pipeline call.

        No uses (or only zero weights) disables LoRA: the output is exactly the plain model's.
        The set is fused into the weights (`FUSE_AFTER_BATCHES`); a different set unfuses it
        first, exactly.
        Raises InvalidRequestError (unknown name, too many) or ModelLoadError (a bad file); then
        the LoRAs active before stay active with their weights (files are read and checked
        before anything changes; only a load failing inside diffusers after an eviction made
        room can have unloaded one of them).
        """
        with self._lock:
            files = [self.lookup(use.name) for use in uses]
            self._check_uses(uses, files)
            needed = [(file, use) for file, use in zip(files, uses, strict=True) if not use.is_zero]
            records = ActiveLoras(
                tuple(self._record(file, use) for file, use in zip(files, uses, strict=True))
            )
            key = _set_key(needed)
            if self._fused is not None and key == self._streak_key:
                self._streak += 1
                return records  # the weights already hold this set
            states = {file.path: self._state(file) for file, _ in needed}  # all checked first
            self._unfuse()
            try:
                active = [
                    (self._load(file, states[file.path], needed), use) for file, use in needed
                ]
            except ModelLoadError:
                self._apply(self._active)
                self._streak_key, self._streak = None, 0
                raise
            self._apply(active)
            self._active = active
            self._streak = self._streak + 1 if key == self._streak_key else 1
            self._streak_key = key
            if active and self._streak > FUSE_AFTER_BATCHES and key != self._unfusable:
                self._fuse(key)
            return records

    def _check_uses(self, uses: Sequence[LoraUse], files: list[LoraFile]) -> None:
        seen: set[Path] = set()
        for file in files:
            if file.path in seen:
                raise InvalidRequestError(
                    f"LoRA {file.name!r} is asked for twice; give it once.",
                    ko=f"LoRA {file.name!r}이(가) 두 번 지정되었습니다. 한 번만 지정하세요.",
                )
            seen.add(file.path)
        count = sum(1 for use in uses if not use.is_zero)
        if count > self.max_resident:
            raise InvalidRequestError(
                f"{count} LoRAs asked for; at most {self.max_resident} can be used at once.",
                ko=f"LoRA {count}개가 지정되었습니다. 한 번에 최대 {self.max_resident}개까지 "
                "쓸 수 있습니다.",
            )

    def _record(self, file: LoraFile, use: LoraUse) -> ActiveLora:
        return ActiveLora(file.name, use.unet_weight, use.te_weight, lora_hash(file.path))

    def _state(self, file: LoraFile) -> StateDict:
        stamp = FileStamp.of(file.path)
        state = self._cache.get(stamp)
        if state is None:
            state = to_peft_state(read_lora_file(file.path), self.pipe, file.path)
            self._cache.put(stamp, state)
        return state

    def _load(
        self, file: LoraFile, state: StateDict, needed: list[tuple[LoraFile, LoraUse]]
    ) -> _Resident:
        stamp = FileStamp.of(file.path)
        entry = self._resident.get(file.path)
        if entry is not None and entry.stamp == stamp:
            self._resident.move_to_end(file.path)
            return entry
        if entry is not None:  # the file changed on disk since it was loaded
            self._evict(file.path)
        keep = {other.path for other, _ in needed}
        while len(self._resident) >= self.max_resident:
            self._evict(next(path for path in self._resident if path not in keep))
        adapter = f"lora{next(self._names)}_{re.sub(r'[^0-9A-Za-z]+', '_', file.name)[:40]}"
        self._load_adapter(file, state, adapter)
        entry = _Resident(file, stamp, adapter, self._components_of(adapter))
        self._resident[file.path] = entry
        return entry

    def _load_adapter(self, file: LoraFile, state: StateDict, adapter: str) -> None:
        try:
            with _quiet(_NOISY_LOGGERS):
                self.pipe.load_lora_weights(state, adapter_name=adapter)
        except torch.OutOfMemoryError:
            self._delete(adapter)
            raise
        except Exception as error:  # whatever diffusers or peft raise, the adapter goes
            self._delete(adapter)
            raise ModelLoadError(
                f"LoRA {file.name} ({file.path.name}) could not be loaded: {first_line(error)}"
            ) from error
        log.info("Loaded LoRA %s from %s as adapter %s.", file.name, file.path, adapter)

    def _components_of(self, adapter: str) -> tuple[str, ...]:
        listed = self.pipe.get_list_adapters()
        return tuple(part for part in COMPONENTS if adapter in listed.get(part, ()))

    def _evict(self, path: Path) -> None:
        entry = self._resident.pop(path)
        self._delete(entry.adapter)
        self._active = [(active, use) for active, use in self._active if active is not entry]
        log.info("Unloaded LoRA %s (adapter %s).", entry.file.name, entry.adapter)

    def _delete(self, adapter: str) -> None:
        listed = self.pipe.get_list_adapters()
        if any(adapter in names for names in listed.values()):
            self.pipe.delete_adapters([adapter])
        if not any(self.pipe.get_list_adapters().values()):
            self.pipe.unload_lora_weights()  # back to plain layers, not empty peft wrappers

    def _fuse(self, key: _SetKey) -> None:
        """Merge the active set into the weights, keeping each changed layer's original weights;
        on any failure every layer gets its weights back and the set stays unfused."""
        adapters = [entry.adapter for entry, _ in self._active]
        saved: list[_SavedLayer] = []
        try:
            with torch.no_grad():
                for module, merging in self._layers_to_merge(adapters):
                    saved.append(_save_layer(module))
                    module.merge(adapter_names=merging)
        except Exception as error:  # out of memory included: fusing is only a speed-up
            _restore(saved)
            self._unfusable = key
            log.warning(
                "Fusing LoRAs %s failed, they stay unfused: %s",
                ", ".join(_names(self._active)),
                first_line(error),
            )
            return
        self._fused = saved
        log.info(
            "Fused LoRAs %s into %d layers.",
            ", ".join(_names(self._active)),
            len(saved),
        )

    def _layers_to_merge(self, adapters: list[str]) -> Iterator[tuple[BaseTunerLayer, list[str]]]:
        """Each LoRA layer the set changes, with its adapters whose scale there is not 0."""
        for component in _components(self.pipe):
            for module in component.modules():
                if not isinstance(module, BaseTunerLayer):
                    continue
                held, scaling = getattr(module, "lora_A", {}), getattr(module, "scaling", {})
                merging = [name for name in adapters if name in held and scaling[name] != 0]
                if merging:
                    yield module, merging

    def _unfuse(self) -> None:
        if self._fused is None:
            return
        saved, self._fused = self._fused, None
        _restore(saved)
        log.info("Unfused LoRAs %s.", ", ".join(_names(self._active)))

    def _apply(self, active: list[tuple[_Resident, LoraUse]]) -> None:
        if not self._resident:
            return
        if not active:
            self.pipe.disable_lora()
            return
        self.pipe.enable_lora()
        self.pipe.set_adapters(
            [entry.adapter for entry, _ in active],
            adapter_weights=[_component_weights(entry, use) for entry, use in active],
        )


def _names(active: list[tuple[_Resident, LoraUse]]) -> list[str]:
    return [entry.file.name for entry, _ in active]


def _set_key(needed: list[tuple[LoraFile, LoraUse]]) -> _SetKey:
    return tuple((FileStamp.of(file.path), use.unet_weight, use.te_weight) for file, use in needed)


def _save_layer(module: BaseTunerLayer) -> _SavedLayer:
    base = module.get_base_layer()
    bias = getattr(base, "bias", None)
    return _SavedLayer(
        module,
        base.weight.detach().to("cpu", copy=True),
        bias.detach().to("cpu", copy=True) if bias is not None else None,
    )


def _restore(saved: list[_SavedLayer]) -> None:
    """Copy the saved weights back (exact) and mark the layers unmerged."""
    with torch.no_grad():
        for layer in saved:
            base = layer.module.get_base_layer()
            base.weight.data.copy_(layer.weight)
            if layer.bias is not None:
                base.bias.data.copy_(layer.bias)
            layer.module.merged_adapters = []


def _component_weights(entry: _Resident, use: LoraUse) -> dict[str, float]:
    # Only the parts the adapter has: diffusers warns about the others.
    weights = {"unet": use.unet_weight, "text_encoder": use.te_weight}
    weights["text_encoder_2"] = use.te_weight  # SDXL: te= weighs both text encoders
    return {part: weights[part] for part in entry.components}


@contextmanager
def _quiet(names: Sequence[str]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Loading a second adapter is what the manager does on purpose.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
