"""Reads a `GET /operations/{id}` answer member by member, without paying for `data.metrics`.

A ktrdr backend of 2026 sends `data.metrics` on a training poll as a malformed list that grows
with every epoch (100+ KB on long trainings), and a host that keeps every epoch grows ~223
bytes per epoch: 22 MB at 100,000 epochs, 0.4 s for `json.loads` on every poll. The chain
needs none of it (the December 2025 backend's `{"epochs": [...]}` gives the last epoch's
losses, nothing more). So the answer is read as it streams in: every other member is decoded
with the C scanner, `data.metrics` is skipped by a possessive regex (no objects built) or, when
it arrives after everything the chain reads (ktrdr's field order), not downloaded at all.
An answer of at most `WHOLE_ANSWER_BYTES` (a short training's polls) costs less decoded
whole, and is. Pure: no I/O, no HTTP; it takes an iterator of byte chunks and raises
`ValueError` with a one-line reason.
"""

from __future__ import annotations

import codecs
import itertools
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

# What the chain reads from `data`; once all of them are in, nothing after `metrics` matters.
NEEDED = frozenset({"status", "progress", "error_message", "result_summary"})
# A `{"epochs": [...]}` metrics object up to this size is decoded for its last epoch.
METRICS_DECODE_CHARS = 256 * 1024
# An answer this small is decoded whole: its `metrics` cannot cost what the walk avoids.
WHOLE_ANSWER_BYTES = 64 * 1024

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
_STRING = r'"(?:[^"\\]++|\\.)*+"'


def _nested(depth: int) -> re.Pattern[str]:
    """A JSON array/object body nested at most `depth` deep, matched without backtracking."""
    inner = r'[^"\[\]{}]*+'
    for _ in range(depth):
        inner = rf'(?:{_STRING}|[^"\[\]{{}}]++|\[{inner}\]|\{{{inner}\}})*+'
    return re.compile(rf"\[{inner}\]|\{{{inner}\}}")


_CONTAINER = _nested(8)


class _Stream:
    """The text received so far, read further on demand, with both size limits checked."""

    def __init__(self, chunks: Iterator[bytes], max_total_bytes: int, max_kept_chars: int) -> None:
        self._chunks = chunks
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.received = 0
        self.exhausted = False
        # Characters of `data.metrics` and `data.result_summary`, which the kept limit does not
        # count: the result of a long training holds its whole loss history (8 MB at 100,000
        # epochs) and arrives once; only `max_total_bytes` bounds them.
        self.skipped = 0
        self.max_total_bytes = max_total_bytes
        self.max_kept_chars = max_kept_chars

    def more(self) -> None:
        """At least double the text (amortised linear), or raise at the end of the body."""
        if self.exhausted:
            raise ValueError("the answer ends in the middle of a JSON value")
        target = max(2 * len(self.text), 64 * 1024)
        pieces = [self.text]
        size = len(self.text)
        while size < target:
            chunk = next(self._chunks, None)
            if chunk is None:
                pieces.append(self._decoder.decode(b"", final=True))
                self.exhausted = True
                break
            self.received += len(chunk)
            if self.received > self.max_total_bytes:
                raise ValueError(f"sent more than {self.max_total_bytes // (1024 * 1024)} MiB")
            piece = self._decoder.decode(chunk)
            pieces.append(piece)
            size += len(piece)
        self.text = "".join(pieces)

    def skip_space(self, pos: int) -> int:
        while True:
            pos = _SPACE.match(self.text, pos).end()  # type: ignore[union-attr]
            if pos < len(self.text) or self.exhausted:
                return pos
            self.more()

    def peek(self, pos: int) -> str:
        """The next non-space character ('' at the end)."""
        pos = self.skip_space(pos)
        return self.text[pos : pos + 1]

    def expect(self, pos: int, chars: str) -> tuple[str, int]:
        """The next non-space character, which must be one of `chars`, and the position after."""
        pos = self.skip_space(pos)
        if pos >= len(self.text) or self.text[pos] not in chars:
            found = self.text[pos : pos + 20] or "the end"
            raise ValueError(f"expected one of {chars!r} at character {pos}, found {found!r}")
        return self.text[pos], pos + 1

    def value(self, pos: int, exempt: bool = False) -> tuple[Any, int]:
        """One JSON value decoded by the C scanner, reading more until it is complete.

        An `exempt` value does not count against the kept limit.
        """
        pos = self.skip_space(pos)
        if exempt:
            start_skipped = self.skipped
            self.skipped = 1 << 62  # no kept limit while it is read
            try:
                value, end = self.value(pos)
            finally:
                self.skipped = start_skipped
            self.skipped += end - pos
            return value, end
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, pos)
            except json.JSONDecodeError as exc:
                if self.exhausted:
                    raise ValueError(f"not JSON: {exc}") from None
            except RecursionError:
                raise ValueError("not JSON: nested too deeply") from None
            else:
                # A number at the very end of the text may go on in the next chunk.
                if end < len(self.text) or self.exhausted:
                    self._check_kept(end)
                    return value, end
            self._check_kept(len(self.text))
            self.more()

    def _check_kept(self, pos: int) -> None:
        if pos - self.skipped > self.max_kept_chars:
            raise ValueError(
                f"sent more than {self.max_kept_chars // (1024 * 1024)} MiB outside data.metrics "
                "and data.result_summary"
            )

    def skip(self, pos: int, keep_chars: int, may_stop: bool) -> tuple[str | None, int | None]:
        """Pass over one value without building it; its text when at most `keep_chars` long.

        With `may_stop`, a value found longer than `keep_chars` is not read to its end: the
        position returned is then None.
        """
        pos = self.skip_space(pos)
        if self.text[pos : pos + 1] not in ("[", "{"):
            value, end = self.value(pos)
            return json.dumps(value), end
        start_skipped = self.skipped
        while True:
            match = _CONTAINER.match(self.text, pos)
            if match:
                self.skipped = start_skipped + match.end() - pos
                kept = match.group() if match.end() - pos <= keep_chars else None
                return kept, match.end()
            if self.exhausted:
                # Deeper than the pattern: the C scanner knows any depth (and any error).
                _, end = self.value(pos)
                self.skipped = start_skipped + end - pos
                return None, end
            self.skipped = start_skipped + len(self.text) - pos
            if may_stop:
                if len(self.text) - pos > keep_chars:
                    return None, None
                self.more()
                continue
            # Matching again after every chunk would be quadratic: read to the end, match once.
            while not self.exhausted:
                self.more()
                self.skipped = start_skipped + len(self.text) - pos


