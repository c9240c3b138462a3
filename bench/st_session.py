"""A dashboard session without a browser: Streamlit's own websocket protocol, spoken directly.

A Streamlit page load is one websocket message from the browser (a ``BackMsg`` asking to rerun
the script for a page and query string) answered by the server's ``ForwardMsg`` stream (the
page's elements), ending with ``script_finished``. `Session` sends exactly that message on its
own connection, so the server sees a real, separate session (its own session state, caches and
script thread) while the client costs almost no CPU; the time to ``script_finished`` is the
server's share of a page load. Fragments with ``run_every`` are re-run as the browser does:
when the server sends ``auto_rerun`` the session schedules the same fragment reruns itself, so
N sessions load the server as N open browser tabs would.

Used by bench/queue_load.py; a browser is still used there for the full page-load figure.
"""

from __future__ import annotations

import asyncio
import time

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.asyncio.client import connect

FINISHED = ForwardMsg.ScriptFinishedStatus.FINISHED_SUCCESSFULLY
EARLY = ForwardMsg.ScriptFinishedStatus.FINISHED_EARLY_FOR_RERUN
FRAGMENT_FINISHED = ForwardMsg.ScriptFinishedStatus.FINISHED_FRAGMENT_RUN_SUCCESSFULLY


class PageLoadError(RuntimeError):
    """The page's script did not finish (an exception in the page, a timeout, a closed socket)."""


class Session:
    """One websocket session on a running `streamlit run` server at ``base`` (http://host:port)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._auto: dict[str, asyncio.Task] = {}  # fragment id -> its rerun timer
        self._finished: asyncio.Queue[int] = asyncio.Queue()
        self._exceptions = 0
        self._page_hash = ""  # of the page last loaded (new_session tells it)
        self._query = ""
        self.fragment_runs = 0

    async def __aenter__(self) -> Session:
        url = self.base.replace("http://", "ws://", 1) + "/_stcore/stream"
        self._ws = await connect(
            url, subprotocols=["streamlit"], origin=self.base, max_size=None, open_timeout=60
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        for task in [*self._auto.values(), self._reader]:
            if task is not None:
                task.cancel()
        await self._ws.close()

    async def load(self, page: str, query: str = "", timeout: float = 60.0) -> float:
        """Rerun the script for ``page`` (its url_path) and ``query``; seconds to finished."""
        self._stop_auto_reruns()  # a new page: the old page's fragments stop, as in a browser
        while not self._finished.empty():
            self._finished.get_nowait()
        exceptions_before = self._exceptions
        msg = BackMsg()
        msg.rerun_script.page_name = page
        msg.rerun_script.query_string = self._query = query
        t0 = time.perf_counter()
        await self._ws.send(msg.SerializeToString())
        status = EARLY
        while status == EARLY:  # st.switch_page / st.rerun: the next run is the page's
            left = timeout - (time.perf_counter() - t0)
            try:
                status = await asyncio.wait_for(self._finished.get(), max(left, 0.0))
            except TimeoutError as err:
                raise PageLoadError(f"/{page}?{query}: not finished in {timeout:.0f} s") from err
        elapsed = time.perf_counter() - t0
        if status != FINISHED:
            raise PageLoadError(f"/{page}?{query}: script ended with status {status}")
        if self._exceptions > exceptions_before:
            raise PageLoadError(f"/{page}?{query}: the page showed an exception")
        return elapsed

    def _stop_auto_reruns(self) -> None:
        for task in self._auto.values():
            task.cancel()
        self._auto.clear()

    async def _read(self) -> None:
        async for data in self._ws:
            msg = ForwardMsg()
            msg.ParseFromString(data)
            kind = msg.WhichOneof("type")
            if kind == "new_session":
                self._page_hash = msg.new_session.page_script_hash
            elif kind == "script_finished":
                if msg.script_finished == FRAGMENT_FINISHED:
                    self.fragment_runs += 1
                else:
                    self._finished.put_nowait(msg.script_finished)
            elif kind == "delta" and msg.delta.new_element.WhichOneof("type") == "exception":
                self._exceptions += 1
            elif kind == "auto_rerun":
                old = self._auto.pop(msg.auto_rerun.fragment_id, None)
                if old is not None:
                    old.cancel()
                self._auto[msg.auto_rerun.fragment_id] = asyncio.create_task(
                    self._rerun_every(msg.auto_rerun.interval, msg.auto_rerun.fragment_id)
                )
            elif kind == "stop_auto_rerun":
                self._stop_auto_reruns()

    async def _rerun_every(self, interval: float, fragment_id: str) -> None:
        while True:
            await asyncio.sleep(interval)
            msg = BackMsg()
            msg.rerun_script.fragment_id = fragment_id
            msg.rerun_script.is_auto_rerun = True
            msg.rerun_script.page_script_hash = self._page_hash
            msg.rerun_script.query_string = self._query
            await self._ws.send(msg.SerializeToString())
