-- Autoscaling (deploy/kubernetes, docs/kubernetes.md): KEDA's PostgreSQL scaler polls how much work
-- the workers have, as a role that can learn nothing else.
--
-- `keda_scaler` is created NOLOGIN: the schema must not hold a password. The operator gives it one
-- once (`alter role keda_scaler with login password '...'`, see docs/kubernetes.md). It owns no
-- objects, reads no table, and may execute one function, which returns two numbers.

-- Roles are the whole server's, not this database's: created only where missing, and two databases
-- built at the same moment may race to create it.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'keda_scaler') then
    create role keda_scaler nologin noinherit;
  end if;
exception
  when duplicate_object or unique_violation then null;
end
$$;

-- A poll must never hold a connection or a lock for long, whatever happens to the queue. Only what is
-- not yet so is altered: a role's settings are the whole server's, and a second database built on it
-- (or two at once) should not rewrite them.
do $$
begin
  if not exists (select 1 from pg_catalog.pg_db_role_setting s
                  where s.setrole = 'keda_scaler'::regrole and s.setdatabase = 0
                    and s.setconfig @> array['statement_timeout=5s', 'idle_in_transaction_session_timeout=10s']) then
    alter role keda_scaler set statement_timeout = '5s';
    alter role keda_scaler set idle_in_transaction_session_timeout = '10s';
  end if;
  if (select rolconnlimit from pg_catalog.pg_roles where rolname = 'keda_scaler') <> 4 then
    alter role keda_scaler connection limit 4;
  end if;
end
$$;

-- The scaler needs the schema to name the function, nothing in it.
grant usage on schema public to keda_scaler;

create function public.edit_request_autoscaler_counts(
  out claimable bigint,
  out running bigint
)
language sql stable
security definer
set search_path = ''
as $$
  -- claimable: what claim_edit_request would hand out now. Queued rows that are due (no back-off,
  -- or one that has ended), plus processing rows whose lease lapsed with attempts left (the claim
  -- recovers those first). Not awaiting_image (inputs still uploading), not a retry in its back-off,
  -- not a lapsed lease on its last attempt (the sweep fails it), nothing finished.
  -- running: processing rows whose lease is alive, i.e. a worker is on them. The scaler adds both
  -- so that workers busy with the last jobs are not counted as spare (docs/kubernetes.md).
  select
    count(*) filter (
      where (r.status = 'queued' and (r.next_attempt_at is null or r.next_attempt_at <= now()))
         or (r.status = 'processing' and r.lease_expires_at < now() and r.attempts < r.max_attempts)),
    count(*) filter (where r.status = 'processing' and r.lease_expires_at >= now())
  from public.edit_requests r
  where r.status in ('queued', 'processing')
$$;

comment on function public.edit_request_autoscaler_counts() is
  'KEDA''s PostgreSQL scaler (deploy/kubernetes/keda.yaml): claimable and running edit requests.';

-- Access ------------------------------------------------------------------------------------------
-- The counts are the operator's.
revoke all on function public.edit_request_autoscaler_counts() from public, anon, authenticated;
grant execute on function public.edit_request_autoscaler_counts() to keda_scaler, service_role;
