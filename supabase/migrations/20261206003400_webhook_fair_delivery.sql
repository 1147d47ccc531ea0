-- One user's silent webhook endpoint stalled everyone's webhooks (issue 22 item 6). Deliveries
-- were claimed oldest first into 4 slots per process, with no share per endpoint or per user:
-- with 40 of a user's deliveries to a silent endpoint ahead, another user's took 15 s instead of
-- 0.2 s (timeout scaled to 1 s); at production settings the backlog grew by hours per hour. Now:
--  * edit_webhook_settings.max_in_flight_per_endpoint (2) and max_in_flight_per_user (3): at
--    most that many deliveries in flight at once, across all processes (claims take a
--    transaction-level advisory lock so the counts hold);
--  * round robin across users: a user's n-th delivery is claimed after everyone's (n-1)-th,
--    counting what each has in flight, their endpoints taking turns;
--  * a circuit breaker per endpoint (edit_webhook_circuits): edit_webhook_circuit_failures() (5)
--    failed attempts in a row open it for edit_webhook_backoff(failures); while open, nothing of
--    the endpoint is claimed (its deliveries wait, their attempts unspent); then one probe at a
--    time; a success, or an operator's replay, closes it. Owners read their endpoints' circuits;
--    the dashboard counts the open ones;
--  * the claim walks the endpoints with pending deliveries (an index on (endpoint_id,
--    next_attempt_at, id), a skip scan) instead of all due rows, so one endpoint's backlog costs
--    it one probe, however long.

alter table public.edit_webhook_settings
  add column max_in_flight_per_endpoint integer not null default 2,
  add column max_in_flight_per_user integer not null default 3,
  add constraint edit_webhook_settings_in_flight_valid check (
    max_in_flight_per_endpoint between 1 and 64 and max_in_flight_per_user between 1 and 256);
comment on table public.edit_webhook_settings is
  'Operator settings of completion webhooks (one row): allow_http (accept http:// URLs, e.g. for '
  'tests), allow_private_addresses (accept private, loopback and link-local addresses), '
  'allowed_ports (the ports a URL may name; default 443 and 80), max_in_flight_per_endpoint and '
  'max_in_flight_per_user (deliveries in flight at once, across all processes).';

create or replace function public.edit_webhook_circuit_failures()
returns integer language sql immutable parallel safe set search_path = ''
as $$ select 5 $$;

drop index public.edit_webhook_deliveries_due_idx;
-- Pending deliveries by endpoint: the claim walks the endpoints that have any (a skip scan), then
-- takes each one's oldest due, so an endpoint's backlog costs a claim one probe, however long.
create index edit_webhook_deliveries_pending_idx
  on public.edit_webhook_deliveries (endpoint_id, next_attempt_at, id) where status = 'pending';

-- Circuit breakers: an endpoint whose attempts keep failing is backed off as a whole. A row per
-- endpoint that failed since its last success, written only by the processor's functions (never
-- by a user's transaction: the claim never waits on a client).
create table public.edit_webhook_circuits (
  endpoint_id uuid primary key references public.edit_webhook_endpoints (id) on delete cascade,
  consecutive_failures integer not null default 0 check (consecutive_failures >= 0),
  open_until timestamptz,
  updated_at timestamptz not null default now()
);
comment on table public.edit_webhook_circuits is
  'Endpoints whose last attempts failed (no row: the last one succeeded). consecutive_failures >= '
  'edit_webhook_circuit_failures(): open (nothing claimed) until open_until, then one probe at a time.';
alter table public.edit_webhook_circuits enable row level security;
revoke all on public.edit_webhook_circuits from public, anon, authenticated;
grant all on public.edit_webhook_circuits to service_role;
create policy "operators manage webhook circuits" on public.edit_webhook_circuits
  for all to service_role using (true);
-- ... and whether their endpoints are backed off.
grant select (endpoint_id, consecutive_failures, open_until) on public.edit_webhook_circuits to authenticated;
create policy "users read their webhook circuits" on public.edit_webhook_circuits
  for select to authenticated
  using (exists (select 1 from public.edit_webhook_endpoints e
                  where e.id = endpoint_id and e.user_id = (select auth.uid())));

create or replace function public.claim_edit_webhook_deliveries(
  p_worker_id text,
  p_limit integer default 10,
  p_lease_seconds integer default 60
)
returns table (
  id uuid, request_id uuid, endpoint_id uuid, url text, secret text, payload jsonb,
  attempts integer, refusal text
)
language plpgsql
volatile
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_settings public.edit_webhook_settings;
  v_ids uuid[];