def _last_epoch_only(text: str | None) -> dict[str, Any]:
    """`_last_epoch_of` the metrics kept as text (None: too long to keep)."""
    if text is None or not text.startswith("{"):
        return {}
    return _last_epoch_of(json.loads(text))


def _last_epoch_of(metrics: Any) -> dict[str, Any]:
    """The December 2025 shape `{"epochs": [...]}` reduced to its last epoch; else nothing."""
    epochs = metrics.get("epochs") if isinstance(metrics, dict) else None
    return {"epochs": epochs[-1:]} if isinstance(epochs, list) else {}


Member = Callable[[str, int], "int | None"]


def _object(stream: _Stream, pos: int, member: Member) -> int | None:
    """Walk an object whose `{` ends before `pos`; `member` consumes each value.

    Returns the position after the closing `}`, or None when `member` stopped the walk.
    """
    char, pos = stream.expect(pos, '}"')
    if char == "}":
        return pos
    pos -= 1
    while True:
        key, pos = stream.value(pos)
        _, pos = stream.expect(pos, ":")
        after = member(key, pos)
        if after is None:
            return None
        char, pos = stream.expect(after, ",}")
        if char == "}":
            return pos


def read_operation_answer(
    chunks: Iterator[bytes], *, max_total_bytes: int, max_kept_bytes: int
) -> Any:
    """The decoded answer, `data.metrics` reduced to what the chain reads (or left out).

    `max_kept_bytes` bounds everything but `data.metrics` and `data.result_summary`;
    `max_total_bytes` bounds the body. A whole answer of at most `WHOLE_ANSWER_BYTES` (every
    poll of a short training) is decoded at once by the C decoder, about 6x faster than the
    walk; one it refuses (today's malformed `metrics`) is walked like a long one.
    """
    head: list[bytes] = []
    size = 0
    for chunk in chunks:
        head.append(chunk)
        size += len(chunk)
        if size > min(WHOLE_ANSWER_BYTES, max_kept_bytes):
            break
    else:
        body = b"".join(head)
        try:
            return _reduced(json.loads(body))
        except (ValueError, RecursionError):
            chunks = iter(())
    return _walk(itertools.chain(head, chunks), max_total_bytes, max_kept_bytes)


def _reduced(answer: Any) -> Any:
    """A decoded answer with `data.metrics` as the walk leaves it."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if isinstance(data, dict) and "metrics" in data:
        data["metrics"] = _last_epoch_of(data["metrics"])
    return answer


def _walk(chunks: Iterator[bytes], max_total_bytes: int, max_kept_bytes: int) -> Any:
    """The answer read member by member (see the module's docstring)."""
    stream = _Stream(chunks, max_total_bytes, max_kept_bytes)
    pos = stream.skip_space(0)
    if stream.text[pos : pos + 1] != "{":
        value, end = stream.value(pos)
        _expect_end(stream, end)
        return value
    answer: dict[str, Any] = {}

    def data_member(data: dict[str, Any]) -> Member:
        def read(key: str, pos: int) -> int | None:
            if key != "metrics":
                data[key], pos = stream.value(pos, exempt=key == "result_summary")
                return pos
            # Once everything the chain reads is in, the rest of the body is not downloaded:
            # not a list (today's ktrdr), nor an epochs history too long to keep.
            may_stop = data.keys() >= NEEDED
            if may_stop and stream.peek(pos) == "[":
                return None
            text, end = stream.skip(pos, METRICS_DECODE_CHARS, may_stop)
            data["metrics"] = _last_epoch_only(text)
            return end

        return read

    def top_member(key: str, pos: int) -> int | None:
        if key == "data" and stream.peek(pos) == "{":
            answer["data"] = data = {}
            return _object(stream, stream.skip_space(pos) + 1, data_member(data))
        answer[key], pos = stream.value(pos)
        return pos

    end = _object(stream, pos + 1, top_member)
    if end is not None:
        _expect_end(stream, end)
    return answer


def _expect_end(stream: _Stream, pos: int) -> None:
    pos = stream.skip_space(pos)
    if pos < len(stream.text):
        raise ValueError(f"not JSON: extra data at character {pos}")
