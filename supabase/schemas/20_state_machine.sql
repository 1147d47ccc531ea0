-- The state machine: how a request moves, and who may move it.
--
-- Requests move only through the functions below. Those that write are security definer and
-- executable by the service role (the processor connects as `postgres` or a login role granted
-- service_role, through the direct, session-mode connection: LISTEN needs a session, so not the
-- transaction-mode pooler). Every write is fenced by owner and status: a worker whose
-- lease was taken over can no longer heartbeat, complete, fail, release or preview the row. Users
-- may only cancel their own requests; operators also retry. The states are drawn in 10_requests.sql;
-- docs/contract.md describes each function for callers.

-- Operator settings -------------------------------------------------------------------------------

create table public.edit_queue_settings (
  id boolean primary key default true check (id),
  awaiting_image_ttl interval not null default interval '24 hours'
    check (awaiting_image_ttl > interval '0'),
  readiness_recheck_batch integer not null default 500
    check (readiness_recheck_batch between 0 and 100000),
  fair_share_quantum interval not null default interval '10 minutes'
    check (fair_share_quantum >= interval '0'),
  updated_at timestamptz not null default now(),
  -- The processors' SPEED, for charging requests that leave speed null (25_fair_sharing_and_limits.sql).
  default_speed text check (default_speed in ('quality', 'fast', 'fastest'))
);
comment on table public.edit_queue_settings is
  'Operator settings of the queue (one row): awaiting_image_ttl (then failed, input_never_arrived), '
  'readiness_recheck_batch (rows the sweep re-checks per run), fair_share_quantum (the wait one '
  'request already queued or processing is worth in the claim order), default_speed (the processors'' SPEED: '
  'what a request with speed null is charged as; null: the costlier of quality and fast).';
insert into public.edit_queue_settings (id) values (true);

-- Where the sweep's readiness backstop resumes.
create table public.edit_queue_sweep_state (
  id boolean primary key default true check (id),
  recheck_after_created timestamptz,
  recheck_after_id uuid
);
insert into public.edit_queue_sweep_state (id) values (true);

-- Claim -------------------------------------------------------------------------------------------

-- Workers whose last claim found nothing (claim_edit_request_ahead leaves them the front of the queue).
create table public.edit_idle_workers (
  worker_id text primary key,
  seen_at timestamptz not null default now()
);
comment on table public.edit_idle_workers is
  'Workers whose last claim found nothing, and when: claim_edit_request keeps it, '
  'claim_edit_request_ahead leaves them the front of the queue. The processor''s alone.';

create function public.claim_edit_request(
  p_worker_id text,
  p_lease_seconds integer default 120,
  p_request_id uuid default null
)
returns setof public.edit_requests
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id uuid;
begin
  if p_worker_id is null or p_worker_id = '' then
    raise exception 'claim_edit_request: p_worker_id is required' using errcode = '22023';
  end if;
  if p_lease_seconds is null or p_lease_seconds < 1 then
    raise exception 'claim_edit_request: p_lease_seconds must be positive' using errcode = '22023';
  end if;

  if p_request_id is not null then
    -- A wake-up for one row: that row, if it is claimable now.
    select r.id into v_id
      from public.edit_requests r
     where r.id = p_request_id
       and ((r.status = 'queued' and (r.next_attempt_at is null or r.next_attempt_at <= now()))
            or (r.status = 'processing' and r.lease_expires_at < now() and r.attempts < r.max_attempts))
       for update skip locked;
  else
    -- A lapsed lease is recovered here first (its owner is gone; no operator needed)...
    select r.id into v_id
      from public.edit_requests r
     where r.status = 'processing'
       and r.lease_expires_at < now()
       and r.attempts < r.max_attempts
     order by r.lease_expires_at
     limit 1
       for update skip locked;

    -- ...then the next due queued row in fair order: priority, then fair_tag (one index scan).
    if v_id is null then
      select r.id into v_id
        from public.edit_requests r
       where r.status = 'queued'
         and (r.next_attempt_at is null or r.next_attempt_at <= now())
       order by r.priority desc, r.fair_tag, r.id
       limit 1
         for update skip locked;
    end if;
  end if;

  if p_request_id is null then
    -- A worker that asked for any row and got none is idle: workers claiming ahead leave it the
    -- front of the queue (claim_edit_request_ahead). One that got a row is busy again.
    if v_id is null then
      insert into public.edit_idle_workers as w (worker_id, seen_at) values (p_worker_id, now())
      on conflict (worker_id) do update set seen_at = excluded.seen_at;
      delete from public.edit_idle_workers w where w.seen_at < now() - interval '1 hour';
    else
      delete from public.edit_idle_workers w where w.worker_id = p_worker_id;
    end if;
  end if;

  if v_id is null then
    return;  -- nothing to do: a duplicate wake-up is harmless
  end if;

  -- The attempt is counted at claim, so a request that kills its worker cannot loop forever.
  return query
  update public.edit_requests r
     set status = 'processing',
         claimed_by = p_worker_id,
         lease_expires_at = now() + make_interval(secs => p_lease_seconds),
         attempts = r.attempts + 1,
         started_at = coalesce(r.started_at, now()),
         next_attempt_at = null,
         progress = 0
   where r.id = v_id
  returning r.*;
