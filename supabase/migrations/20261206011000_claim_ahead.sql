-- Claiming ahead (issue #21, decision 0140): a busy worker claims its next job while its current edit's
-- last steps run, leaving the front of the queue to idle workers. claim_edit_request now records which
-- workers are idle (their last claim found nothing); claim_edit_request_ahead skips one due row per idle
-- worker. The functions are as in supabase/schemas/20_state_machine.sql.

create table public.edit_idle_workers (
  worker_id text primary key,
  seen_at timestamptz not null default now()
);
comment on table public.edit_idle_workers is
  'Workers whose last claim found nothing, and when: claim_edit_request keeps it, '
  'claim_edit_request_ahead leaves them the front of the queue. The processor''s alone.';
alter table public.edit_idle_workers enable row level security;
revoke all on public.edit_idle_workers from public, anon, authenticated;
grant all on public.edit_idle_workers to service_role;

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

revoke all on function public.claim_edit_request_ahead(text, integer, real) from public, anon, authenticated;
grant execute on function public.claim_edit_request_ahead(text, integer, real) to service_role;
