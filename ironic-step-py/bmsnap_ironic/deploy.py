"""``bmsnap`` deploy interface: ``direct`` deploy plus a conductor-side ``snapshot`` service step.

Why a conductor side at all (the agent alone also advertises ``deploy.snapshot``):

* it creates the Glance image in the node's lessee (else owner) project with the conductor's
  own Glance credentials, and hands the agent an upload token only inside the parameters of the
  one command that uploads - never in step args, which the API shows to anyone who can read the
  node;
* it verifies the result (image active, size and digests equal to the agent's) before the node
  goes back to ``active``, records the image id on the node, and deletes the image on failure or
  abort;
* it avoids the lookup limit of Ironic < 35 (agent lookup is refused in ``service wait`` with
  the default ``[api]restrict_lookup``) the way virtual media does: the agent token is generated
  in advance and passed, with the node UUID, as ramdisk kernel parameters.
"""

import datetime

import requests

from ironic.common import exception
from ironic.common import states
from ironic.conductor import periodics
from ironic.conductor import task_manager
from ironic.conductor import utils as manager_utils
from ironic.drivers import base
from ironic.drivers.modules import agent
from ironic.drivers.modules import deploy_utils
from ironic.drivers import utils as driver_utils
from oslo_log import log

from bmsnap_ironic import args as step_args
from bmsnap_ironic import chain_deploy
from bmsnap_ironic import incremental
from bmsnap_ironic import safe_agent_client
from bmsnap_ironic.glance import GlanceImages

LOG = log.getLogger(__name__)

#: driver_internal_info key with the running / last snapshot (never anything secret).
INFO = "bmsnap_snapshot"


def _needs_cleanup(node):
    """A snapshot image the periodic task must delete (see _cleanup_aborted_snapshots)."""
    return (node.driver_internal_info.get(INFO) or {}).get("state") in ("uploading", "orphaned")


def _is_snapshot(step):
    return bool(step) and step.get("interface") == "deploy" and step.get("step") == "snapshot"


def _revoke_upload_credential(info):
    """Deletes the snapshot's upload credential, if any, dropping it from INFO; True if it did.

    (If Keystone does not answer, the id stays for the next try; the credential expires anyway.)
    """
    cred_id = info.get("upload_credential")
    if cred_id and GlanceImages().delete_upload_credential(cred_id):
        del info["upload_credential"]
        return True
    return False


def _agent_commands(task):
    """The agent's command list, or None when the agent does not answer (it is not retried)."""
    node = task.node
    try:
        return safe_agent_client.install(task).get_commands_status(
            node, retry_connection=False, expect_errors=True)
    except (exception.AgentConnectionFailed, requests.RequestException, ValueError, KeyError,
            TypeError) as e:
        LOG.warning("Node %(node)s: the agent did not answer the command status request "
                    "(%(kind)s); waiting for its next heartbeat or the service timeout",
                    {"node": node.uuid, "kind": type(e).__name__})
        return None


def _usable_parent(images, args, owner):
    """((parent id, its index image id) or None, or_full's warning or None) for ARGS."""
    if not args.get("parent"):
        return None, None
    try:
        return incremental.check_parent(images, args["parent"], owner), None
    except incremental.NoUsableIndex as e:
        if not args.get("or_full"):
            raise
        LOG.warning("%s; a full image is taken instead (or_full)", e)
        return None, "%s; a full image was taken instead (or_full)" % e


def _delta_record(info, sent):
    """What the node records of a verified delta (the agent's delta stats), its parent protected."""
    out = {}
    parent = sent.get("parent_image_id")
    if parent and parent == info.get("parent_image_id"):
        out["delta"] = sent.get("delta")
        warning = incremental.protect_parent(GlanceImages(), parent, info["image_id"])
        if warning:
            out["warnings"] = (info.get("warnings") or []) + [warning]
    elif info.get("parent_image_id"):
        # the agent fell back to a full image (or_full: the parent's index was damaged)
        out["parent_image_id"] = None
        out["warnings"] = (info.get("warnings") or []) + list(sent.get("warnings") or [])
    return out