end
$$;

-- Claiming ahead (docs/worker.md#prefetch): a worker whose GPU is about to free claims its next job
-- while the current edit's last steps run, so the next edit starts at once. It must not take a job
-- that an idle worker could start now: it leaves one due row, in claim order, to each worker idle in
-- the last p_idle_seconds (one whose last claim found nothing) and claims the next one, if any.
create function public.claim_edit_request_ahead(
  p_worker_id text,
  p_lease_seconds integer default 120,
  p_idle_seconds real default 15
)
returns setof public.edit_requests
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_idle integer;
  v_candidate uuid;
  v_id uuid;
begin
  if p_worker_id is null or p_worker_id = '' then
    raise exception 'claim_edit_request_ahead: p_worker_id is required' using errcode = '22023';
  end if;
  if p_lease_seconds is null or p_lease_seconds < 1 then
    raise exception 'claim_edit_request_ahead: p_lease_seconds must be positive' using errcode = '22023';
  end if;

  select count(*) into v_idle
    from public.edit_idle_workers w
   where w.worker_id <> p_worker_id
     and w.seen_at > now() - make_interval(secs => greatest(coalesce(p_idle_seconds, 0), 0));

  -- The rows in front are read without a lock: locking them would hide them from the idle workers'
  -- own claims (SKIP LOCKED) for as long as this runs. Only the one taken is locked.
  for v_candidate in
    select r.id
      from public.edit_requests r
     where r.status = 'queued'
       and (r.next_attempt_at is null or r.next_attempt_at <= now())
     order by r.priority desc, r.fair_tag, r.id
    offset v_idle
     limit 8
  loop
    select r.id into v_id
      from public.edit_requests r
     where r.id = v_candidate
       and r.status = 'queued'
       and (r.next_attempt_at is null or r.next_attempt_at <= now())
       for update skip locked;
    exit when v_id is not null;
  end loop;

  if v_id is null then
    return;
  end if;

  return query
  update public.edit_requests r
     set status = 'processing',
         claimed_by = p_worker_id,
         lease_expires_at = now() + make_interval(secs => p_lease_seconds),
         attempts = r.attempts + 1,
         started_at = coalesce(r.started_at, now()),
         next_attempt_at = null,
         progress = 0
   where r.id = v_id
  returning r.*;
end
$$;

-- The claim's two searches: lapsed leases, then due queued rows in fair order (priority, then
-- fair_tag: 25_fair_sharing_and_limits.sql).
create index edit_requests_leases_idx
  on public.edit_requests (lease_expires_at) where status = 'processing';
create index edit_requests_fair_claim_idx
  on public.edit_requests (priority desc, fair_tag, id) where status = 'queued';

-- While it runs -----------------------------------------------------------------------------------
-- A heartbeat writes only what a client sees, or a lease about to run short: with the same progress
-- it renews the lease only when less than half of it is left (every 60 s instead of every 5 s with
-- the defaults), and updated_at moves only when something other than the lease changes
-- (edit_requests_touch), so a quiet heartbeat makes no WAL and no Realtime event.

