"""Service accounts and catalog for the stack's Keystone (BMSNAP_STACK_KEYSTONE=1); idempotent.

Runs inside the trixie chroot after keystone-init.sh and once the server answers:
  python3 keystone-accounts.py KEYSTONE_URL GLANCE_URL REGION PASSWORD_DIR [IRONIC_URL]

- project "service";
- users "glance" (validates tokens: keystonemiddleware in glance-api) and "ironic" (the
  conductor's [glance] credentials), each with role admin on "service": Glance's default policy
  lets only admin create an image owned by another project (the node's lessee/owner);
- service "image" with public/internal/admin endpoints at GLANCE_URL (updated if it moved);
- with IRONIC_URL (an Ironic API that validates tokens), service "baremetal" likewise.

Passwords are read from PASSWORD_DIR/{admin,glance,ironic}-password; nothing secret is printed.
"""
import pathlib
import sys

from keystoneauth1 import session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client


def main():
    ks_url, glance_url, region, pw_dir = sys.argv[1:5]
    pw = {n: (pathlib.Path(pw_dir) / ("%s-password" % n)).read_text().strip()
          for n in ("admin", "glance", "ironic")}
    auth = v3.Password(auth_url=ks_url + "/v3", username="admin", password=pw["admin"],
                       project_name="admin", user_domain_id="default", project_domain_id="default")
    kc = client.Client(session=session.Session(auth=auth), interface="public")

    project = next(iter(kc.projects.list(name="service", domain="default")), None) \
        or kc.projects.create("service", domain="default", description="service users")
    admin_role = kc.roles.list(name="admin")[0]
    for name in ("glance", "ironic"):
        user = next(iter(kc.users.list(name=name, domain="default")), None)
        if user:
            kc.users.update(user, password=pw[name])
        else:
            user = kc.users.create(name, domain="default", password=pw[name],
                                   default_project=project)
        kc.roles.grant(admin_role, user=user, project=project)

    register(kc, "glance", "image", glance_url, region)
    ironic_url = sys.argv[5] if len(sys.argv) > 5 else ""
    if ironic_url:
        register(kc, "ironic", "baremetal", ironic_url, region)
    print("keystone accounts: project service %s, users glance + ironic (admin), image endpoint %s%s"
          % (project.id, glance_url, ", baremetal endpoint " + ironic_url if ironic_url else ""))


def register(kc, name, service_type, url, region):
    """Service SERVICE_TYPE with public/internal/admin endpoints at URL (updated if it moved)."""
    svc = next(iter(kc.services.list(type=service_type)), None) \
        or kc.services.create(name, type=service_type, description="%s (bmsnap stack)" % name)
    existing = {e.interface: e for e in kc.endpoints.list(service=svc)}
    for iface in ("public", "internal", "admin"):
        if iface in existing:
            if existing[iface].url != url:
                kc.endpoints.update(existing[iface], url=url)
        else:
            kc.endpoints.create(svc, url, interface=iface, region=region)


if __name__ == "__main__":
    main()
