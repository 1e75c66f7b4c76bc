"""Glance calls the conductor makes for a snapshot, with the conductor's own [glance] credentials.

The agent gets a token only inside the command parameters of the one command that uploads;
nothing secret is stored on the node.
"""

from ironic.common import exception
from ironic.common import keystone
from keystoneauth1 import exceptions as ks_exc
from oslo_config import cfg

CONF = cfg.CONF
CONF.register_opts([
    cfg.StrOpt("agent_glance_url",
               help="Glance endpoint as the ramdisk reaches it, when that differs from the "
                    "conductor's (e.g. a provisioning-network address or a NAT); default: the "
                    "endpoint the conductor uses."),
], group="bmsnap")


class SnapshotImageError(exception.IronicException):
    _msg_fmt = "%(msg)s"


class GlanceImages(object):
    def __init__(self):
        self._auth = keystone.get_auth("glance")
        self._session = keystone.get_session("glance", auth=self._auth)
        self.endpoint = keystone.get_endpoint("glance", session=self._session, auth=self._auth).rstrip("/")
        if self.endpoint.endswith("/v2"):
            self.endpoint = self.endpoint[:-3]

    @property
    def agent_endpoint(self):
        """The endpoint the agent uploads to."""
        url = (CONF.bmsnap.agent_glance_url or self.endpoint).rstrip("/")
        return url[:-3] if url.endswith("/v2") else url

    def token(self):
        """A token the agent can upload with (None when Glance runs without auth)."""
        try:
            return self._session.get_token(self._auth)
        except Exception:  # noauth plugins have no token
            return None

    def _request(self, method, path, what, **kwargs):
        try:
            return self._session.request(self.endpoint + path, method, auth=self._auth,
                                         raise_exc=False, **kwargs)
        except ks_exc.ConnectionError as e:
            # One line for last_error, not urllib3's pool/retry internals.
            raise SnapshotImageError(msg="%s: cannot connect to Glance at %s (%s)"
                                     % (what, self.endpoint, type(e).__name__))

    def _call(self, method, path, what, **kwargs):
        resp = self._request(method, path, what, **kwargs)
        if resp.status_code >= 400:
            raise SnapshotImageError(msg="%s: Glance answered %s" % (what, resp.status_code))
        return resp

    def create(self, name, disk_format, visibility, owner, properties):
        body = dict(properties)
        body.update({"name": name, "disk_format": disk_format, "container_format": "bare",
                     "visibility": visibility})
        if owner:
            body["owner"] = owner
        return self._call("POST", "/v2/images", "creating image %s" % name, json=body).json()

    def get(self, image_id):
        return self._call("GET", "/v2/images/%s" % image_id, "reading image %s" % image_id).json()

    def delete(self, image_id):
        resp = self._request("DELETE", "/v2/images/%s" % image_id, "deleting image %s" % image_id)
        if resp.status_code not in (204, 404):
            raise SnapshotImageError(msg="deleting image %s: Glance answered %s"
                                     % (image_id, resp.status_code))
