-- Wake-ups and change notifications: how the processor and its waiting callers hear of a row.
--
-- Wake-up: a row becoming `queued` and due sends `pg_notify('edit_requests', id)` and, where pg_net
-- and Vault exist (Supabase), a POST to the processor shaped like a Supabase Database Webhook (or a
-- RunPod job), its URL and secret read from Vault (supabase/config.toml [db.vault]). Progress,
-- claims and results never re-fire it. It is only a hint: the processor also LISTENs and sweeps.
-- Updated rows are woken by the row trigger below; inserted rows once per statement by
-- edit_requests_after_insert (25_fair_sharing_and_limits.sql).
--
-- Change notifications: waiting callers (REST wait=true and event streams, MCP) follow a request by
-- NOTIFY on `edit_request_changes` instead of polling it, but only for rows somebody watches. A
-- transaction that has sent a NOTIFY takes a server-wide lock from its pre-commit to its end, so
-- commits with notifications take turns: with 8 workers the claim -> complete cycle ran at 1,400
-- jobs/s with a notification per change and 2,300 without (benchmarks/queue_vs_peers.py). Apps
-- following rows through Realtime are unaffected (it reads the WAL, not NOTIFY).

-- Wake-up -----------------------------------------------------------------------------------------

create function public.edit_requests_wake_processor()
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

create trigger edit_requests_wake_processor
  after update of status, next_attempt_at on public.edit_requests
  for each row execute function public.edit_requests_wake_processor();

-- Watches -----------------------------------------------------------------------------------------
-- Listeners say which rows they follow: (row, watcher, expiry), set by set_edit_request_watches. A
-- watcher renews its set while it holds it and empties it when done; a process that dies leaves
-- rows that expire (each call clears some). A change whose statement began before a watch was
-- registered, and that commits after the waiter's first read, is not notified: the waiter sees it
-- at its fallback re-read (CHANGES_FALLBACK_SECONDS), as it sees changes missed during a reconnect.

create table public.edit_request_watches (
  request_id uuid not null,
  watcher text not null check (length(watcher) between 1 and 200),
  expires_at timestamptz not null,
  primary key (request_id, watcher)
);

create index edit_request_watches_expiry_idx on public.edit_request_watches (expires_at);
create index edit_request_watches_watcher_idx on public.edit_request_watches (watcher);

comment on table public.edit_request_watches is
  'Rows a LISTEN session follows (REST waits and streams, MCP): only these get NOTIFY edit_request_changes.';

create function public.set_edit_request_watches(
  p_watcher text,
  p_request_ids uuid[],
  p_seconds integer
)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- The whole set each time: a watcher that lost track (a dropped connection, a cancelled call)
  -- is right again after its next call, and renewal is the same call.
  if p_watcher is null or p_watcher = '' then
    raise exception 'set_edit_request_watches: p_watcher is required' using errcode = '22023';
  end if;
  if p_seconds is null or p_seconds < 1 then
    raise exception 'set_edit_request_watches: p_seconds must be positive' using errcode = '22023';
  end if;
  delete from public.edit_request_watches w
   where w.watcher = p_watcher and w.request_id <> all (coalesce(p_request_ids, '{}'));
  insert into public.edit_request_watches (request_id, watcher, expires_at)
  select distinct r.id, p_watcher, now() + make_interval(secs => p_seconds)
    from unnest(p_request_ids) as r(id)
   where r.id is not null
  on conflict (request_id, watcher) do update set expires_at = excluded.expires_at;
  -- What dead watchers left: a bounded bite per call, so no call grows with the garbage.
  delete from public.edit_request_watches w
   where w.ctid = any (array(select e.ctid from public.edit_request_watches e
                              where e.expires_at < now() order by e.expires_at limit 100));
end
$$;

comment on function public.set_edit_request_watches(text, uuid[], integer) is
  'The rows the processor''s LISTEN session p_watcher follows now, for p_seconds (it renews them).';

-- Every change a client can see (status, progress, live preview, output, reason) of a watched row. NOTIFY is
-- transactional and folds duplicates within one transaction, so a heartbeat costs one small message
-- and a lease-only renewal none. Definer: it reads the watches, which whoever runs the update (a
-- definer function, or an operator) may not.
create function public.notify_edit_request_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if (new.status, new.progress, new.preview_step, new.output_path, new.error_code)
       is distinct from (old.status, old.progress, old.preview_step, old.output_path, old.error_code)
     and exists (select 1 from public.edit_request_watches w
                  where w.request_id = new.id and w.expires_at > now()) then
    perform pg_notify('edit_request_changes', new.id::text);
  end if;
  return null;
end
$$;

create trigger edit_requests_notify_change
  after update on public.edit_requests
  for each row execute function public.notify_edit_request_change();

-- Access ------------------------------------------------------------------------------------------

-- Internal bookkeeping of the processor: nobody else reads or writes it, not even the service role.
alter table public.edit_request_watches enable row level security;
revoke all on public.edit_request_watches from public, anon, authenticated, service_role;

revoke all on function
  public.edit_requests_wake_processor(),
  public.set_edit_request_watches(text, uuid[], integer),
  public.notify_edit_request_change()
  from public, anon, authenticated;
grant execute on function
  public.edit_requests_wake_processor(),
  public.set_edit_request_watches(text, uuid[], integer),
  public.notify_edit_request_change()
  to service_role;
