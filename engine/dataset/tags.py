"""Comma-separated caption tags: parse, edit, write back exactly as the user wrote them.

A caption like `ohwx ||| (red hair:1.2), smile, city` is parsed into tags that keep
their raw text, so an edit that touches one tag leaves every other byte alone:

- order is kept; a new tag goes at the end, `move_first` puts one right after the
  keep-tokens prefix (the trigger word stays first);
- the separator convention (", " or ",") is detected and reused;
- weights `(tag:1.2)`, `(tag)`, `[tag]` are kept when a tag is renamed;
- Kohya's keep-tokens separator `|||` and the leading/trailing whitespace (a final
  newline) are written back as they were.

Tags are matched by name: weight brackets and A1111 escapes `\\(` removed, inner
whitespace collapsed; case matters (a trigger word `Ohwx` is not `ohwx`).

Token counting is an approximation of CLIP's BPE (see `approximate_clip_tokens`); pass
a real tokenizer's count function where one is loaded.

Light module: standard library only.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from typing import Callable, Iterable, Iterator

KEEP_SEPARATOR = "|||"
# CLIP's context is 77 tokens: 75 for the caption plus start and end.
CLIP_TOKEN_WINDOW = 75
EMPHASIS = 1.1  # A1111: each ( multiplies by 1.1, each [ divides by it

_WEIGHT = re.compile(r":\s*([-+]?\d*\.?\d+)\s*$")
_ESCAPABLE = ("(", ")", "[", "]", "\\")  # A1111's escapes: `\(` is a literal bracket; `\,` is no escape
_EDGE_SPACE = re.compile(r"^(\s*)(.*?)(\s*)$", re.DOTALL)


@dataclass(frozen=True)
class Tag:
    """One tag: `prefix + name + suffix` is its raw text, e.g. "(" "red hair" ":1.2)"."""

    name: str
    prefix: str = ""
    suffix: str = ""

    @property
    def raw(self) -> str:
        return f"{self.prefix}{self.name}{self.suffix}"

    @property
    def key(self) -> str:
        return tag_key(self.name)

    @property
    def weight(self) -> float:
        explicit = _WEIGHT.search(self.suffix.rstrip(")]"))
        if explicit:
            return float(explicit.group(1))
        weight = 1.0
        for bracket in self.prefix:
            weight = weight * EMPHASIS if bracket == "(" else weight / EMPHASIS
        return round(weight, 4)

    def renamed(self, name: str) -> "Tag":
        """The same weight brackets around another name."""
        return dataclass_replace(self, name=name.strip())


def tag_key(name: str) -> str:
    """What two tags must share to be the same tag."""
    unescaped = name.replace("\\(", "(").replace("\\)", ")").replace("\\[", "[").replace("\\]", "]")
    return " ".join(unescaped.split())


def parse_tag(raw: str) -> Tag:
    text = raw.strip()
    opens = 0
    while opens < len(text) and text[opens] in "([":
        opens += 1
    if opens == 0:
        return Tag(text)
    # Strip one matching closer per opener, innermost last; unbalanced means "not a
    # weight", e.g. "(sitting" stays a plain name.
    end = len(text)
    for bracket in reversed(text[:opens]):
        closer = ")" if bracket == "(" else "]"
        if end > opens and text[end - 1] == closer and text[end - 2:end - 1] != "\\":
            end -= 1
        else:
            return Tag(text)
    inner = text[opens:end]
    weight_text = ""
    if text[opens - 1] == "(":
        match = _WEIGHT.search(inner)
        if match and match.start() > 0:
            weight_text = inner[match.start():]
            inner = inner[:match.start()]
    if not inner.strip():
        return Tag(text)
    return Tag(inner, text[:opens], weight_text + text[end:])


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so `(red, blue:1.2)` stays one tag.

    A bracket that is never closed (`smile (, city`) groups nothing: it is a literal
    character, so a tag added after it stays a tag of its own."""
    unclosed = _unclosed_openers(text)
    parts, depth, start = [], 0, 0
    for index, char in _unescaped(text):
        if char in "([" and index not in unclosed:
            depth += 1
        elif char in ")]" and depth:
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _unclosed_openers(text: str) -> set[int]:
    """Positions of the brackets that no later bracket closes."""
    open_at: list[int] = []
    for index, char in _unescaped(text):
        if char in "([":
            open_at.append(index)
        elif char in ")]" and open_at:
            open_at.pop()
    return set(open_at)


