"""Deploying a bmsnap image: the conductor side of the agent's in-band ``write_image``.

A bmsnap image with a cluster index (``bmsnap_index_image``) - a full snapshot or a delta on
parents (``bmsnap_parent_image``) - is written by the bmsnap ramdisk itself, straight from
Glance: used clusters only, each checked against the index. Stock ``write_image`` would have the
conductor download the top image, convert it to raw (a delta alone is not the disk) and serve
it; here nothing is cached on the conductor. The agent gets the Glance endpoint and a read-only
token in the parameters of the one command that writes - never in step args or node fields -
from an application credential whose access rules let it read these images and nothing else,
deleted when the write ends. Images without an index go the stock way (ironic-python-agent).
"""

import uuid

from ironic.common import exception
from ironic.common import states
from ironic.common.glance_service import service_utils
from ironic.conductor import utils as manager_utils
from oslo_log import log

from bmsnap_ironic import safe_agent_client
from bmsnap_ironic.glance import GlanceImages

LOG = log.getLogger(__name__)

#: driver_internal_info key of the running / last image write (never anything secret).
INFO = "bmsnap_deploy"
INDEX = "bmsnap_index_image"
PARENT = "bmsnap_parent_image"
#: deeper than this is a loop or a mistake (the agent checks every link again)
MAX_CHAIN = 64


def bmsnap_image(task):
    """The Glance image the node deploys when the bmsnap ramdisk writes it (it has an index), else None."""
    source = task.node.instance_info.get("image_source")
    if not source or not service_utils.is_glance_image(source):
        return None
    image = GlanceImages().get(service_utils.parse_image_id(source))
    return image if image.get(INDEX) else None


def set_instance_info(task, image):
    """What Ironic's own _update_instance_info would record, without caching the image."""
    node = task.node
    info = dict(node.instance_info)
    info.update({"image_url": None, "image_disk_format": image.get("disk_format"),
                 "image_container_format": image.get("container_format"),
                 "image_checksum": image.get("checksum"),
                 "image_os_hash_algo": image.get("os_hash_algo"),
                 "image_os_hash_value": image.get("os_hash_value")})
    node.instance_info = info
    node.save()


def _chain(images, top):
    """The image ids of TOP's chain, top first: each parent exists and is active."""
    ids, image = [top["id"]], top
    while image.get(PARENT):
        parent_id = image[PARENT]
        if parent_id in ids or len(ids) >= MAX_CHAIN:
            raise exception.InstanceDeployFailure(
                "the chain of image %s loops or is deeper than %d images" % (top["id"], MAX_CHAIN))
        parent = images.find(parent_id)
        if parent is None or parent.get("status") != "active":
            raise exception.InstanceDeployFailure(
                "image %s is a delta on image %s, which is %s: it cannot be deployed without it"
                % (image["id"], parent_id, "gone" if parent is None else parent.get("status")))
        ids.append(parent_id)
        image = parent
    return ids


def _read_rules(top, chain):
    """What the agent reads: each image of the chain and its data, and the top image's index."""
    rules = []
    for image_id in chain:
        path = "/v2/images/%s" % image_id
        rules += [("GET", path), ("GET", path + "/file")]
    return rules + [("GET", "/v2/images/%s/file" % top[INDEX])]


def start_write(task, image):
    """Sends the agent write_image with a read credential; DEPLOYWAIT (the heartbeat follows it)."""
    node = task.node
    images = GlanceImages()
    chain = _chain(images, image)
    token, cred_id = images.access_credential(
        # unique: one left behind by a failed delete (it expires) must not block the next deploy
        "bmsnap-deploy-%s-%s" % (node.uuid, uuid.uuid4().hex[:8]),
        "bmsnap deploy of image %s on node %s (deleted when the write ends)" % (image["id"], node.uuid),
        _read_rules(image, chain), "creating the read credential for image %s" % image["id"])
    node.set_driver_internal_info(INFO, {"image_id": image["id"], "chain": chain, "state": "writing",
                                         "credential": cred_id})
    node.save()
    step = {"interface": "deploy", "step": "write_image",
            "args": {"image_info": {"id": image["id"], "disk_format": image.get("disk_format"),
                                    "chain": chain}}}
    params = {
        "step": step,
        "node": node.as_dict(secure=True),
        "ports": [p.as_dict() for p in task.ports],
        "deploy_version": node.driver_internal_info.get("hardware_manager_version"),
        # Only here: in the body of this one request to the agent.
        "bmsnap": {"glance_url": images.agent_endpoint, "token": token, "image_id": image["id"]},
    }
    try:
        safe_agent_client.install(task)._command(node=node, method="deploy.execute_deploy_step",
                                                 params=params)
    except Exception:
        end_write(task, "failed")
        raise
    LOG.info("Node %s: the agent writes image %s (a chain of %d)", node.uuid, image["id"], len(chain))
    return states.DEPLOYWAIT


def follow_write(task, commands):
    """On a heartbeat in deploy wait: once the agent's write ended, revoke its credential and
    check it wrote the chain the conductor resolved. False when that fails the deploy."""
    node = task.node
    info = node.driver_internal_info.get(INFO) or {}
    last = commands[-1] if commands else None
    if info.get("state") != "writing" or not last or last.get("command_name") != "execute_deploy_step":
        return True
    status = last.get("command_status")
    if status == "RUNNING":
        return True
    result = (last.get("command_result") or {}).get("deploy_result") or {}
    end_write(task, "written" if status == "SUCCEEDED" else "failed", result)
    if status == "SUCCEEDED" and result.get("chain") != info.get("chain"):
        manager_utils.deploying_error_handler(
            task, "the agent wrote the chain %s, not %s" % (result.get("chain"), info.get("chain")))
        return False
    return True


def end_write(task, state, result=None):
    """Records how the write ended (sizes, no secrets) and deletes the read credential."""
    node = task.node
    info = dict(node.driver_internal_info.get(INFO) or {})
    if not info:
        return
    cred_id = info.pop("credential", None)
    if cred_id and not GlanceImages().delete_upload_credential(cred_id):
        info["credential"] = cred_id   # the next try (clean_up); it expires anyway
    info["state"] = state
    for key in ("device", "bytesWritten", "clusters", "zeroClusters", "seconds"):
        if result and key in result:
            info[key] = result[key]
    node.set_driver_internal_info(INFO, info)
    node.save()
