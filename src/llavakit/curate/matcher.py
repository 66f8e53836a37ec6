"""Find the metadata entries a caption contains: one Aho-Corasick pass over the caption's normal form.

Entries and captions are both written as space-padded token text (``text.spaced``), so the automaton
(pyahocorasick, C) only ever reports whole-token matches; overlapping matches ("new york" and
"york city" in "new york city") are all reported. Each entry counts once per caption.
"""

from __future__ import annotations

import ahocorasick

from llavakit.curate.text import entry_key, spaced


class Matcher:
    def __init__(self, entries: list[str], case_sensitive: bool = False):
        self.entries = entries
        self.case_sensitive = case_sensitive
        self._automaton = ahocorasick.Automaton()
        # Entries with the same normal form (e.g. "Apple" and "apple" matched case-insensitively, or
        # duplicates in a foreign list) all count: the automaton stores the first id, aliases the rest.
        self._aliases: dict[int, list[int]] = {}
        first: dict[str, int] = {}
        self.unmatchable = 0  # entries with no word character: never matched
        for i, entry in enumerate(entries):
            key = entry_key(entry, case_sensitive)
            if key is None:
                self.unmatchable += 1
            elif key in first:
                self._aliases.setdefault(first[key], [first[key]]).append(i)
            else:
                first[key] = i
                self._automaton.add_word(key, i)
        self._empty = not first
        if not self._empty:
            self._automaton.make_automaton()

    def match(self, text: str) -> list[int]:
        """Sorted ids of the entries that occur in ``text``."""
        if self._empty:
            return []
        ids = {i for _, i in self._automaton.iter(spaced(text, self.case_sensitive))}
        if self._aliases:
            for i in [i for i in ids if i in self._aliases]:
                ids.update(self._aliases[i])
        return sorted(ids)