def _unescaped(text: str) -> Iterator[tuple[int, str]]:
    """(position, character) of every character that an A1111 escape (`\\(`) leaves alone."""
    index = 0
    while index < len(text):
        if text[index] == "\\" and text[index + 1:index + 2] in _ESCAPABLE:
            index += 2
            continue
        yield index, text[index]
        index += 1


def _detect_separator(text: str) -> str:
    """", " unless most commas in the caption are followed by no space."""
    spaced = len(re.findall(r",[ \t]", text))
    tight = text.count(",") - spaced
    return "," if tight > spaced else ", "


@dataclass(frozen=True)
class Caption:
    """A parsed caption. Every edit returns a new Caption; `render()` writes it back."""

    tags: tuple[Tag, ...] = ()
    separator: str = ", "
    leading: str = ""
    trailing: str = ""
    # Kohya keep-tokens separator: tags before `keep_count` are the fixed part.
    keep_count: int | None = None
    keep_glue: str = f" {KEEP_SEPARATOR} "
    original: str | None = field(default=None, compare=False)

    # ---- reading

    def names(self) -> list[str]:
        return [tag.name for tag in self.tags]

    def keys(self) -> list[str]:
        return [tag.key for tag in self.tags]

    def index(self, name: str) -> int:
        key = tag_key(name)
        for position, tag in enumerate(self.tags):
            if tag.key == key:
                return position
        return -1

    def has(self, name: str) -> bool:
        return self.index(name) >= 0

    def kept(self, keep_tokens: int = 0) -> int:
        """How many leading tags caption shuffling never moves: the `|||` part when the
        caption has one, else Kohya's `keep_tokens` first tags."""
        return min(len(self.tags), self.keep_count if self.keep_count is not None else keep_tokens)

    def render(self) -> str:
        if self.original is not None:
            return self.original
        raws = [tag.raw for tag in self.tags]
        if self.keep_count is None:
            body = self.separator.join(raws)
        else:
            fixed = self.separator.join(raws[: self.keep_count])
            flexible = self.separator.join(raws[self.keep_count:])
            # With the fixed part emptied, drop the space that stood after it.
            glue = self.keep_glue if fixed else self.keep_glue.lstrip(" ,")
            body = f"{fixed}{glue}{flexible}"
        return f"{self.leading}{body}{self.trailing}"

    __str__ = render

    # ---- editing (each returns a new caption; unchanged content returns self)

    def _with_tags(self, tags: list[Tag], keep_count: int | None = None) -> "Caption":
        keep = self.keep_count if keep_count is None else keep_count
        if keep is not None:
            keep = max(0, min(keep, len(tags)))
        if tuple(tags) == self.tags and keep == self.keep_count:
            return self
        return dataclass_replace(self, tags=tuple(tags), keep_count=keep, original=None)

    def add(self, name: str, position: int | None = None) -> "Caption":
        """Add a tag (raw text, weights allowed) unless a tag of that name is there."""
        tag = parse_tag(name)
        if not tag.name or self.has(tag.name):
            return self
        tags = list(self.tags)
        if position is None:
            tags.append(tag)
            return self._with_tags(tags)
        tags.insert(position, tag)
        keep = self.keep_count
        if keep is not None and position < keep:
            keep += 1
        return self._with_tags(tags, keep)

    def remove(self, name: str) -> "Caption":
        key = tag_key(parse_tag(name).name)
        tags, keep = [], self.keep_count
        for position, tag in enumerate(self.tags):
            if tag.key == key:
                if keep is not None and position < self.keep_count:
                    keep -= 1
                continue
            tags.append(tag)
        return self._with_tags(tags, keep)

    def replace(self, old: str, new: str) -> "Caption":
        """Rename a tag in place, keeping its weight; merging into an existing `new`."""
        old_key = tag_key(parse_tag(old).name)
        new_tag = parse_tag(new)
        if not new_tag.name:
            return self.remove(old)
        tags = []
        for tag in self.tags:
            if tag.key == old_key:
                # A weight typed with the new name wins; otherwise keep the old brackets.
                tag = new_tag if (new_tag.prefix or new_tag.suffix) else tag.renamed(new_tag.name)
            tags.append(tag)
        return self._with_tags(tags).dedupe()

    def move(self, name: str, offset: int) -> "Caption":
        position = self.index(name)
        if position < 0:
            return self
        target = max(0, min(len(self.tags) - 1, position + offset))
        tags = list(self.tags)
        tags.insert(target, tags.pop(position))
        return self._with_tags(tags)

    def move_first(self, name: str, keep_tokens: int = 0) -> "Caption":
        """Move a tag to the front, but after the keep-tokens prefix (the trigger word).

        The prefix is the `|||` part when the caption has one, else the first
        `keep_tokens` tags (Kohya's keep_tokens). A tag inside the prefix goes to 0.
        """
        position = self.index(name)
        if position < 0:
            return self
        fixed = self.kept(keep_tokens)
        target = 0 if position < fixed else min(fixed, len(self.tags) - 1)
        tags = list(self.tags)
        tags.insert(target, tags.pop(position))
        return self._with_tags(tags)

    def dedupe(self) -> "Caption":
        seen: set[str] = set()
        tags, keep = [], self.keep_count
        for position, tag in enumerate(self.tags):
            if tag.key in seen:
                if keep is not None and position < self.keep_count:
                    keep -= 1
                continue
            seen.add(tag.key)
            tags.append(tag)
        return self._with_tags(tags, keep)


