-- Fair sharing of one GPU among users who may be hostile (issue 13, items 7 to 10).
--
--  * Per-user limits at insert (requests in flight, requests per hour, steps x megapixels per
--    hour), set by operators in public.edit_user_limits; over a limit the insert fails with
--    SQLSTATE PT429 (PostgREST answers HTTP 429) and a message naming the limit.
--  * A fair claim order: priority first (operators), then the request's fair_tag, which is
--    its creation time plus fair_share_quantum for every request its owner already had in
--    flight when it was created. A user with fewer requests in flight goes first; nothing
--    waits forever (a deep request's tag is a fixed time, so newer requests stop passing it).
--    The claim stays one index scan, and no counter row is written by claims or completions.
--  * awaiting_image rows expire (failed, input_never_arrived) after awaiting_image_ttl; the
--    sweep touches only expired rows and a bounded batch for its readiness backstop.
--  * Readiness locks are bounded: at most 64 advisory locks (slots by bucket and top folder)
--    per transaction, taken in order at the end of each statement, however many rows it has.
--  * cancel_edit_request decides operator privilege from the calling role, never from claims.
--
-- Operator-facing reference: docs/fair-sharing.md.

-- Settings ----------------------------------------------------------------------------------------

create table if not exists public.edit_queue_settings (
  id boolean primary key default true check (id),
  awaiting_image_ttl interval not null default interval '24 hours'
    check (awaiting_image_ttl > interval '0'),
  readiness_recheck_batch integer not null default 500
    check (readiness_recheck_batch between 0 and 100000),
  fair_share_quantum interval not null default interval '10 minutes'
    check (fair_share_quantum >= interval '0'),
  updated_at timestamptz not null default now()
);
comment on table public.edit_queue_settings is
  'Operator settings of the queue (one row): awaiting_image_ttl (then failed, input_never_arrived), '
  'readiness_recheck_batch (rows the sweep re-checks per run), fair_share_quantum (the wait one '
  'request already in flight is worth in the claim order).';
insert into public.edit_queue_settings (id) values (true) on conflict (id) do nothing;

create table if not exists public.edit_user_limits (
  -- The all-zero uuid is the default row; a user's row overrides it column by column (null:
  -- the default's value). In the default row, null means no limit.
  user_id uuid primary key,
  max_in_flight integer check (max_in_flight >= 0),
  max_requests_per_hour integer check (max_requests_per_hour >= 0),
  max_cost_per_hour double precision check (max_cost_per_hour >= 0),
  note text,
  updated_at timestamptz not null default now()
);
comment on table public.edit_user_limits is
  'Per-user limits checked at insert (service_role and postgres are exempt). user_id '
  '00000000-0000-0000-0000-000000000000 is the default for everyone; other rows override it '
  'column by column. Cost is num_inference_steps x output megapixels (1 MP when no size).';
insert into public.edit_user_limits (user_id, max_in_flight, max_requests_per_hour, max_cost_per_hour, note)
values ('00000000-0000-0000-0000-000000000000', 100, 1000, 20000, 'default for every user')
on conflict (user_id) do nothing;

create table if not exists public.edit_user_usage (
  -- Written only by a user's own inserts (never by claims or completions), so the processor
  -- never waits on a row a client transaction holds.
  user_id uuid primary key,
  hour_start timestamptz,
  hour_requests integer not null default 0,
  hour_cost double precision not null default 0,
  previous_hour_requests integer not null default 0,
  previous_hour_cost double precision not null default 0,
  updated_at timestamptz not null default now()
);
comment on table public.edit_user_usage is
  'Requests and cost charged per clock hour (this and the previous one); the hourly limits use '
  'a sliding estimate: previous x (1 - fraction of this hour gone) + this hour.';

create table if not exists public.edit_queue_sweep_state (
  id boolean primary key default true check (id),
  recheck_after_created timestamptz,
  recheck_after_id uuid
);
insert into public.edit_queue_sweep_state (id) values (true) on conflict (id) do nothing;

-- Columns and indexes -----------------------------------------------------------------------------

alter table public.edit_requests add column if not exists fair_tag timestamptz;
-- Existing rows keep their first-in-first-out order; bookkeeping (updated_at) is not touched.
alter table public.edit_requests disable trigger edit_requests_touch;
update public.edit_requests set fair_tag = created_at where fair_tag is null;
alter table public.edit_requests enable trigger edit_requests_touch;
alter table public.edit_requests alter column fair_tag set default now();
alter table public.edit_requests alter column fair_tag set not null;
comment on column public.edit_requests.fair_tag is
  'Place in the claim order after priority: created_at + fair_share_quantum x the requests its '
  'owner already had in flight when it was created.';

create index if not exists edit_requests_fair_claim_idx
  on public.edit_requests (priority desc, fair_tag, id) where status = 'queued';
drop index if exists public.edit_requests_claimable_idx;
create index if not exists edit_requests_in_flight_idx
  on public.edit_requests (user_id) where status in ('awaiting_image', 'queued', 'processing');
-- The sweep's retry step reads only rows whose back-off is set (was: every queued row).
create index if not exists edit_requests_retry_due_idx
  on public.edit_requests (next_attempt_at) where status = 'queued' and next_attempt_at is not null;
create index if not exists edit_requests_awaiting_age_idx
  on public.edit_requests (created_at, id) where status = 'awaiting_image';

-- Who is calling ----------------------------------------------------------------------------------

create or replace function public.edit_request_caller_is_operator()
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

create or replace function public.edit_request_cost(p_steps integer, p_width integer, p_height integer)
returns double precision
language sql immutable parallel safe
as $$
  -- Steps x megapixels (plain arithmetic on its arguments, so it can be inlined: no SET clause) of the output (1 MP = 1024 x 1024; the model's default area when no size).
  select p_steps * coalesce(p_width::double precision * p_height, 1048576) / 1048576
$$;

-- Admission: limits and the fair tag --------------------------------------------------------------

create or replace function public.edit_request_admission_start(p_owner uuid)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_zero constant uuid := '00000000-0000-0000-0000-000000000000';
  v_limited boolean := not public.edit_request_caller_is_operator();
  v_quantum double precision;
  v_max_in_flight integer;
  v_max_requests integer;
  v_max_cost double precision;
  v_usage public.edit_user_usage;
  v_hour timestamptz := date_trunc('hour', now());
  v_gone double precision := extract(epoch from now() - date_trunc('hour', now())) / 3600;
  v_base_requests double precision := 0;
  v_base_cost double precision := 0;
  v_in_flight integer;
begin
  -- First row of this owner in this transaction: everything the per-row checks need, kept in
  -- a transaction-local setting so that each further row costs O(1), however big the insert.
  select extract(epoch from s.fair_share_quantum) into v_quantum from public.edit_queue_settings s;
  if v_limited then
    select coalesce(u.max_in_flight, d.max_in_flight),
           coalesce(u.max_requests_per_hour, d.max_requests_per_hour),
           coalesce(u.max_cost_per_hour, d.max_cost_per_hour)
      into v_max_in_flight, v_max_requests, v_max_cost
      from (select 1) one
      left join public.edit_user_limits d on d.user_id = v_zero
      left join public.edit_user_limits u on u.user_id = p_owner;
    -- The usage row is the owner's lock: concurrent inserts by one user queue here, so the
    -- in-flight count below includes whatever the previous one committed.
    insert into public.edit_user_usage (user_id) values (p_owner) on conflict (user_id) do nothing;
    select * into v_usage from public.edit_user_usage where user_id = p_owner for update;
    if v_usage.hour_start is distinct from v_hour then
      update public.edit_user_usage
         set previous_hour_requests = case when v_usage.hour_start = v_hour - interval '1 hour'
                                           then v_usage.hour_requests else 0 end,
             previous_hour_cost = case when v_usage.hour_start = v_hour - interval '1 hour'
                                       then v_usage.hour_cost else 0 end,
             hour_requests = 0, hour_cost = 0, hour_start = v_hour, updated_at = now()
       where user_id = p_owner
      returning * into v_usage;
    end if;
    v_base_requests := v_usage.previous_hour_requests * (1 - v_gone) + v_usage.hour_requests;
    v_base_cost := v_usage.previous_hour_cost * (1 - v_gone) + v_usage.hour_cost;
  end if;
  -- Bounded: no more than one past the limit is ever counted (1000 for exempt callers, whose
  -- count only places their rows in the fair order).
  select count(*) into v_in_flight from (
    select 1 from public.edit_requests r
     where r.user_id = p_owner and r.status in ('awaiting_image', 'queued', 'processing')
     limit coalesce(v_max_in_flight + 1, 1000)
  ) s;
  -- limited, in_flight, requests, cost, max_in_flight, max_requests, max_cost, quantum (s)
  return concat_ws(',', v_limited::int, v_in_flight, v_base_requests, v_base_cost,
                   coalesce(v_max_in_flight, -1), coalesce(v_max_requests, -1),
                   coalesce(v_max_cost, -1), v_quantum);
end
$$;

create or replace function public.edit_requests_before_insert()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_key text;
  v_state text[];
  v_in_flight integer;
  v_requests double precision;
  v_cost double precision;
  v_row_cost double precision;
begin
  -- Readiness without a lock: a row whose inputs are all visible now is queued; any other row
  -- (Each presence check is one index probe, bucket_id = and name = any(paths): a correlated
  -- join on name can be planned as a scan of the whole bucket when statistics are stale.)
  -- is re-checked under the slot locks at the end of the statement (edit_requests_after_insert).
  -- Decided here, not later, so that RETURNING (PostgREST's return=representation) shows it.
  -- The caller cannot pick (authenticated users cannot even name the column).
  if new.status in ('queued', 'awaiting_image') then
    new.status := case
      when exists (
        select 1 from unnest(new.input_paths) as p(path)
         where p.path <> all (array(select o.name from storage.objects o
                                         where o.bucket_id = new.input_bucket and o.name = any(new.input_paths)))
      ) then 'awaiting_image'
      else 'queued'
    end;
  end if;

  if new.user_id is null then
    new.fair_tag := new.created_at;
    return new;
  end if;

  v_key := 'edit_requests.owner_' || replace(new.user_id::text, '-', '');
  v_state := string_to_array(coalesce(nullif(current_setting(v_key, true), ''),
                                      public.edit_request_admission_start(new.user_id)), ',');
  v_in_flight := v_state[2]::integer;
  v_requests := v_state[3]::double precision + 1;
  v_row_cost := new.num_inference_steps * coalesce(new.width::double precision * new.height, 1048576) / 1048576;  -- edit_request_cost
  v_cost := v_state[4]::double precision + v_row_cost;

  if v_state[1] = '1' then
    if v_state[5]::integer >= 0 and v_in_flight + 1 > v_state[5]::integer then
      raise exception 'edit request limit exceeded: max_in_flight (%)', v_state[5]
        using errcode = 'PT429',
              detail = format('%s requests of this user are awaiting an image, queued or processing.', v_in_flight),
              hint = 'Wait for some to finish (or cancel them); operators set limits in public.edit_user_limits.';
    end if;
    if v_state[6]::integer >= 0 and v_requests > v_state[6]::integer then
      raise exception 'edit request limit exceeded: max_requests_per_hour (%)', v_state[6]
        using errcode = 'PT429',
              detail = format('About %s requests of this user in the last hour, this one included.', ceil(v_requests)),
              hint = 'Try again later; operators set limits in public.edit_user_limits.';
    end if;
    if v_state[7]::double precision >= 0 and v_cost > v_state[7]::double precision then
      raise exception 'edit request limit exceeded: max_cost_per_hour (%)', v_state[7]
        using errcode = 'PT429',
              detail = format('This request costs %s (steps x megapixels); about %s used in the last hour with it.',
                              round(v_row_cost::numeric, 2), round(v_cost::numeric, 2)),
              hint = 'Use fewer steps or a smaller size, or try again later; operators set limits in public.edit_user_limits.';
    end if;
  end if;

  new.fair_tag := new.created_at + make_interval(secs => v_state[8]::double precision * v_in_flight);
  v_state[2] := v_in_flight + 1;
  v_state[3] := v_requests;
  v_state[4] := v_cost;
  perform set_config(v_key, array_to_string(v_state, ','), true);
  return new;
end
$$;

-- Bounded readiness locks -------------------------------------------------------------------------

create or replace function public.edit_request_lock_slot(p_bucket text, p_path text)
returns integer
language sql immutable parallel safe
set search_path = ''
as $$
  -- One of 64 slots per (bucket, top folder): uploads and inserts of one user share a slot,
  -- and a transaction never holds more than 64 of these locks, whatever its size.
  select hashtext(p_bucket || '/' || split_part(p_path, '/', 1)) & 63
$$;

create or replace function public.edit_request_lock_slots(p_slots integer[])
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_slot integer;
begin
  -- An upload and the row's insert can race in two transactions; under READ COMMITTED each
  -- could miss the other. Both take their slots (sorted: no deadlock between two statements)
  -- and then look again, so the later one waits and sees the earlier one's committed rows.
  foreach v_slot in array coalesce(p_slots, '{}') loop
    perform pg_advisory_xact_lock(7051, v_slot);
  end loop;
end
$$;

create or replace function public.edit_requests_after_insert()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row public.edit_requests;
  v_url text;
  v_secret text;
  v_format text;
  v_body jsonb;
  v_headers jsonb;
begin
  -- 1. Charge the hour's usage (limited callers only: their rows passed the per-row checks).
  if not public.edit_request_caller_is_operator() then
    update public.edit_user_usage u
       set hour_requests = u.hour_requests + s.n, hour_cost = u.hour_cost + s.cost, updated_at = now()
      from (select n.user_id, count(*) as n,
                   sum(public.edit_request_cost(n.num_inference_steps, n.width, n.height)) as cost
              from new_rows n where n.user_id is not null group by n.user_id) s
     where u.user_id = s.user_id;
  end if;

  -- 2. Readiness: rows that found an input missing look again under the slot locks (an upload
  --    may have committed meanwhile; see edit_request_lock_slots).
  if exists (select 1 from new_rows n where n.status = 'awaiting_image') then
    perform public.edit_request_lock_slots(array(
      select distinct public.edit_request_lock_slot(n.input_bucket, p.path)
        from new_rows n, unnest(n.input_paths) as p(path)
       where n.status = 'awaiting_image' and p.path is not null
       order by 1));
    -- Only rows whose inputs are now all there are looked up again (by id).
    update public.edit_requests r
       set status = 'queued'
      from (select n.id from new_rows n
             where n.status = 'awaiting_image'
               and not exists (
                 select 1 from unnest(n.input_paths) as p(path)
                  where p.path <> all (array(select o.name from storage.objects o
                                         where o.bucket_id = n.input_bucket and o.name = any(n.input_paths))))) ready
     where r.id = ready.id and r.status = 'awaiting_image';
  end if;

  -- 3. Wake-up, as edit_requests_wake_processor does for one row, for every row inserted queued
  --    and due: one notification each and, where pg_net and Vault exist, one webhook each (rows
  --    promoted in step 2 were woken by that row trigger, on their update).
  perform pg_notify('edit_requests', n.id::text)
     from new_rows n
    where n.status = 'queued' and (n.next_attempt_at is null or n.next_attempt_at <= now());
  if to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is null
     or to_regclass('vault.decrypted_secrets') is null then
    return null;
  end if;
  execute 'select decrypted_secret from vault.decrypted_secrets where name = $1 limit 1'
     into v_url using 'edit_processor_webhook_url';
  if v_url is null or v_url = '' then
    return null;
  end if;
  execute 'select decrypted_secret from vault.decrypted_secrets where name = $1 limit 1'
     into v_secret using 'edit_processor_webhook_secret';
  execute 'select decrypted_secret from vault.decrypted_secrets where name = $1 limit 1'
     into v_format using 'edit_processor_webhook_format';
  for v_row in
    select * from new_rows n
     where n.status = 'queued' and (n.next_attempt_at is null or n.next_attempt_at <= now())
  loop
    if v_format = 'runpod' then
      v_body := jsonb_build_object('input', jsonb_build_object('edit_request_id', v_row.id));
      v_headers := jsonb_build_object('Content-Type', 'application/json', 'Authorization', 'Bearer ' || coalesce(v_secret, ''));
    else
      v_body := jsonb_build_object('type', 'INSERT', 'table', tg_table_name, 'schema', tg_table_schema,
                                   'record', to_jsonb(v_row), 'old_record', null);
      v_headers := jsonb_build_object('Content-Type', 'application/json', 'X-Webhook-Secret', coalesce(v_secret, ''));
    end if;
    execute 'select net.http_post(url := $1, body := $2, params := $3, headers := $4, timeout_milliseconds := $5)'
      using v_url, v_body, '{}'::jsonb, v_headers, 5000;
  end loop;
  return null;
end
$$;

drop trigger if exists edit_requests_after_insert on public.edit_requests;
create trigger edit_requests_after_insert
  after insert on public.edit_requests
  referencing new table as new_rows
  for each statement execute function public.edit_requests_after_insert();

create or replace function public.edit_requests_on_objects_stored()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Storage commits objects as the service role, so match rows by bucket and name, never by
  -- the caller. Reads storage.objects, never writes it. Once per statement: a 20,000-object
  -- transaction takes at most 64 locks, not 20,000.
  perform public.edit_request_lock_slots(array(
    select distinct public.edit_request_lock_slot(o.bucket_id, o.name)
      from new_objects o where o.bucket_id is not null and o.name is not null
     order by 1));
  update public.edit_requests r
     set status = 'queued'
   where r.status = 'awaiting_image'
     and r.id in (
       select w.id from new_objects o
         join public.edit_requests w
           on w.status = 'awaiting_image' and w.input_bucket = o.bucket_id and w.input_paths @> array[o.name])
     and not exists (
       select 1 from unnest(r.input_paths) as p(path)
        where p.path <> all (array(select o.name from storage.objects o
                                         where o.bucket_id = r.input_bucket and o.name = any(r.input_paths))));
  return null;
end
$$;

drop trigger if exists edit_requests_inputs_ready on storage.objects;
drop trigger if exists edit_requests_inputs_stored on storage.objects;
create trigger edit_requests_inputs_stored
  after insert on storage.objects
  referencing new table as new_objects
  for each statement execute function public.edit_requests_on_objects_stored();
drop trigger if exists edit_requests_inputs_restored on storage.objects;
create trigger edit_requests_inputs_restored
  after update on storage.objects
  referencing new table as new_objects
  for each statement execute function public.edit_requests_on_objects_stored();

-- Wake-up ---------------------------------------------------------------------------------------

-- Updates keep the row trigger (claims, retries, readiness); inserted rows are woken once per
-- statement by edit_requests_after_insert (set-based pg_notify, webhook lookups done once).
drop trigger if exists edit_requests_wake_processor on public.edit_requests;
create trigger edit_requests_wake_processor
  after update of status, next_attempt_at on public.edit_requests
  for each row execute function public.edit_requests_wake_processor();

-- The fair claim ----------------------------------------------------------------------------------

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

-- The sweep: leases, expiry of missing inputs, a bounded readiness backstop, due retries ----------

create or replace function public.requeue_expired_edit_requests()
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
      update public.edit_requests r set status = 'queued'
       where r.id = any(v_ready) and r.status = 'awaiting_image';
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

-- Cancel: privilege from the role -----------------------------------------------------------------

create or replace function public.cancel_edit_request(p_id uuid)
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

-- Access ------------------------------------------------------------------------------------------

-- Supabase grants the API roles everything on new public tables and functions: take it back.
alter table public.edit_queue_settings enable row level security;
alter table public.edit_user_limits enable row level security;
alter table public.edit_user_usage enable row level security;
alter table public.edit_queue_sweep_state enable row level security;
revoke all on public.edit_queue_settings, public.edit_user_limits, public.edit_user_usage,
              public.edit_queue_sweep_state from public, anon, authenticated;
grant all on public.edit_queue_settings, public.edit_user_limits, public.edit_user_usage,
             public.edit_queue_sweep_state to service_role;

-- Users may read the limits that apply to them (the default row and their own) and their usage.
grant select on public.edit_user_limits, public.edit_user_usage to authenticated;
drop policy if exists "users read their limits" on public.edit_user_limits;
create policy "users read their limits" on public.edit_user_limits
  for select to authenticated
  using (user_id = (select auth.uid()) or user_id = '00000000-0000-0000-0000-000000000000');
drop policy if exists "users read their usage" on public.edit_user_usage;
create policy "users read their usage" on public.edit_user_usage
  for select to authenticated
  using (user_id = (select auth.uid()));
drop policy if exists "operators manage settings" on public.edit_queue_settings;
create policy "operators manage settings" on public.edit_queue_settings for all to service_role using (true);

revoke execute on function
  public.edit_request_caller_is_operator(),
  public.edit_request_admission_start(uuid),
  public.edit_request_lock_slot(text, text),
  public.edit_request_lock_slots(integer[]),
  public.edit_requests_before_insert(),
  public.edit_requests_after_insert(),
  public.edit_requests_on_objects_stored()
  from public, anon, authenticated;
revoke execute on function public.edit_request_cost(integer, integer, integer) from public, anon;
grant execute on function public.edit_request_cost(integer, integer, integer) to authenticated, service_role;
