"""What ``openstack baremetal node snapshot --wait`` shows on stderr while it waits: each new
provision state on a line of its own and, on a terminal, one live line with the copy's progress
(rewritten in place)."""


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1024.0


def describe(p):
    """'copy 42% (1.2 GiB of 2.9 GiB, 85 MB/s)' for a Progress with a phase, else ''."""
    if not p.phase:
        return ""
    parts = []
    if p.bytes is not None:
        parts.append(human_bytes(p.bytes) + (" of " + human_bytes(p.total) if p.total else ""))
    if p.mb_per_s is not None:
        parts.append("%s MB/s" % p.mb_per_s)
    percent = " %s%%" % p.percent if p.percent is not None else ""
    return "%s%s%s" % (p.phase, percent, " (%s)" % ", ".join(parts) if parts else "")


class ProgressLine:
    def __init__(self, stream, node_label):
        self._out = stream
        self._tty = hasattr(stream, "isatty") and stream.isatty()
        self._node = node_label
        self._state = None
        self._live = False

    def update(self, p):
        if p.provision_state != self._state:
            self._state = p.provision_state
            self._write("node %s: %s\n" % (self._node, p.provision_state))
        text = describe(p)
        if self._tty and text:
            self._out.write("\r\x1b[K%s: %s" % (self._node, text))
            self._live = True
            self._out.flush()

    def done(self):
        if self._live:
            self._out.write("\r\x1b[K")
            self._live = False
            self._out.flush()

    def _write(self, line):
        self.done()
        self._out.write(line)
        self._out.flush()
