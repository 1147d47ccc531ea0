-- What the owner reads of a failed webhook attempt: the kind and the HTTP status, never the detail
-- (issue 22 item 9). last_error held `kind: detail`, and the detail named the private addresses an
-- allowlisted name resolves to ("hooks.example.com resolves to 10.0.3.7") and told a closed port
-- ("[Errno 111] Connection refused") from a silent one (timeout) from an open one: a map of the
-- operator's network, readable by any signed-in user through PostgREST. Now last_error is the kind
-- (http_status, timeout, connect_failed, dns_failed, private_address, ...); the processor logs the
-- detail for operators. Existing rows keep their kind only.

create or replace function public.claim_edit_webhook_deliveries(
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

update public.edit_webhook_deliveries
   set last_error = coalesce(substring(last_error from '^([a-z_]{1,40})(?::|$)'), 'error')
 where last_error is not null and last_error is distinct from coalesce(substring(last_error from '^([a-z_]{1,40})(?::|$)'), 'error');
