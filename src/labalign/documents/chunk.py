"""Heading-aware chunking of markdown into pieces that fit a token budget.

Every chunk is an exact slice of the input text (lines may be cut only when a single line is over
the budget), the slices are in order and only whitespace lies between them, so every non-blank line
of a document is in exactly one chunk (or, for an over-long line, split across consecutive ones).

How the text is cut, in order of preference:

1. Markdown is parsed into sections (ATX headings ``#``..``######``; ``#`` lines inside ``` or ~~~
   fences are code, not headings) and blocks: paragraphs, fenced code, tables. A heading line is
   always kept with the block that follows it.
2. The blocks of a section are packed into a chunk while it fits the budget. A new section starts a
   new chunk, except that a chunk still under a quarter of the budget takes in the next section when
   that section is a sibling (or a sibling's descendant) of the chunk's first section and it fits;
   so short sections merge instead of making fragments.
3. A block that alone exceeds the budget is split at line boundaries (for prose, preferring lines
   that end a sentence or start a list item), then, for a single over-long line, at sentence ends,
   then between words, and as a last resort between characters. Code fences and tables are split
   only in this case, and then only between lines when a line fits.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from labalign.documents.convert import read_document
from labalign.documents.source import DocumentFile
from labalign.documents.tokens import TokenCounter, estimate_tokens
from labalign.errors import DocumentError

# A chunk still below this fraction of the budget takes in the following sibling section.
TINY_FRACTION = 0.25
# Texts longer than this many characters per budget token are taken not to fit without counting:
# no real vocabulary averages that many characters per token, and it keeps splitting a huge block
# linear instead of quadratic.
MAX_CHARS_PER_TOKEN = 64

_ATX = re.compile(r"^ {0,3}(#{1,6})(?=[ \t]|$)(.*)$")
_ATX_CLOSE = re.compile(r"(?:^|[ \t]+)#+[ \t]*$")
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_TABLE_DELIMITER = re.compile(r"^ {0,3}\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_CLOSERS = "'\"\u201d\u2019)\\]*_"  # quotes, brackets and emphasis that may follow a sentence end
_SENTENCE_END_LINE = re.compile(rf"[.!?:;\u2026][{_CLOSERS}]*\s*$")
_BLOCK_START = re.compile(r"^\s*([-*+]\s|\d{1,9}[.)]\s|>|\|)")
_SENTENCE_END = re.compile(rf"[.!?\u2026]+[{_CLOSERS}]*(?=\s)")
_WORD_END = re.compile(r"\S(?=\s)")

LineKind = Literal["blank", "heading", "para", "table", "fence"]
BoundaryTier = Literal["heading", "preferred", "any"]


@dataclass(frozen=True)
class Chunk:
    """A piece of a document that fits the token budget, with where it came from."""

    index: int  # 0-based within the document list of one leaf
    text: str  # markdown text of the chunk
    heading_path: tuple[str, ...]  # e.g. ("Vellmoor Island", "Economy", "Fishing")
    source: str  # DocumentFile.relpath
    start_line: int  # 1-based, inclusive, in the markdown text
    end_line: int
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the heading path as a list)."""
        data = asdict(self)
        data["heading_path"] = list(self.heading_path)
        return data


