"""python-openstackclient plugin module (entry point group ``openstack.cli.extension``).

OSC reads API_NAME and the version option to add the command group ``openstack.bmsnap.v1``,
whose entry points are the commands (pyproject.toml). There is no client of our own: the
commands use OSC's openstacksdk connection (client_manager.sdk_connection)."""

API_NAME = "bmsnap"
API_VERSION_OPTION = "os_bmsnap_api_version"
DEFAULT_API_VERSION = "1"
API_VERSIONS = {"1": "bmsnap_openstack"}


def make_client(instance):
    return instance.sdk_connection


def build_option_parser(parser):
    """No global options of our own."""
    return parser
