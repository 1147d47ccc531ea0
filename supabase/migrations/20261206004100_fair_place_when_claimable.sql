-- A fair place is taken when a request becomes claimable, not at its insert (issue #22 item 3).
--
-- fair_tag was fixed at insert. Rows inserted before their images (awaiting_image) and uploaded later
-- kept their early tags: 5 rows inserted, a victim filing 12 s later (quantum 2 s), then the 5 uploads
-- put all 5 before the victim; at the defaults (10 min quantum, 24 h awaiting_image_ttl, 100 in flight)
-- a user could bank a day of places. Now:
-- * a row inserted queued (its images already stored) is placed at insert, as before, but counting the
--   owner's requests queued or processing (ahead in line, or running), not those still awaiting their
--   images; a row inserted awaiting_image gets only created_at, which no claim reads;
-- * edit_request_places(ids) places rows that become queued later: now() + fair_share_quantum x (the
--   owner's requests queued or processing + those placed before them in the same statement); the
--   upload trigger (edit_requests_on_objects_stored) and the sweep's readiness backstop set status and
--   fair_tag in one update (one row version, one Realtime event);
-- * retries, releases and lapsed leases keep their place, as before.
-- Existing awaiting_image rows get their place when their images arrive, like new ones. Decision record
-- 0071.

-- The owner's in-flight index gains the status, so that counting their queued and processing rows reads
-- no row awaiting its images (a plain build: it locks writes to edit_requests while it runs).
drop index public.edit_requests_in_flight_idx;
create index edit_requests_in_flight_idx
  on public.edit_requests (user_id, status) where status in ('awaiting_image', 'queued', 'processing');

create or replace function public.edit_request_places(p_ids uuid[])
returns table (id uuid, fair_tag timestamptz)
language sql stable
-- A few rows as a rule (one upload completes a request or a few): an estimate that lets the updates
-- that join it find their rows through the primary key rather than scan the table.
rows 10
set search_path = ''
as $$
  -- For the rows p_ids, about to become queued in this statement: now() + fair_share_quantum x
  -- (their owner's requests already queued or processing + the ones placed before them here, in
  -- creation order). One bounded count per owner, however many rows (1000: as an exempt insert).
  with owners as (
    select o.user_id,
           (select count(*) from (select 1 from public.edit_requests q
                                   where q.user_id = o.user_id and q.status in ('queued', 'processing')
                                   limit 1000) c) as ahead
      from (select distinct w.user_id from public.edit_requests w
             where w.id = any(p_ids) and w.user_id is not null) o
  )
  select w.id,
         now() + s.fair_share_quantum * case
           when w.user_id is null then 0
           else o.ahead + row_number() over (partition by w.user_id order by w.created_at, w.id) - 1
         end
    from public.edit_requests w
    cross join public.edit_queue_settings s
    left join owners o on o.user_id = w.user_id
   where w.id = any(p_ids)
$$;

revoke all on function public.edit_request_places(uuid[]) from public, anon, authenticated;
grant execute on function public.edit_request_places(uuid[]) to service_role;

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
  v_claimable integer;
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
  -- count only places their rows in the fair order). In flight counts for the limit; queued or
  -- processing (ahead in line, or running) for the fair order.
  select count(*), count(*) filter (where s.status <> 'awaiting_image') into v_in_flight, v_claimable from (
    select r.status from public.edit_requests r
     where r.user_id = p_owner and r.status in ('awaiting_image', 'queued', 'processing')
     limit coalesce(v_max_in_flight + 1, 1000)
  ) s;
  -- limited, in_flight, requests, cost, max_in_flight, max_requests, max_cost, quantum (s), claimable
  return concat_ws(',', v_limited::int, v_in_flight, v_base_requests, v_base_cost,
                   coalesce(v_max_in_flight, -1), coalesce(v_max_requests, -1),
                   coalesce(v_max_cost, -1), v_quantum, v_claimable);
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
  v_claimable integer;
  v_requests double precision;
  v_cost double precision;
  v_row_cost double precision;
begin
  -- Readiness under the paths' slot locks: a row whose inputs are all visible is queued, any
  -- other row waits for its upload (edit_requests_on_objects_stored queues it). Decided here, not later, so that RETURNING (PostgREST's return=representation) shows it.
  -- The caller cannot pick (authenticated users cannot even name the column).
  -- (Each presence check is one index probe on (bucket_id, name): a correlated join on name can
  -- be planned as a scan of the whole bucket when statistics are stale.)
  if new.status in ('queued', 'awaiting_image') then
    -- The slot lock first (edit_request_lock_slot, inlined: a SQL function call per row costs
    -- more than the lock), then the look: an upload or a Storage delete (edit_requests_keep_live_inputs)
    -- of these paths either committed before (this look sees it: each statement of a volatile
    -- function takes a new snapshot) or waits for this transaction and then sees this row.
    -- A user's paths lie in their own folder, one slot, taken once and then found held.
    -- (`is null`: the lock returns void; an IF is a simple expression, a PERFORM a query.)
    if cardinality(new.input_paths) = 1 then
      if pg_advisory_xact_lock(7051, hashtext(new.input_bucket || '/' || split_part(new.input_paths[1], '/', 1)) & 63) is null then
        null;
      end if;
      perform 1 from storage.objects o where o.bucket_id = new.input_bucket and o.name = new.input_paths[1];
      new.status := case when found then 'queued' else 'awaiting_image' end;
    else
      perform public.edit_request_lock_slots(array(
        select distinct public.edit_request_lock_slot(new.input_bucket, p.path)
          from unnest(new.input_paths) as p(path) where p.path is not null order by 1));
      new.status := case
        when exists (
          select 1 from unnest(new.input_paths) as p(path)
           where p.path <> all (array(select o.name from storage.objects o
                                           where o.bucket_id = new.input_bucket and o.name = any(new.input_paths)))
        ) then 'awaiting_image'
        else 'queued'
      end;
    end if;
  end if;

  if new.user_id is null then
    new.fair_tag := new.created_at;
    return new;
  end if;

  -- limited, in_flight, requests, cost, max_in_flight, max_requests, max_cost, quantum (s),
  -- claimable: written by edit_request_admission_start for the owner's first row in this transaction.
  v_key := 'edit_requests.owner_' || replace(new.user_id::text, '-', '');
  v_state := string_to_array(coalesce(nullif(current_setting(v_key, true), ''),
                                      public.edit_request_admission_start(new.user_id)), ',');
  v_in_flight := v_state[2]::integer;
  v_claimable := v_state[9]::integer;
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

  -- The place in line of a row that is claimable now: one quantum per request of its owner ahead
  -- of it (queued or processing, this statement's earlier rows included). A row awaiting its
  -- images gets its place when they arrive (edit_request_places); until then the tag is only its
  -- creation time, which no claim reads (the claim index holds queued rows only).
  if new.status = 'queued' then
    new.fair_tag := new.created_at + make_interval(secs => v_state[8]::double precision * v_claimable);
    v_claimable := v_claimable + 1;
  else
    new.fair_tag := new.created_at;
  end if;
  perform set_config(v_key, concat_ws(',', v_state[1], v_in_flight + 1, v_requests, v_cost,
                                      v_state[5], v_state[6], v_state[7], v_state[8], v_claimable), true);
  return new;
end
$$;

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
  -- The rows whose last input this statement stored become queued, each with its place in line
  -- decided now (edit_request_places, 25_fair_sharing_and_limits.sql), not at its insert.
  update public.edit_requests r
     set status = 'queued', fair_tag = p.fair_tag
    from public.edit_request_places(array(
           select w.id from new_objects o
             join public.edit_requests w
               on w.status = 'awaiting_image' and w.input_bucket = o.bucket_id and w.input_paths @> array[o.name]
            where not exists (
                    select 1 from unnest(w.input_paths) as q(path)
                     where q.path <> all (array(select s.name from storage.objects s
                                                 where s.bucket_id = w.input_bucket and s.name = any(w.input_paths)))))) p
   where r.id = p.id and r.status = 'awaiting_image';
  return null;
end
$$;

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

comment on column public.edit_requests.fair_tag is
  'Place in the claim order after priority: the time the request became queued (at insert, or when '
  'its last image arrived) + fair_share_quantum x the requests its owner already had queued or '
  'processing then. Kept by retries; while awaiting_image it is only created_at.';