def chunk_markdown(
    text: str,
    *,
    source: str,
    max_tokens: int = 500,
    count_tokens: TokenCounter | None = None,
) -> list[Chunk]:
    """Split markdown `text` into chunks of at most `max_tokens` tokens (see the module docstring).

    `count_tokens` defaults to `estimate_tokens`. A chunk exceeds `max_tokens` only when a single
    character does. Line numbers are 1-based in `text` after CRLF/CR are turned into LF.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise DocumentError(
            f"the chunk token budget must be a positive integer, got {max_tokens!r}",
            hint="e.g. --max-tokens 500",
        )
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    doc = _Document(text)
    packer = _Packer(doc, count_tokens or estimate_tokens, max_tokens)
    spans = packer.pack()
    chunks: list[Chunk] = []
    for cs, ce in spans:
        first, last = doc.line_of(cs), doc.line_of(ce - 1)
        chunks.append(
            Chunk(
                index=len(chunks),
                text=text[cs:ce],
                heading_path=doc.heading_path(first, last),
                source=source,
                start_line=first + 1,
                end_line=last + 1,
                n_tokens=packer.count(cs, ce),
            )
        )
    return chunks


def chunk_documents(
    files: Sequence[DocumentFile],
    *,
    max_tokens: int = 500,
    count_tokens: TokenCounter | None = None,
) -> list[Chunk]:
    """Read and chunk each file in order; chunk indexes run on across files (0-based).

    Raises DocumentError if the files hold no text at all (e.g. a scanned PDF without text layer).
    """
    counter = count_tokens or estimate_tokens
    chunks: list[Chunk] = []
    for file in files:
        text = read_document(file)
        for chunk in chunk_markdown(text, source=file.relpath, max_tokens=max_tokens, count_tokens=counter):
            chunks.append(replace(chunk, index=len(chunks)))
    if files and not chunks:
        names = ", ".join(f.relpath for f in files[:5]) + (", ..." if len(files) > 5 else "")
        raise DocumentError(
            f"the documents have no text: {names}",
            hint="a scanned PDF needs OCR first; check that the patterns match the right files",
        )
    return chunks


@dataclass(frozen=True)
class _Block:
    first_line: int
    last_line: int
    starts_section: bool  # begins with a heading line
    heading_only: bool  # only headings (the end of a document)


@dataclass(frozen=True)
class _Boundary:
    end: int  # chunk end offset if cut here
    next: int  # where the rest starts
    tier: BoundaryTier


class _Document:
    """The parsed structure of one markdown text: lines, their kinds and sections, and blocks."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.split("\n")
        self.starts: list[int] = []
        offset = 0
        for line in self.lines:
            self.starts.append(offset)
            offset += len(line) + 1
        self.ends = [s + len(line.rstrip()) for s, line in zip(self.starts, self.lines, strict=True)]
        n = len(self.lines)
        self.kinds: list[LineKind] = ["blank"] * n
        self.section_of = [0] * n
        self.paths: list[tuple[tuple[int, str], ...]] = [()]  # section 0: text before any heading
        self.blocks: list[_Block] = []
        self._parse()

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset) - 1

    def is_blank(self, i: int) -> bool:
        return self.ends[i] == self.starts[i]

    def _parse(self) -> None:
        units: list[tuple[int, int, LineKind]] = []
        stack: list[tuple[int, str]] = []
        section = 0
        para_start: int | None = None
        i, n = 0, len(self.lines)

        def end_paragraph(end: int) -> None:
            nonlocal para_start
            if para_start is not None:
                units.extend(self._split_table(para_start, end))
                para_start = None

        while i < n:
            line = self.lines[i]
            self.section_of[i] = section
            if self.is_blank(i):
                end_paragraph(i - 1)
                i += 1
                continue
            fence = _FENCE_OPEN.match(line)
            if fence and not (fence.group(1)[0] == "`" and "`" in fence.group(2)):
                end_paragraph(i - 1)
                j = self._fence_end(i, fence.group(1))
                for k in range(i, j + 1):
                    self.section_of[k] = section
                    if not self.is_blank(k):
                        self.kinds[k] = "fence"
                units.append((i, j, "fence"))
                i = j + 1
                continue
            heading = _ATX.match(line)
            if heading:
                end_paragraph(i - 1)
                level = len(heading.group(1))
                title = _ATX_CLOSE.sub("", heading.group(2).strip()).strip()
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, title))
                self.paths.append(tuple(stack))
                section = len(self.paths) - 1
                self.section_of[i] = section
                self.kinds[i] = "heading"
                units.append((i, i, "heading"))
                i += 1
                continue
            if para_start is None:
                para_start = i
            i += 1
        end_paragraph(n - 1)
        self._group(units)

    def _fence_end(self, start: int, opener: str) -> int:
        """Last non-blank line of the fence opened at `start` (an unclosed fence runs to the end)."""
        close = re.compile(rf"^ {{0,3}}{re.escape(opener[0])}{{{len(opener)},}}[ \t]*$")
        for j in range(start + 1, len(self.lines)):
            if close.match(self.lines[j]):
                return j
        last = len(self.lines) - 1
        while last > start and self.is_blank(last):
            last -= 1
        return last

    def _split_table(self, start: int, end: int) -> list[tuple[int, int, LineKind]]:
        """A paragraph's lines as prose and, from a GFM table header on, a table."""
        for k in range(start + 1, end + 1):
            if _TABLE_DELIMITER.match(self.lines[k]) and "|" in self.lines[k] and "|" in self.lines[k - 1]:
                parts: list[tuple[int, int, LineKind]] = []
                if k - 1 > start:
                    parts.append((start, k - 2, "para"))
                parts.append((k - 1, end, "table"))
                break
        else:
            parts = [(start, end, "para")]
        for first, last, kind in parts:
            for j in range(first, last + 1):
                self.kinds[j] = kind
        return parts

    def _group(self, units: list[tuple[int, int, LineKind]]) -> None:
        """Glue each run of heading lines to the block after it."""
        pending: int | None = None
        for first, last, kind in units:
            if kind == "heading":
                if pending is None:
                    pending = first
                continue
            start = pending if pending is not None else first
            self.blocks.append(_Block(start, last, starts_section=pending is not None, heading_only=False))
            pending = None
        if pending is not None:
            self.blocks.append(_Block(pending, units[-1][1], starts_section=True, heading_only=True))

    def heading_path(self, first: int, last: int) -> tuple[str, ...]:
        """Common heading path of the sections whose content lines are in [first, last]."""
        common: tuple[tuple[int, str], ...] | None = None
        last_heading = self.section_of[first]
        for i in range(first, last + 1):
            kind = self.kinds[i]
            if kind == "heading":
                last_heading = self.section_of[i]
            elif kind != "blank":
                path = self.paths[self.section_of[i]]
                if common is None:
                    common = path
                else:
                    size = 0
                    while size < min(len(common), len(path)) and common[size] == path[size]:
                        size += 1
                    common = common[:size]
        if common is None:  # only headings: name the deepest one
            common = self.paths[last_heading]
        return tuple(title for _level, title in common)


