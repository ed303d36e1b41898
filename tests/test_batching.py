"""Exact batches: the UNet sees each image's rows exactly as a single-image call would."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.batching import image_by_image, vae_slicing


class RecordingUNet(nn.Module):
    """Returns its input plus the time ids, and records the batch sizes it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = True,
    ) -> tuple[torch.Tensor]:
        self.calls.append(sample.shape[0])
        extra = added_cond_kwargs["time_ids"] if added_cond_kwargs else torch.zeros(1)
        out = sample + encoder_hidden_states.mean() * 0 + extra.view(-1, 1, 1, 1) + timestep * 0
        return (out,)


def test_each_image_gets_its_own_call_with_its_rows() -> None:
    unet = RecordingUNet()
    images = 3
    # Classifier-free guidance doubles the batch: [uncond x3, cond x3].
    sample = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1)
    time_ids = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    text = torch.zeros(6, 4, 8)
    whole = unet(sample, torch.tensor(5), text, {"time_ids": time_ids})[0]
    unet.calls.clear()
    with image_by_image(unet, images):
        split = unet(sample, torch.tensor(5), text, added_cond_kwargs={"time_ids": time_ids})
    assert unet.calls == [2, 2, 2]
    assert torch.equal(split.sample, whole)
    # Afterwards the module is its old self again.
    unet.calls.clear()
    unet(sample, torch.tensor(5), text)
    assert unet.calls == [6]


def test_vae_slicing_is_only_for_the_job() -> None:
    vae = nn.Module()
    vae.use_slicing = False
    with vae_slicing(vae):
        assert vae.use_slicing is True
    assert vae.use_slicing is False