def _parse_part(text: str) -> list[Tag]:
    return [parse_tag(piece) for piece in split_top_level(text) if piece.strip()]


def parse_caption(text: str) -> Caption:
    """Parse caption text; `parse_caption(t).render() == t` for any text."""
    leading, body, trailing = _EDGE_SPACE.match(text).groups()
    separator = _detect_separator(body)
    if KEEP_SEPARATOR in body:
        fixed_text, flexible_text = body.split(KEEP_SEPARATOR, 1)
        fixed, flexible = _parse_part(fixed_text), _parse_part(flexible_text)
        # The glue is whatever surrounds ||| (" ||| " or ", |||, "), kept verbatim.
        glue_before = re.search(r"[\s,]*$", fixed_text).group(0) if fixed else ""
        glue_after = re.match(r"[\s,]*", flexible_text).group(0) if flexible else ""
        glue = f"{glue_before}{KEEP_SEPARATOR}{glue_after}"
        return Caption(tuple(fixed + flexible), separator, leading, trailing,
                       keep_count=len(fixed), keep_glue=glue, original=text)
    return Caption(tuple(_parse_part(body)), separator, leading, trailing, original=text)


# ---- whole-caption helpers used by the CLI, the editor and the captioners


_NEEDS_PARSER = re.compile(r"[(\[\\|]")


def caption_keys(text: str) -> set[str]:
    """The tag names of a caption. Plain captions (no brackets, escapes or |||), most of
    a dataset, take a fast path: counting 10,000 captions is then a few tens of ms."""
    if not _NEEDS_PARSER.search(text):
        return {" ".join(piece.split()) for piece in text.split(",") if piece.strip()}
    return set(parse_caption(text).keys())


def tag_frequency(captions: Iterable[str]) -> Counter[str]:
    """How many captions carry each tag (a tag twice in one caption counts once)."""
    counts: Counter[str] = Counter()
    for text in captions:
        counts.update(caption_keys(text))
    return counts


# ---- CLIP token count


_PRE_TOKEN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)


def approximate_clip_tokens(text: str) -> int:
    """Estimate CLIP's token count without its 1.5 MB vocabulary.

    Splits like CLIP's pre-tokenizer (words, single digits, punctuation runs), then
    counts a word of up to 8 letters as 1 token and one more per further 8 letters
    (common long words are 1 token, rare ones split; this errs toward more), and each
    punctuation character as 1 token (`,` `(` `:` are single tokens in CLIP).
    """
    count = 0
    for piece in _PRE_TOKEN.findall(text.lower()):
        if piece[0].isalpha():
            count += 1 + (len(piece) - 1) // 8
        elif piece[0].isdigit():
            count += 1
        else:
            count += len(piece)
    return count


def token_count(text: str, counter: Callable[[str], int] | None = None) -> int:
    """Tokens the caption takes in CLIP's window (exact when `counter` is a tokenizer's)."""
    return (counter or approximate_clip_tokens)(text)


def tags_past_window(caption: Caption, window: int = CLIP_TOKEN_WINDOW,
                     counter: Callable[[str], int] | None = None) -> int:
    """Index of the first tag that falls past the token window (len(tags) if none)."""
    used = 0
    for position, tag in enumerate(caption.tags):
        used += token_count(tag.raw, counter) + (1 if position else 0)  # + the comma
        if used > window:
            return position
    return len(caption.tags)
