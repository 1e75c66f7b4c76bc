"""What a snapshot request can fail with. Every message is one line, fit to show as is, and
never carries a token or password."""


class BmsnapError(Exception):
    """Base of every bmsnap_openstack error."""


class UsageError(BmsnapError):
    """Bad arguments (found before anything is contacted)."""


class AuthError(BmsnapError):
    """No usable credentials, or Keystone refused them."""


class NotFoundError(BmsnapError):
    """No such server or node (or none this project may see)."""


class ApiError(BmsnapError):
    """Ironic or Nova refused a request or could not be reached."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class SnapshotFailedError(BmsnapError):
    """The node is in no state to be snapshotted, or the snapshot step failed.

    ``node`` is the node's UUID, ``last_error`` what Ironic recorded (may span lines).
    """

    def __init__(self, message, node, last_error=None):
        super().__init__(message)
        self.node = node
        self.last_error = last_error


class WaitTimeoutError(BmsnapError):
    """The timeout passed while the snapshot was still running (it goes on on the node)."""
