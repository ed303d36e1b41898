"""Prompt editing (`[from:to:when]`) and alternating words (`[a|b]`): the text at each step.

This is a reimplementation written from AUTOMATIC1111's documented behaviour (the wiki
"Features" page, Prompt editing and Alternating words); A1111 is AGPL and none of its code or
grammar is copied. It is a small recursive-descent parser that never backtracks.

Rules:
- `[from:to:when]` uses `from` up to and including step `when`, then `to`; `[to:when]` adds
  `to` after step `when`; `[from::when]` removes `from` after step `when`.
- `when` is an unsigned number, whitespace allowed around it. Written with a decimal point
  (`0.4`, `.4`, `2.`) it is a fraction of the steps, step = int(when * steps) in floating point
  as A1111 computes it (so 0.29 at 100 steps is step 28); otherwise it is a step number. Steps
  past the last are the last. A negative `when` (`-1`, `-0.5`) is before the first step, as in
  A1111: the second text applies from the start. Anything else (`1e3`, `x`) leaves the bracket
  as text.
- `[a|b|c]` uses a at step 1, b at step 2, c at step 3, a at step 4, ...; options may be empty.
- The forms nest, inside each other and inside emphasis, e.g. `([cat:dog:5]:1.2)`.
- Everything else is text and passes through unchanged for the later stages: emphasis `(x)`,
  `(x:1.2)`, `[x]`, escapes such as `\\[` (a backslash keeps the next character as text here),
  `<lora:...>` tags. A `:` or `|` inside parentheses does not split a bracket around them.
- Malformed input becomes text locally: an unclosed `[` or `(`, a stray `]` or `)`, a bracket
  mixing `:` and `|` or with too many colons. (A1111 instead gives up on the whole prompt
  when its grammar fails; here the well-formed brackets elsewhere in the prompt still work.)
- Brackets nested deeper than MAX_NESTING are text, which bounds recursion.

The result lists (last step, text) in step order, the last entry ending at `steps`, with
consecutive entries of equal text merged.
"""

from dataclasses import dataclass

from pipeline.prompts.syntax import is_unsigned_decimal

MAX_NESTING = 64
# An integer `when` longer than this is past any real step count (and int() of a huge digit
# string is slow or refused).
_MAX_STEP_DIGITS = 12


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Edit:
    before: tuple["_Node", ...]
    after: tuple["_Node", ...]
    step: int  # `before` applies up to and including this step


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple["_Node", ...], ...]


_Node = _Text | _Edit | _Alternate
_Sequence = tuple[_Node, ...]


def _when_to_step(when: str, steps: int) -> int | None:
    """The step a `when` stands for, clamped to `steps`; None if it is not a number."""
    value = when.strip()
    if value.startswith("-") and is_unsigned_decimal(value[1:]):
        return 0  # A1111: a negative switch point is never reached, so `to` applies throughout
    if not is_unsigned_decimal(value):
        return None
    if "." in value:
        scaled = float(value) * steps
        return steps if scaled >= steps else int(scaled)
    significant = value.lstrip("0")
    if len(significant) > _MAX_STEP_DIGITS:
        return steps
    return min(steps, int(significant or "0"))


def _flush(buffer: list[str], nodes: list[_Node]) -> None:
    if buffer:
        nodes.append(_Text("".join(buffer)))
        buffer.clear()


