"""Requests to Ironic and Nova through an openstacksdk connection's service proxies, their
failures turned into bmsnap_openstack errors: one line, with what the service said (Ironic's
faultstring, Nova's message). keystoneauth's and the SDK's messages never carry the token."""

import contextlib
import json
import re

from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as sdk_exc

from bmsnap_openstack.errors import ApiError, AuthError


def one_line(text):
    return " ".join(str(text).split())


def send(proxy, service, method, path, what, **kwargs):
    """The response of METHOD PATH (any status); ApiError / AuthError if there is none."""
    with sdk_errors(service, what):
        return proxy.request(path, method, raise_exc=False, **kwargs)


@contextlib.contextmanager
def sdk_errors(service, what):
    """keystoneauth / openstacksdk exceptions raised inside, as ApiError / AuthError."""
    try:
        yield
    except ks_exc.Unauthorized as e:
        raise AuthError("%s: Keystone refused the credentials (%s)" % (what, _first_sentence(e))) from None
    except (ks_exc.EndpointNotFound, ks_exc.EmptyCatalog):
        raise ApiError("%s: no %s endpoint in the catalog for these credentials" % (what, service)) from None
    except (ks_exc.ConnectFailure, ks_exc.ConnectTimeout, ks_exc.SSLError) as e:
        url = re.search(r"\b(https?://[^\s:/]+(?::\d+)?)", str(e))
        raise ApiError("%s: cannot reach %s%s (%s)" % (what, service, " at " + url.group(1) if url else "",
                                                        type(e).__name__)) from None
    except sdk_exc.HttpException as e:
        raise ApiError("%s: %s" % (what, answered(service, e.status_code or 0, e.response.text if e.response is not None else "")),
                       e.status_code) from None
    except (ks_exc.ClientException, sdk_exc.SDKException) as e:
        raise ApiError("%s: %s" % (what, _first_sentence(e))) from None


def check(resp, service, what, ok=(200,)):
    """RESP if its status is in OK, else an ApiError saying what SERVICE answered."""
    if resp.status_code in ok:
        return resp
    raise ApiError("%s: %s" % (what, answered(service, resp.status_code, resp.text)), resp.status_code)


def answered(service, status, body, limit=300):
    """"Ironic answered 403: ..." with the service's own message."""
    if status == 401:
        return "%s answered 401 Unauthorized: the token is missing, invalid or expired" % service
    why = _message(body)[:limit]
    return "%s answered %d%s" % (service, status, ": " + why if why else "")


def _message(body):
    try:
        j = json.loads(body)
    except ValueError:
        return one_line(re.sub(r"<[^>]*>", " ", body or ""))
    if not isinstance(j, dict):
        return ""
    for v in (j.get("message"), (j.get("error") or {}).get("message") if isinstance(j.get("error"), dict) else None,
              j.get("title")):
        if isinstance(v, str):
            return one_line(v)
    em = j.get("error_message")
    if isinstance(em, str):   # Ironic: a JSON document inside the JSON
        try:
            em = json.loads(em)
        except ValueError:
            return one_line(em)
    if isinstance(em, dict) and isinstance(em.get("faultstring"), str):
        return one_line(em["faultstring"])
    if len(j) == 1:           # Nova: {"itemNotFound": {"message": ...}}
        inner = next(iter(j.values()))
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return one_line(inner["message"])
    return ""


def _first_sentence(e):
    text = one_line(e)
    return text.split(" (Request-ID")[0] or type(e).__name__