create function public.heartbeat_edit_request(
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

-- The end of an attempt ---------------------------------------------------------------------------

create function public.complete_edit_request(
  p_id uuid,
  p_worker_id text,
  p_output_path text,
  p_result jsonb default '{}'
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  update public.edit_requests r
     set status = 'succeeded',
         progress = 1,
         output_path = p_output_path,
         result = coalesce(p_result, '{}'::jsonb),
         finished_at = now(),
         lease_expires_at = null,
         error = null,
         error_code = null
   where r.id = p_id and r.claimed_by = p_worker_id and r.status = 'processing';
  return found;
end
$$;

create function public.edit_request_backoff(p_attempts integer)
returns interval
language sql volatile
set search_path = ''
as $$
  -- 10 s, 20 s, 40 s ... capped at 10 minutes, with ±25 % jitter so retries do not stampede.
  select least(interval '10 minutes', interval '10 seconds' * power(2, greatest(p_attempts - 1, 0)))
         * (0.75 + random() * 0.5)
$$;

create function public.fail_edit_request(
  p_id uuid,
  p_worker_id text,
  p_error text,
  p_retryable boolean default true,
  p_error_code text default null
)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row public.edit_requests;
begin
  select * into v_row from public.edit_requests r
   where r.id = p_id and r.claimed_by = p_worker_id and r.status = 'processing'
   for update;
  if not found then
    return null;  -- not the owner any more: nothing written
  end if;

  if coalesce(p_retryable, true) and v_row.attempts < v_row.max_attempts then
    update public.edit_requests r
       set status = 'queued',
           claimed_by = null,
           lease_expires_at = null,
           next_attempt_at = now() + public.edit_request_backoff(v_row.attempts),
           error = p_error,
           error_code = coalesce(p_error_code, 'error'),
           progress = 0
     where r.id = p_id;
    return 'queued';
  end if;

  update public.edit_requests r
     set status = 'failed',
         lease_expires_at = null,
         finished_at = now(),
         error = coalesce(nullif(p_error, ''), 'unknown error'),
         error_code = coalesce(p_error_code, 'error')
   where r.id = p_id;
  return 'failed';
end
$$;

create function public.release_edit_request(p_id uuid, p_worker_id text)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Graceful shutdown: back to the queue, and the attempt counted at claim is given back.
  update public.edit_requests r
     set status = 'queued',
         claimed_by = null,
         lease_expires_at = null,
         next_attempt_at = null,
         attempts = greatest(r.attempts - 1, 0),
         progress = 0
   where r.id = p_id and r.claimed_by = p_worker_id and r.status = 'processing';
  return found;
end
$$;

-- Cancel and retry --------------------------------------------------------------------------------
-- Who is calling decides: operators are the service role (or a role granted it, or postgres), by
-- the role the session acts as, never by JWT claims (a missing `sub` is no privilege).

create function public.edit_request_caller_is_operator()
returns boolean
language sql stable
set search_path = ''
as $$
  -- The role the session acts as (SET ROLE, as PostgREST does; else the login role). SECURITY
  -- DEFINER changes current_user but not this, so it works inside our definer functions too.
  -- Claims (request.jwt.claims) never count: a missing `sub` is no privilege.
  select pg_has_role(
    case when current_setting('role') = 'none' then session_user::text else current_setting('role') end,
    'service_role', 'MEMBER')
$$;

create function public.cancel_edit_request(p_id uuid)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  -- Operators are service_role (or a role granted it, or postgres); everyone else cancels only
  -- their own rows, and a caller without a `sub` owns none.
  v_operator boolean := public.edit_request_caller_is_operator();
  v_uid uuid := auth.uid();
  v_previous text;
begin
  select r.status into v_previous from public.edit_requests r
   where r.id = p_id and (v_operator or (v_uid is not null and r.user_id = v_uid))
   for update;
  if v_previous is null or v_previous not in ('awaiting_image', 'queued', 'processing') then
    return false;
  end if;

  -- claimed_by is kept, so the running worker's next heartbeat answers 'canceled'.
  update public.edit_requests r
     set status = 'canceled', finished_at = now(), lease_expires_at = null,
         error_code = 'canceled', next_attempt_at = null
   where r.id = p_id;
  if v_previous = 'processing' then
    perform pg_notify('edit_requests_cancel', p_id::text);
  end if;
  return true;
end
$$;

create function public.retry_edit_request(p_id uuid)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- For operators: a failed or canceled request starts over with its attempts reset.
  update public.edit_requests r
     set status = case when public.edit_request_inputs_present(r.input_bucket, r.input_paths)
                       then 'queued' else 'awaiting_image' end,
         attempts = 0, progress = 0, error = null, error_code = null, claimed_by = null,
         lease_expires_at = null, next_attempt_at = null, finished_at = null, started_at = null,
         output_path = null, result = null
   where r.id = p_id and r.status in ('failed', 'canceled');
  return found;
end
$$;

-- The sweep ---------------------------------------------------------------------------------------
-- Recovery without an operator: lapsed leases, inputs that never arrived, a bounded readiness
-- backstop, retries whose back-off ended. pg_cron runs it every 30 s where it is enabled (RunPod and
-- scale-to-zero deployments rely on it); the processor also runs it on every sweep of its own.

create function public.requeue_expired_edit_requests()
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_settings public.edit_queue_settings;
  v_cursor public.edit_queue_sweep_state;
  v_requeued integer;
  v_failed integer;
  v_expired integer;
  v_promoted integer := 0;
  v_due integer;
  v_seen integer;
  v_last_created timestamptz;
  v_last_id uuid;
  v_ready uuid[];
  v_stale uuid[] := '{}';
  v_stale_id uuid;
  c_stale cursor (p_cutoff timestamptz) for
    select r.id from public.edit_requests r
     where r.status = 'awaiting_image' and r.created_at < p_cutoff
     order by r.created_at, r.id;
  v_is_ready boolean;
  c_recheck cursor (p_after_created timestamptz, p_after_id uuid) for
    select r.id, r.created_at,
           not exists (
             select 1 from unnest(r.input_paths) as p(path)
              where p.path <> all (array(select o.name from storage.objects o
                                         where o.bucket_id = r.input_bucket and o.name = any(r.input_paths))))
      from public.edit_requests r
     where r.status = 'awaiting_image' and (r.created_at, r.id) > (p_after_created, p_after_id)
     order by r.created_at, r.id;
begin
  select * into v_settings from public.edit_queue_settings where id;

  with expired as (
    select r.id from public.edit_requests r
     where r.status = 'processing' and r.lease_expires_at < now() and r.attempts < r.max_attempts
     for update skip locked
  )
  update public.edit_requests r
     set status = 'queued', claimed_by = null, lease_expires_at = null, progress = 0,
         error = 'lease expired: the worker stopped answering', error_code = 'lease_expired'
    from expired where r.id = expired.id;
  get diagnostics v_requeued = row_count;

  with exhausted as (
    select r.id from public.edit_requests r
     where r.status = 'processing' and r.lease_expires_at < now() and r.attempts >= r.max_attempts
     for update skip locked
  )
  update public.edit_requests r
     set status = 'failed', lease_expires_at = null, finished_at = now(),
         error = 'lease expired on the last attempt: the worker stopped answering',
         error_code = 'lease_expired'
    from exhausted where r.id = exhausted.id;
  get diagnostics v_failed = row_count;

  -- Inputs that never arrived: only rows past the limit are read, oldest first, through
  -- edit_requests_awaiting_age_idx (a cursor: planned to stop early, never to sort them all).
  open c_stale(now() - v_settings.awaiting_image_ttl);
  loop
    fetch c_stale into v_stale_id;
    exit when not found or cardinality(v_stale) >= 10000;
    v_stale := v_stale || v_stale_id;
  end loop;
  close c_stale;
  update public.edit_requests r
     set status = 'failed', finished_at = now(), error_code = 'input_never_arrived',
         error = format('input images never arrived within %s', v_settings.awaiting_image_ttl)
   where r.id = any(v_stale) and r.status = 'awaiting_image';
  get diagnostics v_expired = row_count;

  -- Backstop for readiness (rows whose inputs are all stored but which missed the trigger):
  -- a bounded batch per run, resuming where the last run stopped, so no run rescans them all.
  select * into v_cursor from public.edit_queue_sweep_state where id for update skip locked;
  if found and v_settings.readiness_recheck_batch > 0 then
    v_seen := 0;
    v_ready := '{}';
    open c_recheck(coalesce(v_cursor.recheck_after_created, '-infinity'),
                   coalesce(v_cursor.recheck_after_id, '00000000-0000-0000-0000-000000000000'));
    loop
      exit when v_seen >= v_settings.readiness_recheck_batch;
      fetch c_recheck into v_last_id, v_last_created, v_is_ready;
      exit when not found;
      v_seen := v_seen + 1;
      if v_is_ready then
        v_ready := v_ready || v_last_id;
      end if;
    end loop;
    close c_recheck;
    if cardinality(v_ready) > 0 then
      -- Queued now, so placed in line now (edit_request_places, 25_fair_sharing_and_limits.sql).
      update public.edit_requests r set status = 'queued', fair_tag = p.fair_tag
        from public.edit_request_places(v_ready) p
       where r.id = p.id and r.status = 'awaiting_image';
      get diagnostics v_promoted = row_count;
    end if;
    -- A short batch reached the end: the next run starts over.
    update public.edit_queue_sweep_state
       set recheck_after_created = case when v_seen = v_settings.readiness_recheck_batch then v_last_created end,
           recheck_after_id = case when v_seen = v_settings.readiness_recheck_batch then v_last_id end
     where id;
  end if;

  -- Retries whose back-off has ended: clearing next_attempt_at wakes the processor again.
  with due as (
    select r.id from public.edit_requests r
     where r.status = 'queued' and r.next_attempt_at is not null and r.next_attempt_at <= now()
     for update skip locked
  )
  update public.edit_requests r set next_attempt_at = null from due where r.id = due.id;
  get diagnostics v_due = row_count;

  return v_requeued + v_failed + v_expired + v_promoted + v_due;
end
$$;

-- The sweep's retry step reads only rows whose back-off is set, and its expiry step only rows past
-- the limit, oldest first.
create index edit_requests_retry_due_idx
  on public.edit_requests (next_attempt_at) where status = 'queued' and next_attempt_at is not null;
create index edit_requests_awaiting_age_idx
  on public.edit_requests (created_at, id) where status = 'awaiting_image';

-- Scheduling it does not depend on set-up order: ensure_edit_request_sweep() schedules the job
-- whenever it is called (pg_cron replaces a job of the same name). The set-up calls it after enabling
-- pg_cron, the processor at every start, and edit_request_sweep_status() says what is missing.

create function public.edit_request_sweep_status()
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

create function public.ensure_edit_request_sweep()
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

-- Where pg_cron is already enabled, building the schema schedules the sweep.
select public.ensure_edit_request_sweep();

-- Metrics -----------------------------------------------------------------------------------------

create function public.edit_request_queue_stats()
returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  -- For the processor's /metrics: depth by status and the age of the oldest due queued row.
  select jsonb_build_object(
    'depth', coalesce((select jsonb_object_agg(s.status, s.n)
                         from (select status, count(*) as n from public.edit_requests group by status) s), '{}'),
    'oldest_queued_age_seconds', coalesce((
      select extract(epoch from now() - min(created_at))
        from public.edit_requests
       where status = 'queued' and (next_attempt_at is null or next_attempt_at <= now())), 0)
  )
$$;

-- Access ------------------------------------------------------------------------------------------

alter table public.edit_queue_settings enable row level security;
alter table public.edit_queue_sweep_state enable row level security;
alter table public.edit_idle_workers enable row level security;
revoke all on public.edit_queue_settings, public.edit_queue_sweep_state, public.edit_idle_workers
  from public, anon, authenticated;
grant all on public.edit_queue_settings, public.edit_queue_sweep_state, public.edit_idle_workers to service_role;
create policy "operators manage settings" on public.edit_queue_settings for all to service_role using (true);

-- The service role runs everything; signed-in users cancel their own requests.
revoke all on function
  public.claim_edit_request(text, integer, uuid),
  public.claim_edit_request_ahead(text, integer, real),
  public.heartbeat_edit_request(uuid, text, real, integer),
  public.complete_edit_request(uuid, text, text, jsonb),
  public.edit_request_backoff(integer),
  public.fail_edit_request(uuid, text, text, boolean, text),
  public.release_edit_request(uuid, text),
  public.edit_request_caller_is_operator(),
  public.cancel_edit_request(uuid),
  public.retry_edit_request(uuid),
  public.requeue_expired_edit_requests(),
  public.edit_request_sweep_status(),
  public.ensure_edit_request_sweep(),
  public.edit_request_queue_stats()
  from public, anon, authenticated;
grant execute on function
  public.claim_edit_request(text, integer, uuid),
  public.claim_edit_request_ahead(text, integer, real),
  public.heartbeat_edit_request(uuid, text, real, integer),
  public.complete_edit_request(uuid, text, text, jsonb),
  public.edit_request_backoff(integer),
  public.fail_edit_request(uuid, text, text, boolean, text),
  public.release_edit_request(uuid, text),
  public.edit_request_caller_is_operator(),
  public.cancel_edit_request(uuid),
  public.retry_edit_request(uuid),
  public.requeue_expired_edit_requests(),
  public.edit_request_sweep_status(),
  public.ensure_edit_request_sweep(),
  public.edit_request_queue_stats()
  to service_role;
grant execute on function public.cancel_edit_request(uuid) to authenticated;
