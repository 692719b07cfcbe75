"""The pool service's tenants and API keys: who a key belongs to, tenants and their quotas, keys made and revoked.

Tenants: every lease belongs to a tenant (`Principal`, see tenants.py) and counts against that tenant's quota,
which the store checks in the same atomic step that books the VRAM. Listings show a tenant only its own leases
and sessions; admins see everything."""

from __future__ import annotations

import logging

from fargpu.pool_manager.errors import BadRequest, Forbidden, NotFound
from fargpu.pool_manager.models import ApiKeyRecord, TenantRecord
from fargpu.pool_manager.service_core import ServiceCore
from fargpu.pool_manager.store import TenantLimits
from fargpu.pool_manager.tenants import ADMIN_TENANT, Principal, key_hash, new_api_key, new_key_id, valid_tenant_name

log = logging.getLogger("fargpu.pool_manager")


class TenantService(ServiceCore):
    """Tenants, their quotas and their API keys."""

    async def authenticate_key(self, key: str) -> Principal | None:
        """Who presents `key`: None when it is no live key of an enabled tenant."""
        rec = await self.store.api_key_by_hash(key_hash(key))
        if rec is None:
            return None
        if rec.admin:
            return Principal(rec.tenant or ADMIN_TENANT, admin=True, key_id=rec.key_id)
        tenant = await self.store.get_tenant(rec.tenant)
        if tenant is None or tenant.disabled:
            return None
        return Principal(rec.tenant, key_id=rec.key_id)

    async def put_tenant(
        self, name: str, vram_quota_bytes: int | None = None, max_leases: int | None = None, disabled: bool = False
    ) -> TenantRecord:
        """Creates or updates a tenant (its quota, or enabled/disabled)."""
        if not valid_tenant_name(name) or name == ADMIN_TENANT:
            raise BadRequest(f"a tenant name is 1-64 letters, digits, '-', '_' or '.', and not {ADMIN_TENANT!r}")
        if (vram_quota_bytes is not None and vram_quota_bytes < 0) or (max_leases is not None and max_leases < 0):
            raise BadRequest("quotas must be 0 or more (leave one out for no limit)")
        old = await self.store.get_tenant(name)
        rec = TenantRecord(name=name, vram_quota_bytes=vram_quota_bytes, max_leases=max_leases,
                           created_at=old.created_at if old else self.clock(), disabled=disabled)  # fmt: skip
        await self.store.put_tenant(rec)
        log.info("tenant %s %s (VRAM quota %s, max leases %s%s)", name, "updated" if old else "created",
                 vram_quota_bytes, max_leases, ", disabled" if disabled else "")  # fmt: skip
        return rec

    async def tenant(self, name: str) -> TenantRecord:
        rec = await self.store.get_tenant(name)
        if rec is None:
            raise NotFound(f"tenant {name!r} not found")
        return rec

    async def create_api_key(
        self, tenant: str, *, admin: bool = False, label: str | None = None, key: str | None = None
    ) -> tuple[ApiKeyRecord, str]:
        """A new key for `tenant` (or an admin key); returns it with the secret, which is kept nowhere.
        `key`: register this secret instead of a new one (the local key file)."""
        if not admin:
            await self.tenant(tenant)
        secret = key or new_api_key()
        rec = ApiKeyRecord(key_id=new_key_id(), tenant=tenant if not admin else (tenant or ADMIN_TENANT),
                           key_hash=key_hash(secret), admin=admin, label=label, created_at=self.clock())  # fmt: skip
        await self.store.put_api_key(rec)
        log.info("API key %s created for %s%s", rec.key_id, rec.tenant, " (admin)" if admin else "")
        return rec, secret

    async def ensure_api_key(self, tenant: str, secret: str, label: str) -> None:
        """Registers `secret` as a key of `tenant` (created without quota if missing) unless it is already live."""
        if await self.store.api_key_by_hash(key_hash(secret)) is not None:
            return
        if await self.store.get_tenant(tenant) is None:
            await self.put_tenant(tenant)
        await self.create_api_key(tenant, label=label, key=secret)

    async def revoke_api_key(self, key_id: str) -> ApiKeyRecord:
        rec = await self.store.revoke_api_key(key_id, self.clock())
        if rec is None:
            raise NotFound(f"API key {key_id!r} not found")
        log.info("API key %s of %s revoked", key_id, rec.tenant)
        return rec

    async def _limits(self, principal: Principal | None) -> tuple[str, TenantLimits | None]:
        if principal is None:
            return "", None
        if principal.admin:
            return principal.tenant, None
        t = await self.tenant(principal.tenant)
        if t.disabled:
            raise Forbidden(f"tenant {t.name} is disabled")
        return t.name, TenantLimits(t.vram_quota_bytes, t.max_leases)
