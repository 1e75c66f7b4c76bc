"""Ironic's agent client, made unable to leak the agent token, for every call a bmsnap task makes.

Ironic 29's ``AgentClient`` sends the agent token as a query parameter. When the agent is gone
(killed, powered off, rebooting) requests raises an error whose text quotes the URL, token
included, and Ironic logs that text and puts it into the node's ``last_error``. Replacing the
error text where requests raises it covers every path that reports it, Ironic's own included.

``agent_client.get_client(task)`` returns ``task.cached_agent_client`` when there is one, so
installing this client on the task is enough; nothing global is patched.
"""

import re

import requests

from ironic.drivers.modules import agent_client

_TOKEN_IN_TEXT = re.compile(r"(agent_token=)[^&\s'\")]+")


def mask_agent_token(text):
    return _TOKEN_IN_TEXT.sub(r"\1***", text)


class TokenMaskingSession(requests.Session):
    """A requests session whose errors never quote the agent token."""

    def request(self, *args, **kwargs):
        try:
            return super(TokenMaskingSession, self).request(*args, **kwargs)
        except requests.RequestException as e:
            # Same class (Ironic tells connection failures and timeouts apart by class), masked
            # text, and no chained original: a logged traceback would print that one too.
            text = mask_agent_token(str(e))
            try:
                masked = type(e)(text, response=e.response)
            except Exception:   # a subclass with another constructor
                masked = requests.RequestException(text, response=e.response)
            raise masked from None


class TokenSafeAgentClient(agent_client.AgentClient):
    """``AgentClient`` over a TokenMaskingSession; can hand out one status it already has."""

    def __init__(self):
        super(TokenSafeAgentClient, self).__init__()
        session = TokenMaskingSession()
        session.headers.update(self.session.headers)
        self.session = session
        self._known_commands = None

    def reuse_commands_once(self, commands):
        """The next get_commands_status returns COMMANDS instead of asking the agent again.

        (Asking twice per heartbeat leaves a window in which the agent can die between the
        answers, turning a quiet wait for the service timeout into a connection failure.)
        """
        self._known_commands = commands

    def get_commands_status(self, node, *args, **kwargs):
        if self._known_commands is not None:
            commands, self._known_commands = self._known_commands, None
            return commands
        return super(TokenSafeAgentClient, self).get_commands_status(node, *args, **kwargs)


def install(task):
    """The task's agent client, made a TokenSafeAgentClient if it is not one yet."""
    client = getattr(task, "cached_agent_client", None)
    if not isinstance(client, TokenSafeAgentClient):
        client = TokenSafeAgentClient()
        task.cached_agent_client = client
    return client
