"""Text from outside (chat messages, user names, image metadata) made safe to store and show.

A chat platform's JSON may carry a lone UTF-16 surrogate (`"\\udc80"`), which Python keeps in
a str but cannot encode as UTF-8 (the database, the tokenizer and files then fail), and image
metadata may carry terminal escape sequences. `clean_text` is applied where such text enters.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"
_KEPT_CONTROLS = frozenset("\n\t")
# C0 controls, DEL and C1 controls (ESC and CSI among them), except newline and tab.
_CONTROLS: dict[int, None] = {
    code: None
    for code in (*range(0x00, 0x20), *range(0x7F, 0xA0))
    if chr(code) not in _KEPT_CONTROLS
}


def _without_lone_surrogates(text: str) -> str:
    """`text` with each surrogate pair joined into its character and each lone one as U+FFFD."""
    if text.isascii():
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def clean_text(text: str) -> str:
    """`text` that encodes as UTF-8 and holds no control characters but newline and tab.

    Lone surrogates become U+FFFD (a pair written as two code points becomes its character);
    NUL, ESC, carriage return and every other C0/C1 control character and DEL are dropped.
    Linear in the length of `text`.
    """
    return _without_lone_surrogates(text).translate(_CONTROLS)
