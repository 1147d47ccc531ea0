-- qwen-edit-processor: the edit_requests table and its state machine.
--
-- This file is the product's public contract: apps insert rows and read them (RLS), the
-- processor moves them through the state machine ONLY through the functions below, and
-- dashboards read the history. Every transition is conditional on status and owner, so a
-- stale worker can never overwrite the work of a newer owner.
--
--   awaiting_image --(last input object stored)--> queued --claim--> processing
--   processing --complete--> succeeded
--   processing --fail(retryable, attempts left)--> queued (next_attempt_at = back-off)
--   processing --fail(permanent or attempts used up)--> failed
--   processing --lease lapsed--> claimable again in claim; requeue_expired: queued or failed
--   processing --release (graceful shutdown)--> queued, the attempt given back
--   awaiting_image | queued | processing --cancel--> canceled
--   failed | canceled --retry (operators)--> queued | awaiting_image
--
-- The processor connects with the project's direct (session-mode) connection string as
-- `postgres`, or as any login role granted `service_role` (the functions are security
-- definer and executable by service_role). LISTEN needs a session, so not the
-- transaction-mode pooler.

-- Table -------------------------------------------------------------------------------------------

create or replace function public.edit_request_paths_valid(p_paths text[])
returns boolean
language sql immutable parallel safe
set search_path = ''
as $$
  -- Object paths as Supabase Storage accepts them, without traversal or absolute paths.
  select p_paths is not null
     and cardinality(p_paths) between 1 and 3
     and not exists (
       select 1 from unnest(p_paths) as p(path)
       where path is null
          or char_length(path) not between 1 and 1024
          or path like '/%'
          or path like '%//%'
          or path ~ '(^|/)\.\.?(/|$)'
     )
$$;

create table if not exists public.edit_requests (
  id uuid primary key default gen_random_uuid(),
  user_id uuid default auth.uid() references auth.users (id) on delete set null,
  status text not null default 'queued',
  prompt text not null,
  negative_prompt text not null default ' ',
  input_bucket text not null default 'edit-inputs',
  input_paths text[] not null,
  output_bucket text not null default 'edit-outputs',
  output_path text,
  num_inference_steps integer not null default 40,
  true_cfg_scale real not null default 4.0,
  guidance_scale real not null default 1.0,
  seed bigint,
  progress real not null default 0,
  attempts integer not null default 0,
  max_attempts integer not null default 3,
  next_attempt_at timestamptz,
  claimed_by text,
  lease_expires_at timestamptz,
  error text,
  error_code text,
  result jsonb,
  priority smallint not null default 0,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz not null default now(),

  constraint edit_requests_status_known
    check (status in ('awaiting_image', 'queued', 'processing', 'succeeded', 'failed', 'canceled')),
  constraint edit_requests_prompt_length check (char_length(prompt) between 1 and 2000),
  constraint edit_requests_negative_prompt_length check (char_length(negative_prompt) <= 2000),
  constraint edit_requests_input_paths_valid check (public.edit_request_paths_valid(input_paths)),
  constraint edit_requests_steps_range check (num_inference_steps between 1 and 100),
  constraint edit_requests_true_cfg_range check (true_cfg_scale between 0 and 20),
  constraint edit_requests_guidance_range check (guidance_scale between 0 and 20),
  constraint edit_requests_seed_range check (seed between 0 and 9223372036854775807),
  constraint edit_requests_progress_range check (progress between 0 and 1),
  constraint edit_requests_attempts_range check (attempts between 0 and max_attempts),
  constraint edit_requests_max_attempts_range check (max_attempts between 1 and 20),
  constraint edit_requests_priority_range check (priority between -100 and 100),
  -- Bad states are impossible, not merely unlikely:
  constraint edit_requests_processing_is_owned
    check (status <> 'processing' or (claimed_by is not null and lease_expires_at is not null and started_at is not null)),
  constraint edit_requests_waiting_is_unowned
    check (status not in ('awaiting_image', 'queued') or (lease_expires_at is null and finished_at is null)),
  constraint edit_requests_succeeded_has_output
    check (status <> 'succeeded' or (output_path is not null and finished_at is not null and progress = 1)),
  constraint edit_requests_failed_has_reason
    check (status <> 'failed' or (error is not null and finished_at is not null)),
  constraint edit_requests_canceled_is_finished check (status <> 'canceled' or finished_at is not null),
  constraint edit_requests_only_success_has_output check (output_path is null or status = 'succeeded')
);

