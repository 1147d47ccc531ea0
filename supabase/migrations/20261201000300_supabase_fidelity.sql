-- As the real Supabase behaves (observed against Storage v1.70.6, pg_cron 1.6 and Realtime's
-- own authorization SQL, supabase/realtime priv/repo/tenant_db_dump_15.sql; docs/supabase-fidelity.md).
--
-- 1. The lease sweep no longer depends on set-up order. The first migration scheduled the
--    pg_cron job only if pg_cron already existed when it ran; the documented order (db push,
--    then enable pg_cron) left `cron.job` empty, silently, and RunPod scale-to-zero relies on
--    the sweep. `ensure_edit_request_sweep()` schedules it whenever it is called (idempotent:
--    pg_cron replaces a job of the same name); the set-up calls it after enabling pg_cron, the
--    processor calls it at start-up, and `edit_request_sweep_status()` says what is missing.
-- 2. Realtime UPDATE events carry the whole row. With the default replica identity a value
--    stored out of line (TOAST: a 2,000-character CJK prompt is 6 KB) is not in the WAL of an
--    UPDATE that leaves it unchanged, so every progress event lacked `prompt`. REPLICA
--    IDENTITY FULL logs the old row in full, and Realtime fills the record from it. Cost,
--    measured in tests/test_realtime_events.py: see docs/supabase-fidelity.md.
-- 3. Heartbeats that change nothing a client sees no longer write the row. A heartbeat with
--    the same progress only renews the lease when less than half of it is left (every 60 s
--    instead of every 5 s with the defaults), and `updated_at` moves only when something
--    other than the lease changes. Events follow status, progress, output and reason.

-- Lease sweep -------------------------------------------------------------------------------------

create or replace function public.edit_request_sweep_status()
returns text
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_active boolean;
begin
  -- Looked up by signature, not pg_extension, so a stand-in cron schema (tests) counts too.
  if to_regprocedure('cron.schedule(text,text,text)') is null or to_regclass('cron.job') is null then
    return 'pg_cron_missing';
  end if;
  -- Dynamic SQL: this function must compile where the cron schema does not exist.
  execute 'select bool_or(active) from cron.job where jobname = $1'
     into v_active using 'requeue-expired-edit-requests';
  return case when v_active then 'scheduled' else 'not_scheduled' end;
end
$$;

create or replace function public.ensure_edit_request_sweep()
returns text
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Call after enabling pg_cron (the set-up does, and the processor at every start). Without
  -- pg_cron there is nothing to schedule: the answer says so instead of failing, and the
  -- processors' own sweep is then the only one (none while all of them are scaled to zero).
  if to_regprocedure('cron.schedule(text,text,text)') is null then
    return 'pg_cron_missing';
  end if;
  execute 'select cron.schedule($1, $2, $3)'
    using 'requeue-expired-edit-requests', '30 seconds', 'select public.requeue_expired_edit_requests()';
  return public.edit_request_sweep_status();
end
$$;

revoke execute on function public.edit_request_sweep_status(), public.ensure_edit_request_sweep()
  from public, anon, authenticated;
grant execute on function public.edit_request_sweep_status(), public.ensure_edit_request_sweep()
  to service_role;

-- Where pg_cron is already enabled, this migration schedules the sweep itself.
select public.ensure_edit_request_sweep();

-- Realtime: complete rows in every UPDATE event -----------------------------------------------------

alter table public.edit_requests replica identity full;

-- Heartbeats: write only what a client sees, or a lease about to run short ------------------------

create or replace function public.heartbeat_edit_request(
  p_id uuid,
  p_worker_id text,
  p_progress real default null,
  p_lease_seconds integer default 120
)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_status text;
  v_progress real;
  v_lease_left interval;
  v_lease_seconds integer := greatest(p_lease_seconds, 1);
  v_progress_moved boolean;
begin
  -- A read first, without a lock: most heartbeats then write nothing, so they make no WAL
  -- and no Realtime event. The update below re-checks owner and status, so a cancel or a
  -- new owner between the two statements is still seen.
  select r.status, r.progress, r.lease_expires_at - now() into v_status, v_progress, v_lease_left
    from public.edit_requests r
   where r.id = p_id and r.claimed_by = p_worker_id;
  if v_status is null or v_status not in ('processing', 'canceled') then
    return 'lost';
  elsif v_status = 'canceled' then
    return 'canceled';
  end if;
  -- Progress only goes up, within 0..1 (as before).
  if greatest(v_progress, least(1, greatest(0, coalesce(p_progress, v_progress)))) = v_progress
     and v_lease_left > make_interval(secs => v_lease_seconds / 2.0) then
    return 'ok';  -- nothing visible changed and the lease has more than half its length left
  end if;

  v_progress_moved := greatest(v_progress, least(1, greatest(0, coalesce(p_progress, v_progress)))) <> v_progress;
  perform set_config('edit_requests.lease_only', case when v_progress_moved then 'off' else 'on' end, true);
  update public.edit_requests r
     set lease_expires_at = now() + make_interval(secs => v_lease_seconds),
         progress = greatest(r.progress, least(1, greatest(0, coalesce(p_progress, r.progress))))
   where r.id = p_id and r.claimed_by = p_worker_id and r.status = 'processing';
  perform set_config('edit_requests.lease_only', 'off', true);
  if found then
    return 'ok';
  end if;
  select r.status into v_status from public.edit_requests r where r.id = p_id and r.claimed_by = p_worker_id;
  return case when v_status = 'canceled' then 'canceled' else 'lost' end;
end
$$;

create or replace function public.edit_requests_touch()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  -- `updated_at` is the time of the last change a client can see: a heartbeat that only
  -- renews the lease says so (a transaction-local flag) and leaves it. Deliberately no
  -- look at the whole NEW row here: reading it as a composite would detoast long values
  -- and write them into the WAL again on every update.
  if coalesce(current_setting('edit_requests.lease_only', true), '') <> 'on' then
    new.updated_at := now();
  end if;
  return new;
end
$$;
