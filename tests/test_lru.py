"""The byte-bounded LRU table under both inference media caches."""

from __future__ import annotations

import pytest

from llavakit.utils.lru import ByteLRU


def test_bytes_stay_within_the_budget_least_recently_used_first_out():
    table = ByteLRU(10, len)
    assert table.put("a", b"xxxx") and table.put("b", b"xxxx")
    assert table.get("a") == b"xxxx"  # a is now the most recently used
    assert table.put("c", b"xxxx")  # 12 > 10: b goes
    assert table.get("b") is None and table.get("a") == b"xxxx" and table.get("c") == b"xxxx"
    assert (table.bytes, len(table), table.evictions) == (8, 2, 1)
    assert not table.put("huge", b"x" * 11) and table.get("huge") is None and len(table) == 2


def test_replacing_a_key_counts_its_bytes_once_and_discard_where_frees_them():
    table = ByteLRU(100, len)
    table.put(("m1", 1), b"x" * 10)
    table.put(("m1", 1), b"x" * 30)
    table.put(("m2", 1), b"x" * 20)
    assert table.bytes == 50 and len(table) == 2
    assert table.discard_where(lambda key: key[0] == "m1") == 1
    assert table.bytes == 20 and table.values() == [b"x" * 20] and table.evictions == 0
    table.clear()
    assert table.bytes == 0 and len(table) == 0


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        ByteLRU(0, len)