begin
  if coalesce(p_limit, 0) < 1 then
    return;
  end if;
  -- One claim at a time (each takes milliseconds): the caps below count what is in flight, and
  -- two claims counting at once could both take an endpoint's last place.
  perform pg_advisory_xact_lock(7053, 0);
  select * into v_settings from public.edit_webhook_settings s where s.id;

  -- A lease that lapsed on the last attempt: dead, never an attempt past the limit.
  update public.edit_webhook_deliveries d
     set status = 'dead', claimed_by = null, claimed_until = null, updated_at = now(),
         last_error = 'lease_expired'  -- the processor stopped during the last attempt
   where d.status = 'delivering' and d.claimed_until < now()
     and d.attempts >= public.edit_webhook_max_attempts();
  -- Any other lapsed lease (a processor died mid-delivery): pending again, due as it was, taken
  -- below like any other; its old holder no longer holds it (complete and fail are fenced).
  update public.edit_webhook_deliveries d
     set status = 'pending', claimed_by = null, claimed_until = null, updated_at = now()
   where d.status = 'delivering' and d.claimed_until < now();

  v_ids := array(
    with recursive endpoints (endpoint_id) as (
      -- Every endpoint with pending deliveries, one index probe each (a skip scan).
      (select d.endpoint_id from public.edit_webhook_deliveries d
        where d.status = 'pending' order by d.endpoint_id limit 1)
      union all
      select (select d.endpoint_id from public.edit_webhook_deliveries d
               where d.status = 'pending' and d.endpoint_id > e.endpoint_id
               order by d.endpoint_id limit 1)
        from endpoints e where e.endpoint_id is not null
    ), in_flight as (
      select d.endpoint_id, d.user_id from public.edit_webhook_deliveries d where d.status = 'delivering'
    ), places as (
      -- What each endpoint may take now: nothing while its circuit is open, one probe once it
      -- half-opens, else up to the cap; less what it has in flight.
      select e.endpoint_id,
             case when c.open_until > now() then 0
                  when c.consecutive_failures >= public.edit_webhook_circuit_failures() then 1
                  else coalesce(v_settings.max_in_flight_per_endpoint, 2) end
             - (select count(*) from in_flight f where f.endpoint_id = e.endpoint_id) as free
        from endpoints e
        left join public.edit_webhook_circuits c on c.endpoint_id = e.endpoint_id
       where e.endpoint_id is not null
    ), candidates as (
      select x.id, x.user_id, x.next_attempt_at,
             row_number() over (partition by x.endpoint_id order by x.next_attempt_at, x.id) as endpoint_turn
        from places p
        cross join lateral (
          select d.id, d.user_id, d.endpoint_id, d.next_attempt_at
            from public.edit_webhook_deliveries d
           where d.status = 'pending' and d.endpoint_id = p.endpoint_id and d.next_attempt_at <= now()
           order by d.next_attempt_at, d.id
           limit least(p.free, p_limit)
        ) x
       where p.free > 0
    ), turns as (
      -- Round robin across users: a user's n-th delivery comes after everyone's (n-1)-th, counting
      -- what they have in flight (their endpoints taking turns), oldest first within a turn.
      select c.id, c.next_attempt_at,
             (select count(*) from in_flight f where f.user_id is not distinct from c.user_id)
             + row_number() over (partition by c.user_id order by c.endpoint_turn, c.next_attempt_at, c.id) as turn
        from candidates c
    )
    select t.id from turns t
     where t.turn <= coalesce(v_settings.max_in_flight_per_user, 3)
     order by t.turn, t.next_attempt_at, t.id
     limit p_limit
  );

  return query
  with claimed as (
    update public.edit_webhook_deliveries d
       set status = 'delivering', claimed_by = p_worker_id,
           claimed_until = now() + make_interval(secs => greatest(p_lease_seconds, 1)),
           attempts = d.attempts + 1, last_attempt_at = now(), updated_at = now()
     where d.id = any (v_ids) and d.status = 'pending'
    returning d.id, d.request_id, d.endpoint_id, d.payload, d.attempts
  )
  -- The URL is checked again now: the allowlist or the settings may have changed since it was registered.
  select c.id, c.request_id, c.endpoint_id, e.url, e.secret, c.payload, c.attempts,
         public.edit_webhook_url_refusal(e.url)
    from claimed c join public.edit_webhook_endpoints e on e.id = c.endpoint_id
   order by array_position(v_ids, c.id);  -- in the order chosen
end
$$;

create or replace function public.complete_edit_webhook_delivery(
  p_id uuid, p_worker_id text, p_status_code integer
)
returns boolean
language sql
volatile
security definer
set search_path = ''
as $$
  with done as (
    update public.edit_webhook_deliveries d
       set status = 'delivered', delivered_at = now(), last_status_code = p_status_code,
           last_error = null, claimed_by = null, claimed_until = null, updated_at = now()
     where d.id = p_id and d.status = 'delivering' and d.claimed_by = p_worker_id
    returning d.endpoint_id
  ), closed as (
    -- A success closes the endpoint's circuit.
    delete from public.edit_webhook_circuits c using done where c.endpoint_id = done.endpoint_id
  )
  select exists (select 1 from done)
$$;