class BmsnapDeploy(agent.AgentDeploy):
    """Agent-based deploy (like ``direct``) with the ``snapshot`` service step.

    Every entry point that can talk to the agent first installs the token-safe agent client on
    the task (see safe_agent_client), so no error about a vanished agent carries its token.
    """

    def heartbeat(self, task, *args, **kwargs):
        safe_agent_client.install(task)
        return super(BmsnapDeploy, self).heartbeat(task, *args, **kwargs)

    def execute_deploy_step(self, task, step):
        safe_agent_client.install(task)
        return super(BmsnapDeploy, self).execute_deploy_step(task, step)

    def execute_clean_step(self, task, step):
        safe_agent_client.install(task)
        return super(BmsnapDeploy, self).execute_clean_step(task, step)

    # --- deploy: a bmsnap image (full or a delta on parents) is written by the bmsnap ramdisk
    # itself, straight from Glance (chain_deploy); any other image the stock way.

    def _update_instance_info(self, task):
        image = chain_deploy.bmsnap_image(task)
        if image is None:
            return super(BmsnapDeploy, self)._update_instance_info(task)
        # no conductor-side download and conversion: the agent reads the chain from Glance
        chain_deploy.set_instance_info(task, image)

    @base.deploy_step(priority=80)
    @task_manager.require_exclusive_lock
    def write_image(self, task):
        image = chain_deploy.bmsnap_image(task) if task.driver.storage.should_write_image(task) else None
        if image is None:
            return super(BmsnapDeploy, self).write_image(task)
        return chain_deploy.start_write(task, image)

    def clean_up(self, task):
        # a deploy that failed or was torn down mid-write: its read credential goes too
        if (task.node.driver_internal_info.get(chain_deploy.INFO) or {}).get("state") == "writing":
            chain_deploy.end_write(task, "failed")
        return super(BmsnapDeploy, self).clean_up(task)

    def get_service_steps(self, task):
        # Our decorated step replaces the agent's own ``snapshot`` (which it wraps).
        agent_steps = [s for s in super(BmsnapDeploy, self).get_service_steps(task)
                       if not _is_snapshot(s)]
        return [dict(s) for s in self.service_steps] + agent_steps

    def execute_service_step(self, task, step):
        safe_agent_client.install(task)
        if _is_snapshot(step):
            # BaseInterface's dispatcher: calls self.snapshot(task, **args).
            return base.DeployInterface.execute_service_step(self, task, step)
        return super(BmsnapDeploy, self).execute_service_step(task, step)

    @base.service_step(priority=0, abortable=True, requires_ramdisk=True,
                       argsinfo=step_args.ARGSINFO)
    def snapshot(self, task, **kwargs):
        """Capture the node's disk into a new Glance image (runs in the bmsnap ramdisk)."""
        node = task.node
        args = step_args.validate(kwargs)
        images = GlanceImages()
        name = args.get("image_name") or "snapshot-%s-%s" % (
            node.name or node.uuid, datetime.datetime.utcnow().strftime("%Y%m%dT%H%M%SZ"))
        props = {"bmsnap_node_uuid": node.uuid}
        props.update(args["properties"])
        owner = node.lessee or node.owner
        # the parent first: a refusal is one line, before anything exists
        parent, fallback = _usable_parent(images, args, owner)
        info = {"image_name": name, "state": "uploading"}
        if args["with_index"]:
            index = incremental.create_index_image(images, name, args["visibility"], owner)
            info["index_image_id"] = index["id"]
            props[incremental.INDEX] = index["id"]
        try:
            image = images.create(name, args["disk_format"], args["visibility"], owner, props)
        except Exception:
            if info.get("index_image_id"):
                try:
                    images.delete(info["index_image_id"])
                except Exception as e:
                    LOG.error("Could not delete index image %s of node %s: %s",
                              info["index_image_id"], node.uuid, e)
            raise
        info["image_id"] = image["id"]
        if parent:
            info["parent_image_id"] = parent[0]
        if fallback:
            info["warnings"] = [fallback]
        node.set_driver_internal_info(INFO, info)
        node.save()
        try:
            token, cred_id = images.upload_credential(image["id"], info.get("index_image_id"), parent)
        except Exception:
            self._drop_image(task, "no upload credential")
            raise
        if cred_id:
            # the id only (not secret): deleted when the snapshot ends, whichever way
            info["upload_credential"] = cred_id
            node.set_driver_internal_info(INFO, info)
            node.save()
        step = dict(node.service_step or {"interface": "deploy", "step": "snapshot"})
        params = {
            "step": step,
            "node": node.as_dict(secure=True),
            "ports": [p.as_dict() for p in task.ports],
            "service_version": node.driver_internal_info.get("hardware_manager_version"),
            # Only here: in the body of this one request to the agent.
            "bmsnap": dict({"glance_url": images.agent_endpoint, "token": token,
                            "image_id": image["id"]},
                           **{k: info[k] for k in ("index_image_id", "parent_image_id") if k in info}),
        }
        try:
            safe_agent_client.install(task)._command(
                node=node, method="service.execute_service_step", params=params)
        except Exception:
            self._drop_image(task, "the agent did not accept the snapshot command")
            raise
        return states.SERVICEWAIT

    def process_next_step(self, task, step_type, **kwargs):
        node = task.node
        client = safe_agent_client.install(task)
        if step_type == "service" and _is_snapshot(node.service_step) and node.driver_internal_info.get(INFO):
            commands = _agent_commands(task)
            if commands is None:
                # Gone or restarting: not an error yet (a heartbeat may follow); if it is really
                # gone, [conductor]service_callback_timeout fails the step.
                return None
            self._follow_snapshot(task, commands)
            # Ironic's step handling below reads the same answer instead of asking again.
            client.reuse_commands_once(commands)
        elif step_type == "deploy" and (node.driver_internal_info.get(chain_deploy.INFO) or {}).get("state") == "writing":
            commands = _agent_commands(task)
            if commands is None:
                return None   # as above: [conductor]deploy_callback_timeout decides
            if not chain_deploy.follow_write(task, commands):
                return None
            client.reuse_commands_once(commands)
        return super(BmsnapDeploy, self).process_next_step(task, step_type, **kwargs)

    def _follow_snapshot(self, task, commands):
        """On each heartbeat: copy progress to the node; verify or clean up at the end."""
        node = task.node
        last = commands[-1] if commands else None
        if not last or last.get("command_name") != "execute_service_step":
            return
        info = dict(node.driver_internal_info.get(INFO) or {})
        status = last.get("command_status")
        result = last.get("command_result") or {}
        if status == "RUNNING":
            info["progress"] = result.get("progress")
        elif status == "FAILED":
            self._drop_image(task, "the snapshot step failed")
            return
        elif status == "SUCCEEDED" and info.get("state") == "uploading":
            sent = result.get("service_result") or {}
            self._verify(task, info["image_id"], sent, info.get("index_image_id"))
            info.update({"state": "active", "size": sent.get("size"),
                         "os_hash_value": sent.get("os_hash_value"), "progress": None})
            info.update(_delta_record(info, sent))
            _revoke_upload_credential(info)
        node.set_driver_internal_info(INFO, info)
        node.save()

    def _verify(self, task, image_id, sent, index_id=None):
        images = GlanceImages()
        img = images.get(image_id)
        problems = []
        if img.get("status") != "active":
            problems.append("status %s" % img.get("status"))
        if img.get("size") != sent.get("size"):
            problems.append("size %s != %s" % (img.get("size"), sent.get("size")))
        if img.get("checksum") != sent.get("checksum"):
            problems.append("md5 differs")
        if img.get("os_hash_value") != sent.get("os_hash_value"):
            problems.append("sha512 differs")
        if index_id and not problems:
            problems += incremental.verify_index(images, image_id, index_id, sent)
        if problems:
            self._drop_image(task, "verification failed")
            raise exception.NodeServicingFailure(
                node=task.node.uuid,
                reason="snapshot image %s does not match what the agent sent: %s"
                % (image_id, "; ".join(problems)))

    def _drop_image(self, task, why, retry=False):
        """Deletes the snapshot image and its index image (if any)."""
        node = task.node
        info = dict(node.driver_internal_info.get(INFO) or {})
        image_id = info.get("image_id")
        if _revoke_upload_credential(info):
            node.set_driver_internal_info(INFO, info)
            node.save()
        if not image_id or info.get("state") in ("deleted", "active"):
            return
        try:
            images = GlanceImages()
            for victim in filter(None, (image_id, info.get("index_image_id"))):
                images.delete(victim)   # a 404 (gone already, e.g. on a retry) is fine
            info["state"] = "deleted"
            LOG.info("Deleted snapshot image %s of node %s: %s", image_id, node.uuid, why)
        except Exception as e:
            # e.g. Glance itself failed during the upload: the periodic task below tries again
            # while the node stays in service failed.
            info["state"] = "orphaned"
            (LOG.warning if retry else LOG.error)(
                "Could not delete snapshot image %s of node %s (%s): %s; will retry while the "
                "node is in service failed", image_id, node.uuid, why, e)
        info["progress"] = None
        node.set_driver_internal_info(INFO, info)
        node.save()

    def prepare_service(self, task):
        """Boot the ramdisk with a pre-generated agent token and the node UUID on its command line.

        Ironic < 35 refuses agent lookup in ``service wait`` unless ``[api]restrict_lookup`` is
        off or fast-track is on; virtual-media style token pre-generation needs neither.
        """
        node = task.node
        if (node.driver_internal_info.get(INFO) or {}).get("state") == "orphaned":
            # The last snapshot's image could not be deleted yet: one more try before its
            # record goes (a failure is logged with the image id).
            self._drop_image(task, "a new servicing starts")
        node.del_driver_internal_info(INFO)
        manager_utils.add_secret_token(node, pregenerated=True)
        node.save()
        with driver_utils.power_off_and_on(task):
            node.power_state = states.POWER_ON
            node.save()
            task.driver.boot.clean_up_instance(task)
            with manager_utils.power_state_for_network_configuration(task):
                task.driver.network.unconfigure_tenant_networks(task)
                task.driver.network.add_servicing_network(task)
            opts = deploy_utils.build_agent_options(node)
            opts["ipa-agent-token"] = node.driver_internal_info["agent_secret_token"]
            opts["ipa-node-uuid"] = node.uuid
            task.driver.boot.prepare_ramdisk(task, opts)
        return states.SERVICEWAIT

    @periodics.node_periodic(
        purpose="deleting the image of an aborted or failed bmsnap snapshot",
        spacing=10,
        filters={"provision_state": states.SERVICEFAIL, "reserved": False},
        predicate_extra_fields=["driver_internal_info"],
        predicate=_needs_cleanup,
        shared_task=False)
    def _cleanup_aborted_snapshots(self, task, manager, context):
        """Deletes snapshot images nothing else will, while the node is in ``service failed``.

        * ``orphaned``: a failure whose delete failed too, typically because Glance itself went
          away during the upload; tried again every run until Glance answers. last_error (the
          original failure) is kept.
        * ``uploading``: Ironic < 2025.2 aborts ``service wait`` without calling
          tear_down_service. The node goes to ``service failed`` with no last_error while the
          agent may still be uploading; heartbeats in ``service failed`` are ignored, so nothing
          else would ever delete the (partial, or later complete) image.
        """
        node = task.node
        if node.provision_state != states.SERVICEFAIL:
            return
        info = node.driver_internal_info.get(INFO) or {}
        if info.get("state") == "orphaned":
            self._drop_image(task, "retrying after a failed delete", retry=True)
            return
        if info.get("state") != "uploading":
            return
        self._drop_image(task, "servicing was aborted")
        if not node.last_error:
            state = (node.driver_internal_info.get(INFO) or {}).get("state")
            node.last_error = ("Snapshot aborted: its image %s %s" % (
                info.get("image_id"),
                "was deleted" if state == "deleted" else "could not be deleted (orphaned)"))
            node.save()

    def tear_down_service(self, task):
        safe_agent_client.install(task)
        # Abort (or a failure) in the middle of a snapshot: the image is incomplete.
        info = task.node.driver_internal_info.get(INFO) or {}
        if info.get("state") == "uploading":
            self._drop_image(task, "servicing was aborted or failed")
        return super(BmsnapDeploy, self).tear_down_service(task)
