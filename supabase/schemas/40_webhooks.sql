-- Completion webhooks: a request may name one of its owner's webhook endpoints; when it reaches
-- succeeded, failed or canceled, a delivery row is written in the same transaction (an outbox), and
-- the processor's delivery loop POSTs it, signed per Standard Webhooks, with retries, back-off,
-- leases and a dead letter. pg_net is not used: it has no retries and no answer.
--
--  * public.edit_webhook_endpoints: URL, events, owner; the secret (`whsec_<base64>`) is always made
--    here. Users register, read, change and delete only their own; operators any.
--  * A URL must be https (http only where edit_webhook_settings.allow_http), its host on the
--    operator's allowlist (public.edit_webhook_allowed_hosts), its port on the operator's list
--    (edit_webhook_settings.allowed_ports: 443 and 80) and, where the host is an address, not a
--    private, loopback, link-local or metadata one (unless allow_private_addresses). Checked at
--    insert and update here, and again at every delivery, where the processor also resolves the
--    name, refuses private addresses and connects to the address it checked.
--  * public.edit_webhook_deliveries: the outbox. claim / complete / fail (back-off with jitter,
--    dead after edit_webhook_max_attempts()) / replay (operators only), under a lease, so a
--    delivery whose processor died is sent again (at least once, same webhook-id).
--  * Shared slots, fairly: one user's silent endpoint must not hold up everyone's webhooks. A claim
--    takes at most max_in_flight_per_endpoint deliveries of one endpoint and max_in_flight_per_user
--    of one user in flight (edit_webhook_settings), users with fewer in flight first (round robin,
--    as the requests' fair claim), and nothing of an endpoint whose circuit is open: after
--    edit_webhook_circuit_failures() failed attempts in a row it is backed off
--    (public.edit_webhook_circuits) as a delivery would be after as many, then half-opens to one
--    probe; a success closes it. Its deliveries wait in the outbox, unclaimed, their attempts unspent.
--  * public.edit_webhook_delivery_health: the dashboard's figures (service_role only).
--
-- The limits mirror processor/domain/rules.py (WEBHOOK_*); tests/test_webhook_outbox.py compares them.
-- Operator-facing reference: docs/webhooks.md.

-- Operator settings and the allowlist -------------------------------------------------------------

create table public.edit_webhook_settings (
  id boolean primary key default true check (id),
  allow_http boolean not null default false,
  allow_private_addresses boolean not null default false,
  updated_at timestamptz not null default now(),
  -- Ports a URL may name (its scheme's when it names none): on any other port of an allowlisted
  -- host, an attempt probes whatever listens there, and a filtered one holds a delivery slot for
  -- the whole timeout. webhook_urls.WEBHOOK_DEFAULT_PORTS has the default.
  allowed_ports integer[] not null default '{443,80}',
  -- Deliveries in flight at once, whatever the number of processes: of one endpoint (a silent one
  -- holds no more than this many slots, each for the whole timeout) and of one user (whatever their
  -- number of endpoints). rules.WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT and _PER_USER have the defaults.
  max_in_flight_per_endpoint integer not null default 2,
  max_in_flight_per_user integer not null default 3,
  -- Local development only (`edit-processor dev`): any port, since a receiver on this machine
  -- listens wherever its framework put it. Off by default.
  allow_any_port boolean not null default false,
  constraint edit_webhook_settings_ports_valid check (
    cardinality(allowed_ports) between 1 and 64
    and array_position(allowed_ports, null) is null
    and 1 <= all (allowed_ports) and 65535 >= all (allowed_ports)),
  constraint edit_webhook_settings_in_flight_valid check (
    max_in_flight_per_endpoint between 1 and 64 and max_in_flight_per_user between 1 and 256)
);
comment on table public.edit_webhook_settings is
  'Operator settings of completion webhooks (one row): allow_http (accept http:// URLs, e.g. for '
  'tests), allow_private_addresses (accept private, loopback and link-local addresses), '
  'allowed_ports (the ports a URL may name; default 443 and 80), max_in_flight_per_endpoint and '
  'max_in_flight_per_user (deliveries in flight at once, across all processes).';
comment on column public.edit_webhook_settings.allow_any_port is
  'Accept a URL on any port, not only allowed_ports (local development: receivers on this machine).';
insert into public.edit_webhook_settings (id) values (true);

create table public.edit_webhook_allowed_hosts (
  host text primary key,
  note text,
  created_at timestamptz not null default now(),
  -- Lower case; `*.example.com` allows every name under example.com (not example.com itself).
  constraint edit_webhook_allowed_hosts_host_valid
    check (host ~ '^(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*$' or host ~ '^[0-9a-f:.]+$')
);
comment on table public.edit_webhook_allowed_hosts is
  'Hosts webhook endpoints may point at (operators only). `*.example.com` allows every name under it.';

-- Rules (mirrored by processor/domain/rules.py) ---------------------------------------------------

create function public.edit_webhook_max_attempts()
returns integer language sql immutable parallel safe set search_path = ''
as $$ select 12 $$;  -- rules.WEBHOOK_MAX_ATTEMPTS

create function public.edit_webhook_max_endpoints()
returns integer language sql immutable parallel safe set search_path = ''
as $$ select 10 $$;  -- rules.WEBHOOK_MAX_ENDPOINTS_PER_USER

create function public.edit_webhook_circuit_failures()
returns integer language sql immutable parallel safe set search_path = ''
as $$ select 5 $$;  -- rules.WEBHOOK_CIRCUIT_FAILURES

create function public.edit_webhook_backoff(p_attempts integer)
returns interval
language sql volatile
set search_path = ''
as $$
  -- rules.webhook_backoff_seconds: 15 s after the first attempt, doubling, at most 3 hours, times a
  -- jitter of ±20 % (rules.WEBHOOK_BACKOFF_JITTER) so a receiver coming back is not stampeded.
  select least(interval '3 hours', interval '15 seconds' * power(2, greatest(p_attempts - 1, 0)))
         * (0.8 + random() * 0.4)
$$;

create function public.edit_webhook_url_host(p_url text)
returns text
language sql immutable parallel safe
set search_path = ''
as $$
  -- The host of a URL of the only shape accepted: scheme://host[:port][/path?query#fragment], no
  -- user info, ASCII only (internationalised names in their xn-- form), a port from 1 to 65535.
  -- Null when malformed. rules.WEBHOOK_URL_PATTERN is the same regex.
  select case when m[2] is null or m[2]::integer between 1 and 65535 then lower(trim(both '[]' from m[1])) end
    from regexp_match(
      p_url, '^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::([0-9]{1,5}))?(?:[/?#][!-~]*)?$') as m
$$;

create function public.edit_webhook_url_port(p_url text)
returns integer
language sql immutable parallel safe
set search_path = ''
as $$
  -- The port a URL of the accepted shape goes to: the one it names, else its scheme's (443, 80).
  -- Null when malformed. webhook_urls.webhook_url_port says the same.
  select case when m[2] is not null then m[2]::integer when p_url ~* '^https://' then 443 else 80 end
    from regexp_match(
      p_url, '^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::([0-9]{1,5}))?(?:[/?#][!-~]*)?$') as m
$$;

create function public.edit_webhook_address_private(p_host text)
returns boolean
language plpgsql immutable parallel safe
set search_path = ''
as $$
declare
  v_address inet;
begin
  -- True for `localhost` and for addresses that are not public: private, shared (CGNAT), loopback,
  -- link-local (cloud metadata: 169.254.169.254, fd00:ec2::254), site-local (deprecated),
  -- unspecified, multicast, reserved, documentation, benchmarking, the IETF protocol block
  -- 2001::/23 (Teredo, ORCHID), SRv6 SIDs, the discard prefixes, and IPv4 inside IPv6 (compatible,
  -- mapped, NAT64, 6to4 and its relay), whose v4 part could be any of these: IANA's special-purpose
  -- registries (processor/domain/webhook_urls.py lists the same networks, with the sources).
  -- Names other than localhost are resolved, and checked again, by the processor at delivery.
  if p_host = 'localhost' or p_host like '%.localhost' then
    return true;
  end if;
  if p_host !~ '^[0-9.]+$' and p_host !~ ':' then
    return false;
  end if;
  begin
    v_address := p_host::inet;
  exception when others then
    return true;  -- looks like an address but is none Postgres reads: never trusted
  end;
  return v_address <<= any (array[
    '0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12',
    '192.0.0.0/24', '192.0.2.0/24', '192.88.99.0/24', '192.168.0.0/16', '198.18.0.0/15',
    '198.51.100.0/24', '203.0.113.0/24', '224.0.0.0/4', '240.0.0.0/4',
    '::/96', '::ffff:0:0/96', '64:ff9b::/96', '64:ff9b:1::/48', '100::/64', '100:0:0:1::/64',
    '2001::/23', '2001:db8::/32', '2002::/16', '3fff::/20', '5f00::/16', 'fc00::/7', 'fe80::/10',
    'fec0::/10', 'ff00::/8'
  ]::inet[]);
end
$$;

create function public.edit_webhook_host_allowed(p_host text)
returns boolean
language sql stable
security definer
set search_path = ''
as $$
  select exists (
    select 1 from public.edit_webhook_allowed_hosts a
     where a.host = p_host
        or (a.host like '*.%' and right(p_host, char_length(a.host) - 1) = substr(a.host, 2))
  )
$$;

create function public.edit_webhook_url_refusal(p_url text)
returns text
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_settings public.edit_webhook_settings;
  v_host text := public.edit_webhook_url_host(p_url);
begin
  -- Why a webhook URL is refused (the processor's webhook_urls.webhook_url_refusal says the same), or null.
  select * into v_settings from public.edit_webhook_settings where id;
  if p_url is null or char_length(p_url) > 2048 or v_host is null then
    return 'malformed: scheme://host[:port]/path, no user info, ASCII, at most 2048 characters';
  end if;
  if p_url !~* '^https://' and not coalesce(v_settings.allow_http, false) then
    return 'not_https: only https:// URLs are accepted';
  end if;
  if not public.edit_webhook_host_allowed(v_host) then
    return 'host_not_allowed: ' || v_host || ' is not on the operator''s allowlist';
  end if;
  if not coalesce(v_settings.allow_any_port, false)
     and not public.edit_webhook_url_port(p_url) = any (coalesce(v_settings.allowed_ports, '{443,80}')) then
    return 'port_not_allowed: ' || public.edit_webhook_url_port(p_url) || ' is not on the operator''s port list';
  end if;
  if public.edit_webhook_address_private(v_host) and not coalesce(v_settings.allow_private_addresses, false) then
    return 'private_address: ' || v_host || ' is a private, loopback or link-local address';
  end if;
  return null;
end
$$;

create function public.edit_webhook_new_secret()
returns text
language sql volatile
set search_path = ''
as $$
  -- Standard Webhooks' `whsec_` + base64 of 32 random bytes, from two gen_random_uuid() (core, no
  -- pgcrypto; Postgres draws them from its strong random source: 244 random bits).
  select 'whsec_' || encode(decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'), 'base64')
$$;

-- Endpoints ---------------------------------------------------------------------------------------

create table public.edit_webhook_endpoints (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  url text not null,
  secret text not null,
  events text[] not null default array['succeeded', 'failed', 'canceled'],
  description text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint edit_webhook_endpoints_url_length check (char_length(url) between 1 and 2048),
  constraint edit_webhook_endpoints_events_valid check (
    cardinality(events) between 1 and 3
    and events <@ array['succeeded', 'failed', 'canceled']
    and array_position(events, null) is null),
  constraint edit_webhook_endpoints_description_length check (char_length(description) <= 500)
);
comment on table public.edit_webhook_endpoints is
  'Where completion webhooks go (docs/webhooks.md). The secret is made at insert (whsec_...); the '
  'owner reads it to verify signatures and may rotate it with rotate_edit_webhook_secret.';
create index edit_webhook_endpoints_user_idx on public.edit_webhook_endpoints (user_id);

create function public.edit_webhook_endpoints_before_write()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_refusal text := public.edit_webhook_url_refusal(new.url);
begin
  if v_refusal is not null then
    raise exception 'webhook URL refused: %', v_refusal
      using errcode = 'check_violation', constraint = 'edit_webhook_endpoints_url_allowed';
  end if;
  if tg_op = 'INSERT' then
    -- Always made here, never chosen by the caller: a weak or shared secret signs nothing.
    new.secret := public.edit_webhook_new_secret();
    if not public.edit_request_caller_is_operator() then
      perform pg_advisory_xact_lock(hashtextextended('edit_webhook_endpoints/' || new.user_id::text, 7052));
      if (select count(*) from public.edit_webhook_endpoints e where e.user_id = new.user_id)
         >= public.edit_webhook_max_endpoints() then
        raise exception 'a user may register at most % webhook endpoints', public.edit_webhook_max_endpoints()
          using errcode = 'check_violation', constraint = 'edit_webhook_endpoints_per_user';
      end if;
    end if;
  end if;
  new.updated_at := now();
  return new;
end
$$;

create trigger edit_webhook_endpoints_before_write
  before insert or update of url on public.edit_webhook_endpoints
  for each row execute function public.edit_webhook_endpoints_before_write();

create function public.rotate_edit_webhook_secret(p_id uuid)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_secret text := public.edit_webhook_new_secret();
  v_uid uuid := auth.uid();
begin
  -- The owner (or an operator) gets a new secret; deliveries signed from now on use it.
  update public.edit_webhook_endpoints e
     set secret = v_secret, updated_at = now()
   where e.id = p_id
     and (public.edit_request_caller_is_operator() or (v_uid is not null and e.user_id = v_uid));
  return case when found then v_secret end;
end
$$;

-- Requests name an endpoint -----------------------------------------------------------------------

alter table public.edit_requests
  add constraint edit_requests_webhook_endpoint_id_fkey foreign key (webhook_endpoint_id)
  references public.edit_webhook_endpoints (id) on delete set null;
create index edit_requests_webhook_endpoint_idx
  on public.edit_requests (webhook_endpoint_id) where webhook_endpoint_id is not null;

create function public.edit_requests_check_webhook_endpoint()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Only the request's owner's endpoint; another user's and a missing one get the same answer,
  -- so the refusal says nothing about endpoints the caller cannot see.
  if new.webhook_endpoint_id is not null
     and (tg_op = 'INSERT' or new.webhook_endpoint_id is distinct from old.webhook_endpoint_id)
     and not exists (
    select 1 from public.edit_webhook_endpoints e
     where e.id = new.webhook_endpoint_id and e.user_id = new.user_id
  ) then
    raise exception 'webhook endpoint % is not one of this request''s owner''s endpoints', new.webhook_endpoint_id
      using errcode = 'check_violation', constraint = 'edit_requests_webhook_endpoint_owned';
  end if;
  return new;
end
$$;

-- Only for rows that name an endpoint (a plpgsql call is ~2.5 µs a row even when it returns at once).
create trigger edit_requests_check_webhook_endpoint
  before insert or update of webhook_endpoint_id on public.edit_requests
  for each row when (new.webhook_endpoint_id is not null)
  execute function public.edit_requests_check_webhook_endpoint();

-- Deliveries (the outbox) -------------------------------------------------------------------------

create table public.edit_webhook_deliveries (
  id uuid primary key default gen_random_uuid(),
  endpoint_id uuid not null references public.edit_webhook_endpoints (id) on delete cascade,
  request_id uuid not null references public.edit_requests (id) on delete cascade,
  user_id uuid,
  event text not null,
  payload jsonb not null,
  status text not null default 'pending',
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  claimed_by text,
  claimed_until timestamptz,
  last_attempt_at timestamptz,
  last_status_code integer,
  last_error text,
  delivered_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint edit_webhook_deliveries_status_known
    check (status in ('pending', 'delivering', 'delivered', 'dead')),
  constraint edit_webhook_deliveries_event_known check (event in ('succeeded', 'failed', 'canceled')),
  constraint edit_webhook_deliveries_attempts_range
    check (attempts between 0 and public.edit_webhook_max_attempts()),
  constraint edit_webhook_deliveries_delivering_is_claimed
    check (status <> 'delivering' or (claimed_by is not null and claimed_until is not null)),
  constraint edit_webhook_deliveries_delivered_has_time check (status <> 'delivered' or delivered_at is not null)
);
comment on table public.edit_webhook_deliveries is
  'Completion webhooks to send (an outbox written with the request''s final status). The id is the '
  'webhook-id header: the same on every attempt and replay, so receivers drop duplicates.';
-- Pending deliveries by endpoint: the claim walks the endpoints that have any (a skip scan), then
-- takes each one's oldest due, so an endpoint's backlog costs a claim one probe, however long.
create index edit_webhook_deliveries_pending_idx
  on public.edit_webhook_deliveries (endpoint_id, next_attempt_at, id) where status = 'pending';
create index edit_webhook_deliveries_leases_idx
  on public.edit_webhook_deliveries (claimed_until) where status = 'delivering';
create index edit_webhook_deliveries_request_idx on public.edit_webhook_deliveries (request_id);
create index edit_webhook_deliveries_endpoint_idx on public.edit_webhook_deliveries (endpoint_id);
create index edit_webhook_deliveries_user_idx
  on public.edit_webhook_deliveries (user_id, created_at desc);

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

create function public.edit_requests_enqueue_webhook()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- In the transaction that made the request final: the delivery exists if and only if the status
  -- does. The payload is what the owner may read of the row (never claimed_by, the raw error…).
  insert into public.edit_webhook_deliveries (endpoint_id, request_id, user_id, event, payload)
  select e.id, new.id, new.user_id, new.status,
         jsonb_build_object(
           'type', 'edit_request.' || new.status,
           'timestamp', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           'data', jsonb_build_object(
             'id', new.id,
             'status', new.status,
             'output_bucket', new.output_bucket,
             'output_path', new.output_path,
             'error_code', new.error_code,
             'error_message', new.error_message,
             'result', new.result,
             'created_at', new.created_at,
             'finished_at', new.finished_at))
    from public.edit_webhook_endpoints e
   where e.id = new.webhook_endpoint_id and new.status = any (e.events);
  return null;
end
$$;

create trigger edit_requests_enqueue_webhook
  after update of status on public.edit_requests
  for each row
  when (new.webhook_endpoint_id is not null
        and new.status in ('succeeded', 'failed', 'canceled')
        and old.status is distinct from new.status)
  execute function public.edit_requests_enqueue_webhook();

-- The delivery state machine (the processor calls these; service_role only) -----------------------

create function public.claim_edit_webhook_deliveries(
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

create function public.complete_edit_webhook_delivery(
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

create function public.fail_edit_webhook_delivery(
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

create function public.replay_edit_webhook_delivery(p_id uuid)
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

-- The dashboard -----------------------------------------------------------------------------------

create view public.edit_webhook_delivery_health as
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

-- Access ------------------------------------------------------------------------------------------

alter table public.edit_webhook_settings enable row level security;
alter table public.edit_webhook_allowed_hosts enable row level security;
alter table public.edit_webhook_endpoints enable row level security;
alter table public.edit_webhook_deliveries enable row level security;
alter table public.edit_webhook_circuits enable row level security;
revoke all on public.edit_webhook_settings, public.edit_webhook_allowed_hosts, public.edit_webhook_endpoints,
              public.edit_webhook_deliveries, public.edit_webhook_delivery_health, public.edit_webhook_circuits
  from public, anon, authenticated;
grant all on public.edit_webhook_settings, public.edit_webhook_allowed_hosts, public.edit_webhook_endpoints,
             public.edit_webhook_deliveries, public.edit_webhook_circuits to service_role;
grant select on public.edit_webhook_delivery_health to service_role;

create policy "operators manage webhook settings" on public.edit_webhook_settings
  for all to service_role using (true);
create policy "operators manage webhook hosts" on public.edit_webhook_allowed_hosts
  for all to service_role using (true);
create policy "operators manage webhook endpoints" on public.edit_webhook_endpoints
  for all to service_role using (true);
create policy "operators read webhook deliveries" on public.edit_webhook_deliveries
  for all to service_role using (true);
create policy "operators manage webhook circuits" on public.edit_webhook_circuits
  for all to service_role using (true);

-- Users: their own endpoints (the secret is theirs to read), and their deliveries' outcome.
grant select (id, user_id, url, secret, events, description, created_at, updated_at),
      insert (url, events, description),
      update (url, events, description),
      delete
  on public.edit_webhook_endpoints to authenticated;
create policy "users read their webhook endpoints" on public.edit_webhook_endpoints
  for select to authenticated using (user_id = (select auth.uid()));
create policy "users add their webhook endpoints" on public.edit_webhook_endpoints
  for insert to authenticated with check (user_id = (select auth.uid()));
create policy "users change their webhook endpoints" on public.edit_webhook_endpoints
  for update to authenticated
  using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));
create policy "users remove their webhook endpoints" on public.edit_webhook_endpoints
  for delete to authenticated using (user_id = (select auth.uid()));

grant select (id, endpoint_id, request_id, user_id, event, payload, status, attempts, next_attempt_at,
              last_attempt_at, last_status_code, last_error, delivered_at, created_at, updated_at)
  on public.edit_webhook_deliveries to authenticated;
create policy "users read their webhook deliveries" on public.edit_webhook_deliveries
  for select to authenticated using (user_id = (select auth.uid()));

-- ... and whether their endpoints are backed off.
grant select (endpoint_id, consecutive_failures, open_until) on public.edit_webhook_circuits to authenticated;
create policy "users read their webhook circuits" on public.edit_webhook_circuits
  for select to authenticated
  using (exists (select 1 from public.edit_webhook_endpoints e
                  where e.id = endpoint_id and e.user_id = (select auth.uid())));

revoke all on function
  public.edit_webhook_max_attempts(),
  public.edit_webhook_max_endpoints(),
  public.edit_webhook_circuit_failures(),
  public.edit_webhook_backoff(integer),
  public.edit_webhook_url_host(text),
  public.edit_webhook_url_port(text),
  public.edit_webhook_address_private(text),
  public.edit_webhook_host_allowed(text),
  public.edit_webhook_url_refusal(text),
  public.edit_webhook_new_secret(),
  public.edit_webhook_endpoints_before_write(),
  public.rotate_edit_webhook_secret(uuid),
  public.edit_requests_check_webhook_endpoint(),
  public.edit_requests_enqueue_webhook(),
  public.claim_edit_webhook_deliveries(text, integer, integer),
  public.complete_edit_webhook_delivery(uuid, text, integer),
  public.fail_edit_webhook_delivery(uuid, text, integer, text, boolean),
  public.replay_edit_webhook_delivery(uuid)
  from public, anon, authenticated;
grant execute on function
  public.edit_webhook_max_attempts(),
  public.edit_webhook_max_endpoints(),
  public.edit_webhook_circuit_failures(),
  public.edit_webhook_backoff(integer),
  public.edit_webhook_url_host(text),
  public.edit_webhook_url_port(text),
  public.edit_webhook_address_private(text),
  public.edit_webhook_host_allowed(text),
  public.edit_webhook_url_refusal(text),
  public.edit_webhook_new_secret(),
  public.edit_webhook_endpoints_before_write(),
  public.rotate_edit_webhook_secret(uuid),
  public.edit_requests_check_webhook_endpoint(),
  public.edit_requests_enqueue_webhook(),
  public.claim_edit_webhook_deliveries(text, integer, integer),
  public.complete_edit_webhook_delivery(uuid, text, integer),
  public.fail_edit_webhook_delivery(uuid, text, integer, text, boolean),
  public.replay_edit_webhook_delivery(uuid)
  to service_role;
-- Owners rotate their own secret; the pure rules are readable by apps.
grant execute on function
  public.rotate_edit_webhook_secret(uuid),
  public.edit_webhook_max_attempts(),
  public.edit_webhook_max_endpoints(),
  public.edit_webhook_url_host(text)
  to authenticated;
