"""XEP-0198 on an XmlStream's data path: what it writes is counted and kept in batches, and
what it delivered is reported handled once per read, not per stanza.

:class:`SmHooks` is a mixin of :class:`s2sfast.net.stream.XmlStream` (whose slots it uses):
the machine's SmOutbound keeps each stanza written; the end of a write batch (or every
``ack_freq`` stanzas of a long one) asks the machine for its ``<r/>`` and ack timer; inbound
stanzas handled in order within one read are told to the machine as one run.
"""

from __future__ import annotations

__all__ = ["SmHooks"]


class SmHooks:
    """The stream side of XEP-0198's per-stanza bookkeeping, batched."""

    __slots__ = ()

    def _keep_batch(self) -> None:
        """XEP-0198 counts what is written now (the machine's SmOutbound keeps each stanza);
        the end of this write batch is scheduled before the flush, so that its ``<r/>``
        leaves with the stanzas."""
        if self._track_recent:  # the machine keeps every stanza until acknowledged: the
            self._track_recent = False  # writer need not (XmlStream._counted from now on)
        if not self._batching:
            self._batching = True
            self._loop.call_soon(self._batch_end)

    def _batch_end(self) -> None:
        self._batching = False
        if self._kept:
            self._sm_sent()

    def _sm_sent(self) -> None:
        """The stanzas kept since the last call leave now: the machine's ack timer, and an
        ``<r/>`` when its request policy asks for one (once per write or per ack_freq
        stanzas, not per stanza). Run by the flush that hands them to the transport, every
        ack_freq stanzas of a long burst, or by the loop if neither came first."""
        self._kept = 0
        if self._lost or self._close_sent:
            return
        actions = self.machine.sent_batch()
        if actions:
            self._perform(actions)

    def handled(self, seq: int) -> None:
        """XEP-0198: inbound stanza *seq* has left this process (or was answered with an
        error); the router calls this directly, no Handled event per stanza. Within a read,
        a run of stanzas handled in order is told to the machine once, at the run's end (the
        end of the read, or before the peer's ``</stream:stream>`` is taken); outside one
        (a stanza that waited for its next hop) at once."""
        last = self._run_last
        if last >= 0:  # inside _feed
            if last and seq == last + 1:
                self._run_last = seq
                return
            if last:
                self._end_run()
            self._run_first = self._run_last = seq
            return
        if self._lost or self.machine.state in self.machine.FINAL:
            return
        actions = self.machine.handled(seq)
        if actions:
            self._perform(actions)

    def _end_run(self) -> None:
        """Tell the machine about the run of handled stanzas collected in this read."""
        last = self._run_last
        if last <= 0:
            return
        self._run_last = 0
        if self._lost or self.machine.state in self.machine.FINAL:
            return
        actions = self.machine.handled_run(self._run_first, last)
        if actions:
            self._perform(actions)
