"""Stopping and streaming pieces shared by `Generator.generate`, `stream` and `stream_many`.

One text-level rule everywhere: the new ids are fully decoded (special tokens skipped), the text is cut
before the first stop string, and a stream holds back what the next tokens may still change (an
incomplete UTF-8 character, the start of a stop string). That is why streamed deltas concatenate to
exactly what `generate` returns.
"""
from __future__ import annotations

import queue
import threading


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Cut `text` before the earliest occurrence of any stop string; return (text, found)."""
    if not stop:
        return text, False
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def held_back(text: str, stop: list[str] | None) -> int:
    """How many trailing characters of `text` must wait: an incomplete UTF-8 character (decoded as
    U+FFFD) or the start of a stop string that the next tokens may complete."""
    n = 0
    while n < len(text) and text[len(text) - 1 - n] == "\ufffd":
        n += 1
    for s in stop or ():
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                n = max(n, k)
                break
    return n


class StopStrings:
    """Per-row stopping criterion for stop strings: decodes each row's new ids and checks the text.

    Own code rather than transformers' StopStringCriteria: we need the same text-level rule as the cut
    in `Generator.completion` (and in streaming), and rows must stop independently.
    """

    def __init__(self, tokenizer, stop: list[str], prompt_len: int):
        self.tokenizer, self.stop, self.prompt_len = tokenizer, stop, prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = [cut_at_stop(self.tokenizer.decode(row[self.prompt_len:], skip_special_tokens=True,
                                                  clean_up_tokenization_spaces=False),
                            self.stop)[1] for row in input_ids.tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class CancelRows:
    """Row i stops once its event is set; every row stops once `all_rows` is set (checked after each token)."""

    def __init__(self, rows: list[threading.Event], all_rows: threading.Event):
        self.rows, self.all_rows = rows, all_rows

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        everyone = self.all_rows.is_set()
        return torch.tensor([everyone or e.is_set() for e in self.rows], dtype=torch.bool, device=input_ids.device)


class QueueStreamer:
    """A transformers streamer that hands the new token ids to the consuming thread.

    Decoding happens in `Generator.stream_many` (not in TextIteratorStreamer) so streaming applies exactly
    the same decode + stop-string rule as `generate`.
    """

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self.q.put(("ids", [int(i) for i in value.reshape(-1).tolist()]))  # one new id per row

    def end(self):
        self.q.put(("end", None))
