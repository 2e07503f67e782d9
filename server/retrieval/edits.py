"""Where the user edited last in each file: the `edits` source of context from other files."""

from __future__ import annotations

import itertools
from collections import OrderedDict

EDIT_CONTEXT = 2  # lines around an edited line that go with it
EDITS_KEPT = 16  # edited places remembered (other files)


class RecentEdits:
    """The places the user edited last: (uri, line), most recent last, at most `EDITS_KEPT`."""

    def __init__(self) -> None:
        self.places: OrderedDict[tuple[str, int], float] = OrderedDict()
        self.last_edit: dict[str, float] = {}  # uri → when it was last edited (monotonic counter)
        self._clock = itertools.count(1)

    def edited(self, uri: str, line: int | None) -> None:
        tick = float(next(self._clock))
        self.last_edit[uri] = tick
        if line is None:
            return
        # Nearby lines are one place: typing along a line moves nothing.
        for (u, ln) in list(self.places):
            if u == uri and abs(ln - line) <= EDIT_CONTEXT:
                del self.places[(u, ln)]
        self.places[(uri, line)] = tick
        while len(self.places) > EDITS_KEPT:
            self.places.popitem(last=False)

    def forget(self, uri: str) -> None:
        for key in [k for k in self.places if k[0] == uri]:
            del self.places[key]
        self.last_edit.pop(uri, None)