create or replace function public.fail_edit_webhook_delivery(
  p_id uuid, p_worker_id text, p_status_code integer, p_error text, p_permanent boolean default false
)
returns text
language sql
volatile
security definer
set search_path = ''
as $$
  -- Back to pending after the back-off, or dead when the attempts are used up (or retrying cannot
  -- help: a refused URL). Null when this caller no longer holds the delivery.
  -- last_error, which the owner reads, is the failure's kind only (p_error is `kind: detail`): the
  -- detail can name the addresses an allowlisted name resolves to and whether a port is closed or
  -- silent, so it goes to the processor's log, never here.
  with failed as (
    update public.edit_webhook_deliveries d
       set status = case when p_permanent or d.attempts >= public.edit_webhook_max_attempts()
                         then 'dead' else 'pending' end,
           next_attempt_at = case when p_permanent or d.attempts >= public.edit_webhook_max_attempts()
                                  then d.next_attempt_at else now() + public.edit_webhook_backoff(d.attempts) end,
           last_status_code = p_status_code,
           last_error = coalesce(substring(p_error from '^([a-z_]{1,40})(?::|$)'), 'error'),
           claimed_by = null, claimed_until = null, updated_at = now()
     where d.id = p_id and d.status = 'delivering' and d.claimed_by = p_worker_id
    returning d.status, d.endpoint_id
  ), counted as (
    -- A failed attempt (not a refused URL, which costs no one a slot) counts against the endpoint:
    -- at edit_webhook_circuit_failures() in a row its circuit opens for as long as a delivery
    -- would wait after as many failures, and each failed probe reopens it for longer.
    insert into public.edit_webhook_circuits as c (endpoint_id, consecutive_failures, open_until)
    select f.endpoint_id, 1,
           case when 1 >= public.edit_webhook_circuit_failures() then now() + public.edit_webhook_backoff(1) end
      from failed f
     where not coalesce(p_permanent, false)
    on conflict (endpoint_id) do update
       set consecutive_failures = c.consecutive_failures + 1,
           open_until = case when c.consecutive_failures + 1 >= public.edit_webhook_circuit_failures()
                             then now() + public.edit_webhook_backoff(c.consecutive_failures + 1) end,
           updated_at = now()
  )
  select f.status from failed f
$$;

create or replace function public.replay_edit_webhook_delivery(p_id uuid)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_endpoint uuid;
begin
  -- Operators only (the role, never claims). The webhook-id stays: a receiver that already has it
  -- may drop it, as it would a retry. An operator replays when the receiver is back: the
  -- endpoint's circuit closes, so the replay goes out now rather than after its back-off.
  if not public.edit_request_caller_is_operator() then
    raise exception 'only operators may replay webhook deliveries' using errcode = 'insufficient_privilege';
  end if;
  update public.edit_webhook_deliveries d
     set status = 'pending', attempts = 0, next_attempt_at = now(), claimed_by = null,
         claimed_until = null, delivered_at = null, updated_at = now()
   where d.id = p_id and d.status in ('dead', 'delivered')
  returning d.endpoint_id into v_endpoint;
  if not found then
    return false;
  end if;
  delete from public.edit_webhook_circuits c where c.endpoint_id = v_endpoint;
  return true;
end
$$;

create or replace view public.edit_webhook_delivery_health as
select
  count(*) filter (where d.status = 'pending') as pending,
  count(*) filter (where d.status = 'delivering') as delivering,
  count(*) filter (where d.status = 'delivered') as delivered,
  count(*) filter (where d.status = 'dead') as dead,
  coalesce(extract(epoch from now() - min(d.created_at) filter (where d.status in ('pending', 'delivering'))), 0)::double precision
    as oldest_pending_age_s,
  count(*) filter (where d.status = 'delivered' and d.updated_at > now() - interval '1 hour') as delivered_last_hour,
  count(*) filter (where d.status = 'dead' and d.updated_at > now() - interval '1 hour') as dead_last_hour,
  (count(*) filter (where d.status = 'dead' and d.updated_at > now() - interval '1 hour'))::double precision
    / nullif(count(*) filter (where d.status in ('delivered', 'dead') and d.updated_at > now() - interval '1 hour'), 0)
    as failure_rate_last_hour,
  (count(*) filter (where d.status = 'delivered' and d.attempts > 1 and d.updated_at > now() - interval '1 hour'))::double precision
    / nullif(count(*) filter (where d.status = 'delivered' and d.updated_at > now() - interval '1 hour'), 0)
    as retried_rate_last_hour,
  (select count(*) from public.edit_webhook_circuits c where c.open_until > now()) as endpoints_backed_off
from public.edit_webhook_deliveries d;
comment on view public.edit_webhook_delivery_health is
  'Completion webhooks at a glance (service_role): counts by status, the oldest undelivered, '
  'over the last hour the share of finished deliveries that died and of delivered ones that needed a '
  'retry, and the endpoints whose circuit is open now.';

revoke all on function public.edit_webhook_circuit_failures() from public, anon, authenticated;
grant execute on function public.edit_webhook_circuit_failures() to service_role;
