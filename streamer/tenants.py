"""Tenants by client identity (mTLS): the config file's [tenants] table, and who a call's certificate names.

```toml
[tenants]
identity = "san"          # "subject" (the certificate's subject CN) or "san" (its subject alternative names)
admin = ["ops-admin"]     # identities with the admin role (the admin API); they need no tenant
default = ""              # tenant of an identity the map does not name; "" (the default): refused

[[tenants.map]]
identity = "collector-a.example"
tenant = "team-a"
```

Without [tenants] (no TLS, or TLS with or without client certificates) everything is the one tenant "", as
before tenants existed, and the admin API is open to any client that can connect. No grpc objects are kept
here: `caller` takes what grpc.aio's `context.auth_context()` returns.
"""
from __future__ import annotations

import dataclasses
import re

IDENTITIES = ("subject", "san")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a tenant's name: it is part of OTLP session names


class TenantsError(ValueError):
    """A [tenants] table that cannot be used (the message names the key and the expected form)."""


class Denied(Exception):
    """The caller may not make this call: PERMISSION_DENIED with this message."""


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who makes a call: their identity ("" without [tenants]), tenant ("" for the one tenant) and role."""

    identity: str = ""
    tenant: str = ""
    admin: bool = False
    known: bool = True  # the identity maps to a tenant (or there are no tenants)


EVERYONE = Caller(admin=True)  # the caller of every call of a server without [tenants]


@dataclasses.dataclass(frozen=True)
class Tenants:
    identity: str = "subject"
    tenants: tuple[tuple[str, str], ...] = ()  # (identity, tenant) pairs
    admin: tuple[str, ...] = ()
    default: str = ""

    def tenant_of(self, identity: str) -> str | None:
        for who, tenant in self.tenants:
            if who == identity:
                return tenant
        return self.default or None

    def caller(self, auth: dict) -> Caller:
        """The Caller a call's auth context (property -> list of bytes) names. Under "san" the first
        alternative name that the map or the admin list names is the identity (else the first one)."""
        key = "x509_common_name" if self.identity == "subject" else "x509_subject_alternative_name"
        names = [v.decode("utf-8", "replace") for v in auth.get(key, ())]
        if not names:
            return Caller("", "", False, False)
        chosen = next((n for n in names if n in self.admin or any(n == w for w, _ in self.tenants)), names[0])
        tenant = self.tenant_of(chosen)
        return Caller(chosen, tenant or "", chosen in self.admin, tenant is not None)

    def caller_from_peercert(self, cert: dict | None) -> Caller:
        """The Caller of an HTTPS connection (the page): ssl's getpeercert() dict, as `caller` takes grpc's."""
        cert = cert or {}
        cns = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
        sans = [v for kind, v in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address", "email", "URI")]
        return self.caller({"x509_common_name": [c.encode() for c in cns],
                            "x509_subject_alternative_name": [s.encode() for s in sans]})

    def describe(self) -> str:
        return (f"tenants by client certificate {self.identity}: {len(self.tenants)} identities in "
                f"{len({t for _, t in self.tenants})} tenant(s), {len(self.admin)} admin identities, unknown "
                f"identities {'refused' if not self.default else 'in tenant ' + repr(self.default)}")


def check_tenant_access(caller: Caller) -> None:
    """Raise Denied unless `caller` may use the data plane (its identity names a tenant)."""
    if not caller.known:
        who = f"client certificate identity {caller.identity!r}" if caller.identity else \
            "a client certificate without the configured identity"
        raise Denied(f"{who} names no tenant ([tenants] in the config file maps identities to tenants)")


def check_admin(caller: Caller) -> None:
    if not caller.admin:
        who = f"client certificate identity {caller.identity!r}" if caller.identity else "this client"
        raise Denied(f"the admin API needs the admin role; {who} does not have it ([tenants] admin in the "
                     f"config file)")


def parse(raw, where) -> Tenants:
    """The [tenants] table of a config file. `where(key)` says where a key is (file, line) for messages."""
    if not isinstance(raw, dict):
        raise TenantsError(f"{where('tenants')}: must be a table ([tenants]), got {type(raw).__name__}")
    known = {"identity", "admin", "default", "map"}
    for key in raw:
        if key not in known:
            raise TenantsError(f"{where(key)}, key tenants.{key}: unknown; [tenants] takes "
                               f"{', '.join(sorted(known))}")
    identity = raw.get("identity", "subject")
    if identity not in IDENTITIES:
        raise TenantsError(f"{where('identity')}, key tenants.identity: must be one of \"subject\", \"san\", "
                           f"got {identity!r}")
    admin = raw.get("admin", [])
    if not isinstance(admin, list) or not all(isinstance(a, str) and a for a in admin):
        raise TenantsError(f"{where('admin')}, key tenants.admin: must be an array of identities (non-empty "
                           f"strings), got {admin!r}")
    default = raw.get("default", "")
    if not isinstance(default, str) or default and not _NAME.match(default):
        raise TenantsError(f"{where('default')}, key tenants.default: must be \"\" (refuse unknown identities) or "
                           f"a tenant name ({_NAME.pattern}), got {default!r}")
    entries = raw.get("map", [])
    if not isinstance(entries, list):
        raise TenantsError(f"{where('map')}, key tenants.map: must be an array of tables ([[tenants.map]] with "
                           f"identity and tenant), got {entries!r}")
    pairs: list[tuple[str, str]] = []
    for i, entry in enumerate(entries):
        at = f"{where(f'map[{i}]')}, key tenants.map[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"identity", "tenant"}:
            raise TenantsError(f"{at}: must be a table with exactly identity = \"...\" and tenant = \"...\", "
                               f"got {entry!r}")
        who, tenant = entry["identity"], entry["tenant"]
        if not isinstance(who, str) or not who:
            raise TenantsError(f"{at}: identity must be a non-empty string, got {who!r}")
        if not isinstance(tenant, str) or not _NAME.match(tenant):
            raise TenantsError(f"{at}: tenant must be a name matching {_NAME.pattern}, got {tenant!r}")
        if any(w == who for w, _ in pairs):
            raise TenantsError(f"{at}: identity {who!r} is mapped twice")
        pairs.append((who, tenant))
    if not pairs and not default:
        raise TenantsError(f"{where('tenants')}: [tenants] maps no identity to a tenant ([[tenants.map]]) and has "
                           f"no default: every data-plane call would be refused")
    return Tenants(identity, tuple(pairs), tuple(admin), default)


def otlp_session(tenant: str, name: str) -> str:
    """An OTLP source's session name in its tenant: `otlp:{...}` for the one tenant, `otlp@TENANT:{...}`
    otherwise, so two tenants' exporters of one resource keep two sources."""
    return name if not tenant else "otlp@" + tenant + name[len("otlp"):]