class _Parser:
    def __init__(self, text: str, steps: int) -> None:
        self.text = text
        self.steps = steps
        self.pos = 0
        self.open_parens = 0
        self.open_squares = 0

    def parse(self) -> _Sequence:
        nodes, _ = self._sequence(splits=False)
        return tuple(nodes)

    def _depth(self) -> int:
        return self.open_parens + self.open_squares

    def _stops_at(self, char: str, splits: bool) -> bool:
        """Whether `char` ends the sequence being read (it then belongs to an enclosing group)."""
        if char == "]":
            return self.open_squares > 0
        if char == ")":
            return self.open_parens > 0
        return splits and char in ":|"

    def _sequence(self, splits: bool) -> tuple[list[_Node], str | None]:
        """Nodes up to the character that ends this sequence (not consumed; None at the end).

        `splits` is true directly inside a square bracket, where `:` and `|` separate parts.
        """
        nodes: list[_Node] = []
        buffer: list[str] = []
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if self._stops_at(char, splits):
                _flush(buffer, nodes)
                return nodes, char
            if char == "\\":
                buffer.append(text[self.pos : self.pos + 2])
                self.pos += 2
            elif char == "[" and self._depth() < MAX_NESTING:
                _flush(buffer, nodes)
                nodes.extend(self._square())
            elif char == "(" and self._depth() < MAX_NESTING:
                _flush(buffer, nodes)
                nodes.extend(self._paren())
            else:
                buffer.append(char)
                self.pos += 1
        _flush(buffer, nodes)
        return nodes, None

    def _paren(self) -> list[_Node]:
        self.pos += 1
        self.open_parens += 1
        inner, stop = self._sequence(splits=False)
        self.open_parens -= 1
        if stop != ")":
            return [_Text("("), *inner]
        self.pos += 1
        return [_Text("("), *inner, _Text(")")]

    def _square(self) -> list[_Node]:
        self.pos += 1
        self.open_squares += 1
        parts: list[list[_Node]] = []
        separators: list[str] = []
        while True:
            part, stop = self._sequence(splits=True)
            parts.append(part)
            if stop not in (":", "|"):
                break
            separators.append(stop)
            self.pos += 1
        self.open_squares -= 1
        closed = stop == "]"
        if closed:
            self.pos += 1
        node = self._bracket_node(parts, separators) if closed else None
        return [node] if node is not None else _as_text(parts, separators, closed)

    def _bracket_node(self, parts: list[list[_Node]], separators: list[str]) -> _Node | None:
        """The edit or alternation a closed bracket stands for; None if it is just text."""
        if separators and all(separator == "|" for separator in separators):
            return _Alternate(tuple(tuple(part) for part in parts))
        if separators not in ([":"], [":", ":"]):
            return None
        step = _plain_step(parts[-1], self.steps)
        if step is None:
            return None
        before = tuple(parts[0]) if len(parts) == 3 else ()
        return _Edit(before=before, after=tuple(parts[-2]), step=step)


def _plain_step(nodes: list[_Node], steps: int) -> int | None:
    """The step a bracket's last part names, if that part is plain text and a number."""
    if not all(isinstance(node, _Text) for node in nodes):
        return None
    return _when_to_step("".join(node.text for node in nodes if isinstance(node, _Text)), steps)


def _as_text(parts: list[list[_Node]], separators: list[str], closed: bool) -> list[_Node]:
    """A bracket that is not editing syntax, written back as it was (inner brackets still work)."""
    nodes: list[_Node] = [_Text("[")]
    for index, part in enumerate(parts):
        if index > 0:
            nodes.append(_Text(separators[index - 1]))
        nodes.extend(part)
    if closed:
        nodes.append(_Text("]"))
    return nodes


def _boundaries(nodes: _Sequence, steps: int, found: set[int]) -> bool:
    """Add the steps after which `nodes` change to `found`; True if they change every step."""
    every_step = False
    for node in nodes:
        if isinstance(node, _Edit):
            if node.step >= 1:
                found.add(node.step)
            every_step |= _boundaries(node.before, steps, found)
            every_step |= _boundaries(node.after, steps, found)
        elif isinstance(node, _Alternate):
            every_step = True
            for option in node.options:
                _boundaries(option, steps, found)
    return every_step


def _render(nodes: _Sequence, step: int, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Edit):
            _render(node.before if step <= node.step else node.after, step, out)
        else:
            _render(node.options[(step - 1) % len(node.options)], step, out)


def _text_at(nodes: _Sequence, step: int) -> str:
    out: list[str] = []
    _render(nodes, step, out)
    return "".join(out)


def _boundaries_of(tree: _Sequence, steps: int) -> list[int]:
    found = {steps}
    if _boundaries(tree, steps, found):
        return list(range(1, steps + 1))
    return sorted(found)


def step_boundaries(text: str, steps: int) -> list[int]:
    """The last step of each stretch over which the text may stay the same, in order.

    Like A1111 this counts every `when`, even where two stretches end up with equal text;
    `prompt_schedule` merges those.
    """
    steps = max(1, steps)
    return _boundaries_of(_Parser(text, steps).parse(), steps)


def prompt_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """(last step, text) pairs covering steps 1..`steps` in order; never raises on any text.

    `steps` below 1 is treated as 1.
    """
    steps = max(1, steps)
    tree = _Parser(text, steps).parse()
    schedule: list[tuple[int, str]] = []
    for step in _boundaries_of(tree, steps):
        current = _text_at(tree, step)
        if schedule and schedule[-1][1] == current:
            schedule[-1] = (step, current)
        else:
            schedule.append((step, current))
    return schedule
