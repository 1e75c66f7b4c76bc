"""Glance calls the conductor makes for a snapshot, with the conductor's own [glance] credentials.

The agent gets a token only inside the command parameters of the one command that uploads;
nothing secret is stored on the node. With Keystone, that token is not the conductor's: it comes
from an application credential made for this one snapshot, whose access rules let it read, tag
and upload this one image and nothing else, and which is deleted when the snapshot ends.
"""

import datetime
import hashlib

from ironic.common import exception
from ironic.common import keystone
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1.identity import v3 as ks_v3
from keystoneauth1 import plugin as ks_plugin
from oslo_config import cfg

CONF = cfg.CONF
CONF.register_opts([
    cfg.StrOpt("agent_glance_url",
               help="Glance endpoint as the ramdisk reaches it, when that differs from the "
                    "conductor's (e.g. a provisioning-network address or a NAT); default: the "
                    "endpoint the conductor uses."),
    cfg.StrOpt("upload_credential", default="application_credential",
               choices=["application_credential", "conductor_token"],
               help="What the agent uploads with. application_credential: a token of an "
                    "application credential made per snapshot, restricted by access rules to "
                    "this image (Glance's [keystone_authtoken] needs service_type = image). "
                    "conductor_token: the conductor's own [glance] token (broader)."),
    cfg.IntOpt("upload_credential_hours", default=6, min=1,
               help="Lifetime of a per-snapshot application credential, should its deletion "
                    "at the end of the snapshot ever fail."),
], group="bmsnap")


class SnapshotImageError(exception.IronicException):
    _msg_fmt = "%(msg)s"


def _access_rules(image_id, index_image_id, parent):
    """(method, path) pairs the agent's credential needs: its images, and reading the parent."""
    rules = []
    for own in filter(None, (image_id, index_image_id)):
        path = "/v2/images/%s" % own
        rules += [("GET", path), ("PATCH", path), ("PUT", path + "/file")]
    if parent:
        parent_id, parent_index_id = parent
        rules += [("GET", "/v2/images/%s" % parent_id), ("GET", "/v2/images/%s" % parent_index_id),
                  ("GET", "/v2/images/%s/file" % parent_index_id)]
    return rules


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

    def _identity(self):
        url = self._session.get_endpoint(auth=self._auth, interface=ks_plugin.AUTH_INTERFACE).rstrip("/")
        return url if url.endswith("/v3") else url + "/v3"

    def upload_credential(self, image_id, index_image_id=None, parent=None):
        """(token, application credential id) for the agent to upload IMAGE_ID with.

        With INDEX_IMAGE_ID the agent also uploads the cluster index into that image; with PARENT,
        (parent id, its index image id), it reads the parent and downloads the parent's index.
        (None, None) when Glance runs without auth; (conductor token, None) when the operator
        chose conductor_token.
        """
        return self.access_credential(
            "bmsnap-upload-%s" % image_id,
            "bmsnap snapshot upload of image %s (deleted when it ends)" % image_id,
            _access_rules(image_id, index_image_id, parent),
            "creating the upload credential for image %s" % image_id)

    def access_credential(self, name, description, rules, what):
        """(token, application credential id) of a credential limited to RULES, (method, path)
        pairs on the image service; see upload_credential for the (None, ...) cases."""
        try:
            user_id = self._session.get_user_id(auth=self._auth)
        except Exception:  # noauth plugins have no user and no token
            return None, None
        if not user_id:
            return None, None
        if CONF.bmsnap.upload_credential == "conductor_token":
            return self._session.get_token(self._auth), None
        expires = (datetime.datetime.now(datetime.timezone.utc)
                   + datetime.timedelta(hours=CONF.bmsnap.upload_credential_hours))
        body = {"application_credential": {
            "name": name,
            "description": description,
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S"),
            "access_rules": [{"service": "image", "method": m, "path": p} for m, p in rules],
        }}
        try:
            resp = self._session.post("%s/users/%s/application_credentials" % (self._identity(), user_id),
                                      json=body, auth=self._auth, raise_exc=False)
        except ks_exc.ConnectionError as e:
            raise SnapshotImageError(msg="%s: cannot connect to Keystone (%s)" % (what, type(e).__name__))
        if resp.status_code != 201:
            raise SnapshotImageError(msg="%s: Keystone answered %s (set [bmsnap]upload_credential = "
                                         "conductor_token if application credentials are not allowed)"
                                     % (what, resp.status_code))
        cred = resp.json()["application_credential"]
        try:
            auth = ks_v3.ApplicationCredential(auth_url=self._identity(),
                                               application_credential_id=cred["id"],
                                               application_credential_secret=cred["secret"])
            return self._session.get_token(auth=auth), cred["id"]
        except Exception as e:
            self.delete_upload_credential(cred["id"])
            raise SnapshotImageError(msg="%s: no token from it (%s)" % (what, type(e).__name__))

    def delete_upload_credential(self, cred_id):
        """Deletes the credential (its tokens stop working); True when gone."""
        try:
            user_id = self._session.get_user_id(auth=self._auth)
            resp = self._session.delete("%s/users/%s/application_credentials/%s"
                                        % (self._identity(), user_id, cred_id),
                                        auth=self._auth, raise_exc=False)
            return resp.status_code in (204, 404)
        except Exception:
            return False

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

    def find(self, image_id):
        """The image, or None when Glance says it does not exist (404)."""
        resp = self._request("GET", "/v2/images/%s" % image_id, "reading image %s" % image_id)
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise SnapshotImageError(msg="reading image %s: Glance answered %s"
                                     % (image_id, resp.status_code))
        return resp.json()

    def set_properties(self, image, props):
        """JSON-patches IMAGE (a dict from get()): replace what exists, add the rest."""
        ops = [{"op": "replace" if k in image else "add", "path": "/" + k, "value": v}
               for k, v in props.items()]
        return self._call("PATCH", "/v2/images/%s" % image["id"], "setting the properties of "
                          "image %s" % image["id"], json=ops,
                          headers={"Content-Type": "application/openstack-images-v2.1-json-patch"}).json()

    def sha256(self, image_id, max_bytes):
        """SHA-256 of the image data (a small image: a cluster index), None past MAX_BYTES."""
        resp = self._call("GET", "/v2/images/%s/file" % image_id, "downloading image %s" % image_id,
                          stream=True)
        digest, size = hashlib.sha256(), 0
        for chunk in resp.iter_content(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                resp.close()
                return None
            digest.update(chunk)
        return digest.hexdigest()

    def delete(self, image_id):
        resp = self._request("DELETE", "/v2/images/%s" % image_id, "deleting image %s" % image_id)
        if resp.status_code not in (204, 404):
            raise SnapshotImageError(msg="deleting image %s: Glance answered %s"
                                     % (image_id, resp.status_code))
