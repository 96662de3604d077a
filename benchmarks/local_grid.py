"""An in-process Flower ``Grid``: every node is a Python callable run in its own thread.

Used by the reliability tests and the hostile-client benchmark to drive the real
:class:`server.strategy.BitFedStrategy` / :func:`server.server_app.run_server` against real and
faulty ClientApp handlers without Ray or a SuperLink, while keeping what matters of a real grid:

* a handler that raises comes back as a reply carrying an ``Error``
  (``CLIENT_APP_RAISED_EXCEPTION``), as Flower delivers a crashed ClientApp;
* ``send_and_receive(messages, timeout)`` returns only the replies that arrived within
  ``timeout`` seconds: a node that hangs or vanishes is simply missing, as with a SuperLink;
* every reply is stamped with its source node id.

``concurrency`` bounds how many handlers train at once. Unbounded (the default) is what the
reliability tests need (a hung node must not block the others); benchmarks pass 1: ten
training threads in one CPython process on a 2-core machine spend most of their time passing
the GIL between many small torch ops (a round of the 10-client MNIST MLP took ~50 s with ten
threads against ~6 s one node at a time, measured 2026-12-01).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["Handler", "LocalGrid", "set_server_identity"]

Handler = Callable[[Message], Message]  # one node: instruction message -> reply


def set_server_identity(run_id: int = 1) -> None:
    """Give this process a Flower task identity (messages are stamped with it) if it has none."""
    for attr, value in (("_run_id", run_id), ("_node_id", 0), ("_task_id", 1)):
        if getattr(TaskIdentity, attr, None) is None:
            setattr(TaskIdentity, attr, value)


class LocalGrid:
    """Duck-typed ``flwr.serverapp.Grid`` over in-process handlers, one per node id.

    Parameters
    ----------
    handlers
        ``node id -> handler``; the nodes :meth:`get_node_ids` reports.
    concurrency
        Most handlers running at once (``None``: all of a round's nodes together).
    """

    def __init__(self, handlers: Mapping[int, Handler], concurrency: int | None = None) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1 or None, got {concurrency}")
        set_server_identity()
        self.handlers = dict(handlers)
        self._slots = threading.Semaphore(concurrency) if concurrency else None
        self.sent: list[Message] = []  # every instruction message, for inspection

    def get_node_ids(self) -> list[int]:
        """Ids of the connected nodes."""
        return list(self.handlers)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None):
        """Deliver ``messages`` concurrently; return the replies that arrive within ``timeout``."""
        messages = list(messages)
        self.sent.extend(messages)
        replies: dict[int, Message] = {}
        threads = []
        for i, msg in enumerate(messages):
            thread = threading.Thread(target=self._deliver, args=(i, msg, replies), daemon=True)
            thread.start()
            threads.append(thread)
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [replies[i] for i in sorted(replies) if not threads[i].is_alive()]

    def _deliver(self, index: int, msg: Message, replies: dict[int, Message]) -> None:
        node = msg.metadata.dst_node_id
        try:
            if self._slots is None:
                reply = self.handlers[node](msg)
            else:
                with self._slots:
                    reply = self.handlers[node](msg)
        except Exception as exc:  # a crashed ClientApp becomes an error reply, as in Flower
            reply = Message(
                Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"),
                reply_to=msg,
            )
        reply.metadata.__dict__["_src_node_id"] = node  # the SuperLink stamps the source
        replies[index] = reply