class _Packer:
    """Greedy packing of blocks into chunk spans (start and end offsets into the text)."""

    def __init__(self, doc: _Document, counter: TokenCounter, max_tokens: int) -> None:
        self.doc = doc
        self.counter = counter
        self.max_tokens = max_tokens
        self.max_chars = max_tokens * MAX_CHARS_PER_TOKEN
        self._counts: dict[tuple[int, int], int] = {}

    def count(self, start: int, end: int) -> int:
        key = (start, end)
        if key not in self._counts:
            self._counts[key] = self.counter(self.doc.text[start:end])
        return self._counts[key]

    def fits(self, start: int, end: int) -> bool:
        if end - start > self.max_chars:
            return False
        return self.count(start, end) <= self.max_tokens

    def _same_parent(self, anchor: int, section: int) -> bool:
        parent = self.doc.paths[anchor][:-1]
        path = self.doc.paths[section]
        return len(path) > len(parent) and path[: len(parent)] == parent

    def pack(self) -> list[tuple[int, int]]:
        doc = self.doc
        spans: list[tuple[int, int]] = []
        cur: tuple[int, int] | None = None  # the open chunk
        tiny = self.max_tokens * TINY_FRACTION
        for block in doc.blocks:
            pos = doc.starts[block.first_line]
            end = doc.ends[block.last_line]
            first_piece = True
            while pos < end:
                if cur is not None:
                    cs, ce = cur
                    if not (first_piece and block.starts_section) or block.heading_only:
                        allowed = True
                    else:
                        anchor = doc.section_of[doc.line_of(cs)]
                        section = doc.section_of[block.first_line]
                        allowed = self.count(cs, ce) < tiny and self._same_parent(anchor, section)
                    if allowed:
                        if self.fits(cs, end):
                            cur = (cs, end)
                            pos = end
                            break
                        if not self.fits(pos, end):
                            # Over budget on its own anyway: fill the open chunk with whole lines.
                            cut = self._best_cut(cs, pos, block, inline=False)
                            if cut is not None:
                                spans.append((cs, cut.end))
                                cur, pos, first_piece = None, cut.next, False
                                continue
                    spans.append(cur)
                    cur = None
                if self.fits(pos, end):
                    cur = (pos, end)
                    break
                cut = self._best_cut(pos, pos, block, inline=True)
                if cut is None:  # not even one character fits: it is a chunk of its own
                    pos = self._skip_space(pos, end)  # without the indentation, which costs tokens too
                    cut = _Boundary(pos + 1, self._skip_space(pos + 1, end), "any")
                spans.append((pos, cut.end))
                pos, first_piece = cut.next, False
        if cur is not None:
            spans.append(cur)
        return spans

    def _skip_space(self, pos: int, end: int) -> int:
        text = self.doc.text
        while pos < end and text[pos].isspace():
            pos += 1
        return pos

    def _largest_fitting(self, cs: int, ends: Sequence[int]) -> int:
        """Index of the largest end in `ends` (ascending) with text[cs:end] within budget, or -1."""
        lo, hi, found = 0, len(ends) - 1, -1
        while lo <= hi:
            mid = (lo + hi) // 2
            if self.fits(cs, ends[mid]):
                found, lo = mid, mid + 1
            else:
                hi = mid - 1
        return found

    def _line_boundaries(self, pos: int, block: _Block) -> list[_Boundary]:
        """Cut points after each non-blank line of the block from `pos` on, up to the budget's reach."""
        doc = self.doc
        limit = pos + self.max_chars  # a cut beyond this cannot fit
        bounds: list[_Boundary] = []
        prev: int | None = None
        for k in range(doc.line_of(pos), block.last_line + 1):
            if doc.is_blank(k):
                continue
            if prev is not None:
                if doc.ends[prev] > limit:
                    break
                bounds.append(_Boundary(doc.ends[prev], doc.starts[k], self._tier(prev, k)))
            prev = k
        return bounds

    def _tier(self, k: int, k_next: int) -> BoundaryTier:
        """How good a cut between line `k` and the next non-blank line `k_next` is."""
        doc = self.doc
        kind = doc.kinds[k]
        if kind == "heading":
            return "heading"
        if kind == "table":
            return "preferred"
        if kind == "para" and (
            _SENTENCE_END_LINE.search(doc.lines[k]) is not None
            or _BLOCK_START.match(doc.lines[k_next]) is not None
            or doc.kinds[k_next] != "para"
        ):
            return "preferred"
        return "any"

    def _best_cut(self, cs: int, pos: int, block: _Block, *, inline: bool) -> _Boundary | None:
        """Where to end a chunk starting at `cs` that takes in the block from `pos` on.

        Only whole lines when `inline` is false (the chunk already holds other blocks); a chunk is
        never ended right after a heading unless nothing else fits.
        """
        bounds = self._line_boundaries(pos, block)
        idx = self._largest_fitting(cs, [b.end for b in bounds])
        best = {tier: -1 for tier in ("heading", "preferred", "any")}
        for j in range(idx + 1):
            best[bounds[j].tier] = j
        any_line = max(best["preferred"], best["any"])
        if any_line >= 0:
            chosen = any_line
            pref = best["preferred"]
            if pref >= 0 and 2 * (bounds[pref].end - cs) >= bounds[any_line].end - cs:
                chosen = pref
            return bounds[chosen]
        if not inline:
            return None
        head = best["heading"]
        line_start = bounds[head].next if head >= 0 else pos
        line = self.doc.line_of(line_start)
        cut = self._inline_cut(cs, line_start, self.doc.ends[line])
        if cut is not None:
            return cut
        return bounds[head] if head >= 0 else None

    def _inline_cut(self, cs: int, start: int, end: int) -> _Boundary | None:
        """Cut inside one line [start, end): at a sentence end, else a word end, else a character.

        When the chunk starts before this line (headings above it), the cut must leave at least half
        of the chunk to the line, and words are never cut: ending after the headings is better.
        """
        text = self.doc.text
        window = min(end, cs + self.max_chars + 1)
        sentences = [m.end() for m in _SENTENCE_END.finditer(text, start, window)]
        words = [m.end() for m in _WORD_END.finditer(text, start, window)]
        s = self._largest_fitting(cs, sentences)
        w = self._largest_fitting(cs, words)
        cut = -1
        if s >= 0 and (w < 0 or 2 * (sentences[s] - cs) >= words[w] - cs):
            cut = sentences[s]
        elif w >= 0:
            cut = words[w]
        elif cs == start:  # a single word over the budget: the last resort
            chars = [c for c in range(start + 1, window) if not text[c - 1].isspace()]
            c = self._largest_fitting(cs, chars)
            if c >= 0:
                cut = chars[c]
        if cut < 0 or 2 * (cut - start) < cut - cs:
            return None
        return _Boundary(cut, self._skip_space(cut, end), "any")
