"""Progress of one request in bytes, for the caller's callback, fed by huggingface_hub's bars."""

from __future__ import annotations

from collections.abc import Callable

from huggingface_hub.utils import tqdm as hub_tqdm

ProgressCallback = Callable[[int, int], None]


class Stopped(Exception):
    """The caller's progress callback raised (a cancelled prompt): its error, carried through huggingface_hub."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class Progress:
    """Bytes done of the whole request; ``report`` raises ``Stopped`` when the callback did."""

    def __init__(self, callback: ProgressCallback | None, total: int, done: int):
        self.callback, self.total, self.done = callback, total, done
        self.bar_class = self._bar_class()

    def advance(self, count: int) -> None:
        self.done = max(0, self.done + count)  # huggingface_hub counts back when a server ignores a range
        self.report()

    def report(self) -> None:
        if self.callback is not None:
            try:
                self.callback(min(self.done, self.total), self.total)
            except Exception as e:
                raise Stopped(e) from e

    def _bar_class(self) -> type:
        progress = self

        class RequestBar(hub_tqdm):
            """One file's bar as huggingface_hub drives it; counts into the request's total, shows nothing."""

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **{**kwargs, "disable": True})  # bytes resumed are counted already

            def update(self, n=1):
                progress.advance(n or 0)

        return RequestBar