comment on table public.edit_requests is
  'Image edit requests for Qwen-Image-Edit-2509. Apps insert; the processor moves them through '
  'claim_edit_request / heartbeat / complete / fail / release; clients watch via Realtime.';

-- The claim's two searches, the lease sweep, readiness look-ups, users' lists and dashboards.
create index if not exists edit_requests_claimable_idx
  on public.edit_requests (priority desc, created_at, id) where status = 'queued';
create index if not exists edit_requests_leases_idx
  on public.edit_requests (lease_expires_at) where status = 'processing';
create index if not exists edit_requests_awaiting_inputs_idx
  on public.edit_requests using gin (input_paths) where status = 'awaiting_image';
create index if not exists edit_requests_user_idx on public.edit_requests (user_id, created_at desc);
create index if not exists edit_requests_created_idx on public.edit_requests (created_at);

-- Readiness ---------------------------------------------------------------------------------------

create or replace function public.edit_request_inputs_present(p_bucket text, p_paths text[])
returns boolean
language sql volatile
security definer
set search_path = ''
as $$
  -- Volatile on purpose: called after taking the path locks, it must see rows committed since.
  select not exists (
    select 1 from unnest(p_paths) as p(path)
    where not exists (select 1 from storage.objects o where o.bucket_id = p_bucket and o.name = p.path)
  )
$$;

create or replace function public.edit_request_lock_paths(p_bucket text, p_paths text[])
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_path text;
begin
  -- An upload and the row's insert can race in two transactions; under READ COMMITTED each
  -- trigger could miss the other. Both sides take these locks first (in one order: no
  -- deadlock), so the later one waits and then sees the earlier one's committed row.
  for v_path in select distinct p from unnest(p_paths) as p order by p loop
    perform pg_advisory_xact_lock(hashtextextended(p_bucket || '/' || v_path, 7051));
  end loop;
end
$$;

create or replace function public.edit_requests_before_insert()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Waiting rows start queued or awaiting_image depending on what Storage holds; the
  -- caller cannot pick (authenticated users cannot even name the column).
  if new.status in ('queued', 'awaiting_image') then
    perform public.edit_request_lock_paths(new.input_bucket, new.input_paths);
    new.status := case
      when public.edit_request_inputs_present(new.input_bucket, new.input_paths) then 'queued'
      else 'awaiting_image'
    end;
  end if;
  return new;
end
$$;

drop trigger if exists edit_requests_before_insert on public.edit_requests;
create trigger edit_requests_before_insert
  before insert on public.edit_requests
  for each row execute function public.edit_requests_before_insert();

create or replace function public.edit_requests_on_object_stored()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Storage commits objects as the service role, so match rows by bucket and name, never by
  -- the caller. Reads storage.objects, never writes it. Also fires in Storage's rolled-back
  -- permission check, which is harmless: everything here is transactional.
  perform public.edit_request_lock_paths(new.bucket_id, array[new.name]);
  update public.edit_requests r
     set status = 'queued'
   where r.status = 'awaiting_image'
     and r.input_bucket = new.bucket_id
     and r.input_paths @> array[new.name]
     and public.edit_request_inputs_present(r.input_bucket, r.input_paths);
  return null;
end
$$;

drop trigger if exists edit_requests_inputs_ready on storage.objects;
create trigger edit_requests_inputs_ready
  after insert or update on storage.objects
  for each row execute function public.edit_requests_on_object_stored();

-- Bookkeeping -------------------------------------------------------------------------------------

create or replace function public.edit_requests_touch()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end
$$;

drop trigger if exists edit_requests_touch on public.edit_requests;
create trigger edit_requests_touch
  before update on public.edit_requests
  for each row execute function public.edit_requests_touch();

-- State machine -----------------------------------------------------------------------------------

create or replace function public.edit_request_backoff(p_attempts integer)
returns interval
language sql volatile
set search_path = ''
as $$
  -- 10 s, 20 s, 40 s ... capped at 10 minutes, with ±25 % jitter so retries do not stampede.
  select least(interval '10 minutes', interval '10 seconds' * power(2, greatest(p_attempts - 1, 0)))
         * (0.75 + random() * 0.5)
$$;

