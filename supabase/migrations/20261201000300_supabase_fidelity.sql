-- As the real Supabase behaves (observed against Storage v1.70.6, pg_cron 1.6 and Realtime's
-- own authorization SQL; ../shared/research/supabase.md §11 and §12).
--
-- 1. The lease sweep no longer depends on set-up order. The first migration scheduled the
--    pg_cron job only if pg_cron already existed when it ran; the documented order (db push,
--    then enable pg_cron) left `cron.job` empty, silently, and RunPod scale-to-zero relies on
--    the sweep. `ensure_edit_request_sweep()` schedules it whenever it is called (idempotent:
--    pg_cron replaces a job of the same name); the set-up calls it after enabling pg_cron, the
--    processor calls it at start-up, and `edit_request_sweep_status()` says what is missing.

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
