"""The control map a job asked to see (`--cn-show`), made for its reply.

The map is what the ControlNet read: the job's control image through the same preprocessor
at the job's size (pipeline/control_maps.py), drawn again here rather than carried back from
the GPU side with the images, so results, the database and the wire to remote workers stay as
they are. It is kept beside the uploads (outputs/inputs), named by what it is made from, so a
second delivery of the same job (/info, a restart) reuses it and `easel prune` clears it with
the uploads no job uses.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from pipeline.request import GenerationRequest

log = logging.getLogger(__name__)

INPUTS_FOLDER = "inputs"


def control_map_file(
    request: GenerationRequest, outputs_dir: Path, models_dir: Path
) -> Path | None:
    """The map of a job that asked to see it, as a PNG file; None for any other job, or when
    it cannot be made (its image gone: logged, and the reply goes without it). Reads and
    writes files: call it off the event loop."""
    use = request.control
    if use is None or not use.show or request.width is None or request.height is None:
        return None
    from pipeline.control_maps import control_map
    from pipeline.errors import EaselError

    size = (request.width, request.height)
    source = use.image.path or hashlib.sha256(use.image.data or b"").hexdigest()
    name = hashlib.sha256(f"{source}|{use.preprocessor}|{size}".encode()).hexdigest()[:32]
    path = outputs_dir / INPUTS_FOLDER / f"{name}.map.png"
    if path.exists():
        path.touch()  # used again: kept by `easel prune` as long as uploads are
        return path
    try:
        drawn = control_map(use.image.open(), use.preprocessor, size, models_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        drawn.save(partial, format="PNG")
        partial.replace(path)
    except (OSError, ValueError, EaselError) as error:
        log.warning("The control map of a job could not be made: %s", error)
        return None
    return path
