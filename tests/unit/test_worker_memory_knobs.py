"""What bounds a worker's memory in a catch-up: Faust's stream buffer and glibc's malloc arenas.

``bench.memory`` measures the effect (peak RSS of a 200 000-event catch-up); these keep the choices
it rests on.
"""

from __future__ import annotations

import platform

import pytest

from interest.worker_cmd import limit_malloc_arenas
from schemas.settings import Settings
from streams.faust_tuning import lean_app, stream_buffer


def test_with_the_batch_reader_faust_buffers_two_update_batches_of_envelopes_not_4096() -> None:
    batch = Settings(update_batch_envelopes=100)
    assert stream_buffer(batch, reads_raw=False) == 200
    assert lean_app(batch).conf.stream_buffer_maxsize == 200


def test_a_faust_agent_on_the_raw_topics_keeps_the_large_buffer() -> None:
    faust_reader = Settings(ingest_reader="faust", batch_size=3000)
    assert lean_app(faust_reader).conf.stream_buffer_maxsize == 6000
    update_only = Settings(ingest_reader="faust", worker_stages="update", update_batch_envelopes=100)
    assert lean_app(update_only).conf.stream_buffer_maxsize == 200  # it reads the person topic only


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_arena_cap_is_applied_on_glibc() -> None:
    assert limit_malloc_arenas(2) is True


def test_zero_leaves_glibcs_default() -> None:
    assert limit_malloc_arenas(0) is False
