"""``LeanApp.early_task`` starts with the app's services, before Faust's first group join is done.

Why: Faust starts ``@app.task`` only after its consumer's first join (``App.on_started`` waits for table
recovery, which waits for the first assignment).  The store, the model and the batch reader's own join
start alongside that join.  The join itself needs a broker; here it is held open by hand, the one
stand-in of this test.
"""

from __future__ import annotations

import asyncio

from schemas.settings import Settings
from streams.faust_tuning import lean_app


async def _start_order() -> tuple[list[str], list[str]]:
    app = lean_app(Settings(app_id="early-task-test"))
    ran: list[str] = []

    @app.early_task
    async def opens_the_store() -> None:
        ran.append("early")

    @app.task
    async def a_faust_task() -> None:
        ran.append("faust task")

    joined = asyncio.Event()

    async def first_join_done() -> bool:  # Faust's wait for its first assignment, held open by the test
        await joined.wait()
        return False  # "not stopped"

    app._wait_for_table_recovery_completed = first_join_done  # type: ignore[method-assign]
    starting = asyncio.ensure_future(app.on_started())
    for _ in range(50):
        await asyncio.sleep(0)
    during_join = list(ran)
    joined.set()
    await starting
    for _ in range(50):
        await asyncio.sleep(0)
    for fut in list(app._futures):
        fut.cancel()
    return during_join, ran


def test_an_early_task_runs_during_the_first_join_and_a_faust_task_only_after() -> None:
    during_join, after = asyncio.run(_start_order())
    assert during_join == ["early"]
    assert after == ["early", "faust task"]