create or replace function public.claim_edit_request(
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

  -- A lapsed lease is recovered here first (its owner is gone; no operator needed)...
  select r.id into v_id
    from public.edit_requests r
   where r.status = 'processing'
     and r.lease_expires_at < now()
     and r.attempts < r.max_attempts
     and (p_request_id is null or r.id = p_request_id)
   order by r.lease_expires_at
   limit 1
   for update skip locked;

  -- ...then the next due queued row, by priority then age.
  if v_id is null then
    select r.id into v_id
      from public.edit_requests r
     where r.status = 'queued'
       and (r.next_attempt_at is null or r.next_attempt_at <= now())
       and (p_request_id is null or r.id = p_request_id)
     order by r.priority desc, r.created_at, r.id
     limit 1
     for update skip locked;
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
begin
  update public.edit_requests r
     set lease_expires_at = now() + make_interval(secs => greatest(p_lease_seconds, 1)),
         progress = greatest(r.progress, least(1, greatest(0, coalesce(p_progress, r.progress))))
   where r.id = p_id and r.claimed_by = p_worker_id and r.status = 'processing';
  if found then
    return 'ok';
  end if;
  select r.status into v_status from public.edit_requests r where r.id = p_id and r.claimed_by = p_worker_id;
  return case when v_status = 'canceled' then 'canceled' else 'lost' end;
end
$$;

create or replace function public.complete_edit_request(
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

create or replace function public.fail_edit_request(
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

create or replace function public.release_edit_request(p_id uuid, p_worker_id text)
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

create or replace function public.requeue_expired_edit_requests()
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_requeued integer;
  v_failed integer;
  v_promoted integer;
  v_due integer;
begin
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

  -- Backstop for readiness: rows whose inputs are all stored but which missed the trigger.
  with ready as (
    select r.id from public.edit_requests r
     where r.status = 'awaiting_image' and public.edit_request_inputs_present(r.input_bucket, r.input_paths)
     for update skip locked
  )
  update public.edit_requests r set status = 'queued' from ready where r.id = ready.id;
  get diagnostics v_promoted = row_count;

  -- Retries whose back-off has ended: clearing next_attempt_at wakes the processor again.
  with due as (
    select r.id from public.edit_requests r
     where r.status = 'queued' and r.next_attempt_at <= now()
     for update skip locked
  )
  update public.edit_requests r set next_attempt_at = null from due where r.id = due.id;
  get diagnostics v_due = row_count;

  return v_requeued + v_failed + v_promoted + v_due;
end
$$;

create or replace function public.cancel_edit_request(p_id uuid)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  v_privileged boolean := v_uid is null or coalesce(auth.role(), '') = 'service_role';
  v_previous text;
begin
  select r.status into v_previous from public.edit_requests r
   where r.id = p_id and (v_privileged or r.user_id = v_uid)
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

create or replace function public.retry_edit_request(p_id uuid)
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

create or replace function public.edit_request_queue_stats()
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

-- Wake-up -----------------------------------------------------------------------------------------

create or replace function public.edit_requests_wake_processor()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_url text;
  v_secret text;
  v_format text;
  v_body jsonb;
  v_headers jsonb;
begin
  -- Only a transition INTO queued that is due now wakes anyone; progress, claims and
  -- results never re-fire it (the trigger is limited to `update of status, next_attempt_at`).
  -- A retry whose back-off has ended counts too: the sweep clears its next_attempt_at, so
  -- deployments woken only by the webhook (RunPod, scale to zero) still run it.
  if new.status <> 'queued'
     or (new.next_attempt_at is not null and new.next_attempt_at > now())
     or (tg_op = 'UPDATE' and old.status = 'queued'
         and not (old.next_attempt_at is not null and new.next_attempt_at is null)) then
    return null;
  end if;

  perform pg_notify('edit_requests', new.id::text);

  -- The HTTP webhook runs only where pg_net and Vault exist (Supabase); plain Postgres skips
  -- it. Dynamic SQL, so this function compiles without those schemas.
  if to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is null
     or to_regclass('vault.decrypted_secrets') is null then
    return null;
  end if;
  execute 'select decrypted_secret from vault.decrypted_secrets where name = $1 limit 1'
     into v_url using 'edit_processor_webhook_url';
  execute 'select decrypted_secret from vault.decrypted_secrets where name = $1 limit 1'
     into v_secret using 'edit_processor_webhook_secret';
  execute 'select decrypted_secret from vault.decrypted_secrets where name = $1 limit 1'
     into v_format using 'edit_processor_webhook_format';
  if v_url is null or v_url = '' then
    return null;
  end if;
  if v_format = 'runpod' then
    -- A RunPod serverless endpoint (https://api.runpod.ai/v2/<endpoint>/run): its body is
    -- {"input": ...} and it authenticates with the RunPod API key as a bearer token.
    v_body := jsonb_build_object('input', jsonb_build_object('edit_request_id', new.id));
    v_headers := jsonb_build_object('Content-Type', 'application/json', 'Authorization', 'Bearer ' || coalesce(v_secret, ''));
  else
    v_body := jsonb_build_object(
      'type', tg_op,
      'table', tg_table_name,
      'schema', tg_table_schema,
      'record', to_jsonb(new),
      'old_record', case when tg_op = 'UPDATE' then to_jsonb(old) end
    );
    v_headers := jsonb_build_object('Content-Type', 'application/json', 'X-Webhook-Secret', coalesce(v_secret, ''));
  end if;
  execute 'select net.http_post(url := $1, body := $2, params := $3, headers := $4, timeout_milliseconds := $5)'
    using v_url, v_body, '{}'::jsonb, v_headers, 5000;
  return null;
end
$$;

drop trigger if exists edit_requests_wake_processor on public.edit_requests;
create trigger edit_requests_wake_processor
  after insert or update of status, next_attempt_at on public.edit_requests
  for each row execute function public.edit_requests_wake_processor();

-- Recovery without an operator where pg_cron exists (Supabase); the processor also sweeps.
do $$
begin
  if exists (select 1 from pg_extension where extname = 'pg_cron') then
    perform cron.schedule('requeue-expired-edit-requests', '30 seconds',
                          'select public.requeue_expired_edit_requests()');
  end if;
end
$$;

-- Access ------------------------------------------------------------------------------------------

alter table public.edit_requests enable row level security;

drop policy if exists "users read their own edit requests" on public.edit_requests;
create policy "users read their own edit requests" on public.edit_requests
  for select to authenticated
  using (user_id = (select auth.uid()));

create or replace function public.edit_request_paths_owned(p_paths text[], p_user uuid)
returns boolean
language sql immutable parallel safe
set search_path = ''
as $$
  select p_user is not null and not exists (
    select 1 from unnest(p_paths) as p(path) where split_part(path, '/', 1) <> p_user::text
  )
$$;

drop policy if exists "users create their own edit requests" on public.edit_requests;
create policy "users create their own edit requests" on public.edit_requests
  for insert to authenticated
  with check (
    user_id = (select auth.uid())
    and public.edit_request_paths_owned(input_paths, (select auth.uid()))
  );

-- Supabase grants the API roles everything on public tables by default; take back what they
-- must not have. Users name only the request's content; state and bookkeeping are the
-- processor's, so clients cannot set status, progress, result or ownership columns.
revoke all on public.edit_requests from anon;
revoke all on public.edit_requests from authenticated;
grant select on public.edit_requests to authenticated;
grant insert (id, user_id, prompt, negative_prompt, input_paths, num_inference_steps,
              true_cfg_scale, guidance_scale, seed)
  on public.edit_requests to authenticated;
grant all on public.edit_requests to service_role;

revoke execute on function
  public.claim_edit_request(text, integer, uuid),
  public.heartbeat_edit_request(uuid, text, real, integer),
  public.complete_edit_request(uuid, text, text, jsonb),
  public.fail_edit_request(uuid, text, text, boolean, text),
  public.release_edit_request(uuid, text),
  public.requeue_expired_edit_requests(),
  public.cancel_edit_request(uuid),
  public.retry_edit_request(uuid),
  public.edit_request_queue_stats(),
  public.edit_request_inputs_present(text, text[]),
  public.edit_request_lock_paths(text, text[]),
  public.edit_request_backoff(integer)
  from public, anon, authenticated;
grant execute on function
  public.claim_edit_request(text, integer, uuid),
  public.heartbeat_edit_request(uuid, text, real, integer),
  public.complete_edit_request(uuid, text, text, jsonb),
  public.fail_edit_request(uuid, text, text, boolean, text),
  public.release_edit_request(uuid, text),
  public.requeue_expired_edit_requests(),
  public.cancel_edit_request(uuid),
  public.retry_edit_request(uuid),
  public.edit_request_queue_stats()
  to service_role;
grant execute on function public.cancel_edit_request(uuid) to authenticated;
-- Used by a CHECK constraint and an RLS policy, so callers evaluate them; both are pure.
grant execute on function public.edit_request_paths_valid(text[]) to anon, authenticated, service_role;
grant execute on function public.edit_request_paths_owned(text[], uuid) to authenticated, service_role;

-- Realtime: clients watching their rows see every status and progress change.
do $$
begin
  if exists (select 1 from pg_publication where pubname = 'supabase_realtime')
     and not exists (
       select 1 from pg_publication_tables
        where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'edit_requests'
     ) then
    alter publication supabase_realtime add table public.edit_requests;
  end if;
end
$$;
