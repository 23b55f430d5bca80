"""Schemathesis hooks of vmm/tests/schemathesis.rs: how to make the one string format of
api/openapi.json that a pattern cannot say, a node set (`node-set`: ids and inclusive
ranges such as `2-9,12`, each range running upwards over at most 65536 nodes)."""

import schemathesis
from hypothesis import strategies as st

# Node ids are u32; a range's top must fit too.
_LOW = st.integers(min_value=0, max_value=2**32 - 1 - 65535)
_PART = st.one_of(
    _LOW.map(str),
    st.tuples(_LOW, st.integers(min_value=0, max_value=65535)).map(
        lambda r: f"{r[0]}-{r[0] + r[1]}"
    ),
)

schemathesis.openapi.format("node-set", st.lists(_PART, min_size=1, max_size=8).map(",".join))
