"""The A1111 prompt language and the /imagine vocabulary.

Only the text-level parts are exported here, so importing them needs no torch; the encoding
into embeddings lives in `pipeline.prompts.encoding`.
"""

from pipeline.prompts.composable import WeightedPrompt, split_and
from pipeline.prompts.emphasis import parse_emphasis
from pipeline.prompts.extra_networks import LoraTag, extract_loras
from pipeline.prompts.schedule import prompt_schedule
from pipeline.prompts.syntax import PromptSyntaxError, WeightOutOfRange

__all__ = [
    "LoraTag",
    "PromptSyntaxError",
    "WeightOutOfRange",
    "WeightedPrompt",
    "extract_loras",
    "parse_emphasis",
    "prompt_schedule",
    "split_and",
]
