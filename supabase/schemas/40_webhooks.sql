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
--    dead after edit_webhook_max_attempts()) / replay (operators only), FOR UPDATE SKIP LOCKED and
--    a lease, so a delivery whose processor died is sent again (at least once, same webhook-id).
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
  constraint edit_webhook_settings_ports_valid check (
    cardinality(allowed_ports) between 1 and 64
    and array_position(allowed_ports, null) is null
    and 1 <= all (allowed_ports) and 65535 >= all (allowed_ports))
);
comment on table public.edit_webhook_settings is
  'Operator settings of completion webhooks (one row): allow_http (accept http:// URLs, e.g. for '
  'tests), allow_private_addresses (accept private, loopback and link-local addresses), '
  'allowed_ports (the ports a URL may name; default 443 and 80).';
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
  if not public.edit_webhook_url_port(p_url) = any (coalesce(v_settings.allowed_ports, '{443,80}')) then
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
create index edit_webhook_deliveries_due_idx
  on public.edit_webhook_deliveries (next_attempt_at) where status = 'pending';
create index edit_webhook_deliveries_leases_idx
  on public.edit_webhook_deliveries (claimed_until) where status = 'delivering';
create index edit_webhook_deliveries_request_idx on public.edit_webhook_deliveries (request_id);
create index edit_webhook_deliveries_endpoint_idx on public.edit_webhook_deliveries (endpoint_id);
create index edit_webhook_deliveries_user_idx
  on public.edit_webhook_deliveries (user_id, created_at desc);

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
language sql
volatile
security definer
set search_path = ''
as $$
  -- A lease that lapsed on the last attempt: dead, never an attempt past the limit.
  update public.edit_webhook_deliveries d
     set status = 'dead', claimed_by = null, claimed_until = null, updated_at = now(),
         last_error = 'lease_expired'  -- the processor stopped during the last attempt
   where d.status = 'delivering' and d.claimed_until < now()
     and d.attempts >= public.edit_webhook_max_attempts();

  -- Due deliveries and lapsed leases (a processor died mid-delivery), each taken by one caller.
  with due as (
    select d.id from public.edit_webhook_deliveries d
     where (d.status = 'pending' and d.next_attempt_at <= now())
        or (d.status = 'delivering' and d.claimed_until < now())
     order by d.next_attempt_at, d.id
     limit greatest(p_limit, 0)
     for update skip locked
  ), claimed as (
    update public.edit_webhook_deliveries d
       set status = 'delivering', claimed_by = p_worker_id,
           claimed_until = now() + make_interval(secs => greatest(p_lease_seconds, 1)),
           attempts = d.attempts + 1, last_attempt_at = now(), updated_at = now()
      from due
     where d.id = due.id
    returning d.id, d.request_id, d.endpoint_id, d.payload, d.attempts
  )
  -- The URL is checked again now: the allowlist or the settings may have changed since it was registered.
  select c.id, c.request_id, c.endpoint_id, e.url, e.secret, c.payload, c.attempts,
         public.edit_webhook_url_refusal(e.url)
    from claimed c join public.edit_webhook_endpoints e on e.id = c.endpoint_id;
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
    returning 1
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
  update public.edit_webhook_deliveries d
     set status = case when p_permanent or d.attempts >= public.edit_webhook_max_attempts()
                       then 'dead' else 'pending' end,
         next_attempt_at = case when p_permanent or d.attempts >= public.edit_webhook_max_attempts()
                                then d.next_attempt_at else now() + public.edit_webhook_backoff(d.attempts) end,
         last_status_code = p_status_code,
         last_error = coalesce(substring(p_error from '^([a-z_]{1,40})(?::|$)'), 'error'),
         claimed_by = null, claimed_until = null, updated_at = now()
   where d.id = p_id and d.status = 'delivering' and d.claimed_by = p_worker_id
  returning d.status
$$;

create function public.replay_edit_webhook_delivery(p_id uuid)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Operators only (the role, never claims). The webhook-id stays: a receiver that already has it
  -- may drop it, as it would a retry.
  if not public.edit_request_caller_is_operator() then
    raise exception 'only operators may replay webhook deliveries' using errcode = 'insufficient_privilege';
  end if;
  update public.edit_webhook_deliveries d
     set status = 'pending', attempts = 0, next_attempt_at = now(), claimed_by = null,
         claimed_until = null, delivered_at = null, updated_at = now()
   where d.id = p_id and d.status in ('dead', 'delivered');
  return found;
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
    as retried_rate_last_hour
from public.edit_webhook_deliveries d;
comment on view public.edit_webhook_delivery_health is
  'Completion webhooks at a glance (service_role): counts by status, the oldest undelivered, and '
  'over the last hour the share of finished deliveries that died and of delivered ones that needed a retry.';

-- Access ------------------------------------------------------------------------------------------

alter table public.edit_webhook_settings enable row level security;
alter table public.edit_webhook_allowed_hosts enable row level security;
alter table public.edit_webhook_endpoints enable row level security;
alter table public.edit_webhook_deliveries enable row level security;
revoke all on public.edit_webhook_settings, public.edit_webhook_allowed_hosts, public.edit_webhook_endpoints,
              public.edit_webhook_deliveries, public.edit_webhook_delivery_health
  from public, anon, authenticated;
grant all on public.edit_webhook_settings, public.edit_webhook_allowed_hosts, public.edit_webhook_endpoints,
             public.edit_webhook_deliveries to service_role;
grant select on public.edit_webhook_delivery_health to service_role;

create policy "operators manage webhook settings" on public.edit_webhook_settings
  for all to service_role using (true);
create policy "operators manage webhook hosts" on public.edit_webhook_allowed_hosts
  for all to service_role using (true);
create policy "operators manage webhook endpoints" on public.edit_webhook_endpoints
  for all to service_role using (true);
create policy "operators read webhook deliveries" on public.edit_webhook_deliveries
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

revoke all on function
  public.edit_webhook_max_attempts(),
  public.edit_webhook_max_endpoints(),
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
